//! `mmrl zeroshot` end to end: the JSON output against transformers' logits
//! for the same tiny CLIP in every weights layout, and clean failures on bad
//! input. Fixtures: `tests/scripts/gen_clip_fixtures.py`.

mod common;

use std::path::PathBuf;

use common::*;

fn image_dir() -> String {
    clip_fixture("images").display().to_string()
}

fn valid_images() -> Vec<String> {
    expected_json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            clip_fixture(&format!("images/{}", i.as_str().unwrap()))
                .display()
                .to_string()
        })
        .collect()
}

fn classes_arg() -> String {
    let classes: Vec<String> = expected_json()["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    classes.join(",")
}

fn tokenizer() -> String {
    clip_fixture("tiny_hf/tokenizer.json").display().to_string()
}

/// Runs `mmrl zeroshot --json` with the fixture's classes on the valid
/// images, on the tests' backend (`common::DEVICE`) unless `extra` names another.
fn zeroshot_json(clip: &str, images: &[String], extra: &[&str]) -> std::process::Output {
    let clip = clip_fixture(clip).display().to_string();
    let classes = classes_arg();
    let mut args: Vec<&str> = vec!["zeroshot", "--clip", &clip, "--json", "--classes", &classes];
    if !extra.contains(&"--device") {
        args.extend(["--device", DEVICE]);
    }
    args.extend_from_slice(extra);
    args.push("--images");
    args.extend(images.iter().map(String::as_str));
    mmrl(&args)
}

/// Runs zeroshot --json on the valid images and compares with transformers'
/// logits in `key` (the images preprocessed as the weights' ecosystem does).
fn check_logits(clip: &str, key: &str, extra: &[&str]) {
    let images = valid_images();
    let out = zeroshot_json(clip, &images, extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let (expected, shape) = tensor("expected.safetensors", key);
    let n_classes = shape[1];
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), shape[0]);
    assert_eq!(json["classes"].as_array().unwrap().len(), n_classes);
    for (i, r) in results.iter().enumerate() {
        let image = r["image"].as_str().unwrap();
        assert_eq!(image, images[i]);
        let logits: Vec<f32> = r["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let probs: Vec<f32> = r["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let d = max_abs_diff(&logits, &expected[i * n_classes..(i + 1) * n_classes]);
        eprintln!("{clip} {image}: max logit diff {d:e}");
        assert_within(&format!("{clip} {image}: zeroshot logits"), d, 1e-3);
        let sum: f32 = probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probs sum to {sum}");
        let best = (0..n_classes)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        assert_eq!(r["pred"], json["classes"][best]);
    }
}

#[test]
fn hf_folder_logits_match_transformers() {
    check_logits("tiny_hf", "logits_per_image", &[]);
}

/// `--precision bf16` end to end: within bf16's rounding of transformers'
/// f32 logits where the backend has bf16; a clean refusal naming the way out
/// where it has not (wgpu: CI runs this on lavapipe too).
#[test]
fn hf_folder_bf16_logits_match_transformers_or_are_refused() {
    let out = zeroshot_json("tiny_hf", &valid_images(), &["--precision", "bf16"]);
    if DEVICE == "wgpu" {
        assert_clean_failure(
            &out,
            &["--precision bf16 is not supported", "--precision f32"],
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let logits: Vec<f32> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["logits"].as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (expected, _) = tensor("expected.safetensors", "logits_per_image");
    assert_close_rel(
        "zeroshot --precision bf16 logits",
        &logits,
        &expected,
        BF16_REL_TOL,
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_backend_logits_match_transformers() {
    check_logits("tiny_hf", "logits_per_image", &["--device", "ndarray"]);
}

#[test]
fn openai_safetensors_logits_match_transformers() {
    let tok = tokenizer();
    check_logits(
        "tiny_openai.safetensors",
        "logits_per_image_openai_preprocess",
        &["--tokenizer", &tok],
    );
}

#[test]
fn openai_pt_logits_match_transformers() {
    let tok = tokenizer();
    check_logits(
        "tiny_openai.pt",
        "logits_per_image_openai_preprocess",
        &["--tokenizer", &tok],
    );
}

#[test]
fn folders_are_read_in_sorted_order_and_table_is_printed() {
    let clip = clip_fixture("tiny_hf").display().to_string();
    // The folder holds corrupt files too: they must stop the run, naming the file.
    let out = mmrl(&[
        "zeroshot",
        "--clip",
        &clip,
        "--classes",
        "cat,dog",
        "--images",
        &image_dir(),
    ]);
    assert_clean_failure(&out, &["corrupt.jpg"]);
    // A folder of good images: sorted, as a table.
    let dir = tempdir("sorted");
    for name in ["small.png", "gray.png", "rgba.png"] {
        std::fs::copy(clip_fixture(&format!("images/{name}")), dir.join(name)).unwrap();
    }
    let out = mmrl(&[
        "zeroshot",
        "--clip",
        &clip,
        "--classes",
        "cat,dog",
        "--images",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pos = |n: &str| {
        stdout
            .find(n)
            .unwrap_or_else(|| panic!("{n} missing: {stdout}"))
    };
    assert!(pos("gray.png") < pos("rgba.png") && pos("rgba.png") < pos("small.png"));
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mmrl-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn zeroshot_with(clip: &str, images: &[&str], classes: &str) -> std::process::Output {
    let mut args = vec!["zeroshot", "--clip", clip, "--classes", classes, "--images"];
    args.extend_from_slice(images);
    mmrl(&args)
}

#[test]
fn missing_weights_file_is_named() {
    let img = valid_images()[0].clone();
    let out = zeroshot_with("/nonexistent/clip.safetensors", &[&img], "cat,dog");
    assert_clean_failure(&out, &["/nonexistent/clip.safetensors"]);
}

#[test]
fn truncated_weights_file_is_named() {
    let dir = tempdir("truncated");
    let bytes = std::fs::read(clip_fixture("tiny_openai.safetensors")).unwrap();
    let file = dir.join("half.safetensors");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let img = valid_images()[0].clone();
    let out = zeroshot_with(file.to_str().unwrap(), &[&img], "cat,dog");
    assert_clean_failure(&out, &["half.safetensors", "truncated"]);
    let pt = std::fs::read(clip_fixture("tiny_openai.pt")).unwrap();
    let file = dir.join("half.pt");
    std::fs::write(&file, &pt[..pt.len() / 2]).unwrap();
    let out = zeroshot_with(file.to_str().unwrap(), &[&img], "cat,dog");
    assert_clean_failure(&out, &["half.pt"]);
}

/// Rewrites the tiny OpenAI file with `edit` applied to its tensors.
fn rewritten(name: &str, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let bytes = std::fs::read(clip_fixture("tiny_openai.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let file = tempdir(name).join(format!("{name}.safetensors"));
    safetensors::serialize_to_file(views, None, &file).unwrap();
    file
}

#[test]
fn wrong_shaped_tensor_is_named_with_both_shapes() {
    let file = rewritten("wrongshape", |t| {
        let e = t
            .iter_mut()
            .find(|(k, _, _)| k == "visual.ln_post.weight")
            .unwrap();
        e.1 = vec![32];
        e.2.truncate(32 * 4);
    });
    let img = valid_images()[0].clone();
    let out = zeroshot_with(file.to_str().unwrap(), &[&img], "cat,dog");
    assert_clean_failure(&out, &["visual.ln_post.weight", "[32]", "[128]"]);
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let missing = rewritten("missing", |t| {
        t.retain(|(k, _, _)| k != "visual.ln_post.bias")
    });
    let img = valid_images()[0].clone();
    let out = zeroshot_with(missing.to_str().unwrap(), &[&img], "cat,dog");
    assert_clean_failure(&out, &["visual.ln_post.bias", "missing"]);
    let extra = rewritten("extra", |t| {
        t.push(("visual.extra_head.weight".into(), vec![2], vec![0; 8]))
    });
    let out = zeroshot_with(extra.to_str().unwrap(), &[&img], "cat,dog");
    assert_clean_failure(&out, &["visual.extra_head.weight", "unexpected"]);
}

#[test]
fn unknown_key_layout_is_explained() {
    let file = rewritten("layout", |t| {
        for e in t.iter_mut() {
            e.0 = format!(
                "backbone.{}",
                e.0.replace("visual.", "vis.")
                    .replace("transformer.", "blocks.")
            );
        }
    });
    let img = valid_images()[0].clone();
    let out = zeroshot_with(file.to_str().unwrap(), &[&img], "cat,dog");
    assert_clean_failure(&out, &["layout.safetensors", "unknown weights layout"]);
}

#[test]
fn bad_images_and_class_lists_are_refused() {
    let clip = clip_fixture("tiny_hf").display().to_string();
    let corrupt = clip_fixture("images/corrupt.jpg").display().to_string();
    assert_clean_failure(
        &zeroshot_with(&clip, &[&corrupt], "cat,dog"),
        &["corrupt.jpg"],
    );
    let text = clip_fixture("images/not_an_image.png")
        .display()
        .to_string();
    assert_clean_failure(
        &zeroshot_with(&clip, &[&text], "cat,dog"),
        &["not_an_image.png"],
    );
    assert_clean_failure(
        &zeroshot_with(&clip, &["/nope/missing.jpg"], "cat,dog"),
        &["/nope/missing.jpg"],
    );
    let img = valid_images()[0].clone();
    assert_clean_failure(&zeroshot_with(&clip, &[&img], ""), &["class list is empty"]);
    let empty = tempdir("classes").join("classes.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let out = mmrl(&[
        "zeroshot",
        "--clip",
        &clip,
        "--classes-file",
        empty.to_str().unwrap(),
        "--images",
        &img,
    ]);
    assert_clean_failure(&out, &["class list is empty"]);
    assert_clean_failure(
        &zeroshot_with(&clip, &[&img], "cat,cat"),
        &["`cat` appears twice"],
    );
}

#[test]
fn wrong_tokenizer_for_the_weights_is_refused() {
    // The bundled 49 408-token vocabulary does not fit the tiny model's 2 514 embeddings.
    let clip = clip_fixture("tiny_openai.safetensors")
        .display()
        .to_string();
    let img = valid_images()[0].clone();
    assert_clean_failure(
        &zeroshot_with(&clip, &[&img], "cat,dog"),
        &["--tokenizer", "2514"],
    );
}

#[test]
fn backends_missing_from_the_build_are_named() {
    let clip = clip_fixture("tiny_hf").display().to_string();
    let img = valid_images()[0].clone();
    for device in ["wgpu", "cuda"] {
        if (device == "wgpu" && cfg!(feature = "wgpu"))
            || (device == "cuda" && cfg!(feature = "cuda"))
        {
            continue;
        }
        let out = mmrl(&[
            "zeroshot",
            "--clip",
            &clip,
            "--classes",
            "cat",
            "--device",
            device,
            "--images",
            &img,
        ]);
        assert_clean_failure(&out, &[device, "--features"]);
    }
}
