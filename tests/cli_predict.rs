//! `mmrl predict --method mmrl` end to end on the reference-format Dassl
//! checkpoint: decoupled-inference logits against the PyTorch reference.
//! Fixtures: `tests/scripts/gen_mmrl_fixtures.py`.

mod common;

use common::*;

fn predict(extra: &[&str]) -> serde_json::Value {
    let clip = mmrl_fixture("tiny_clip.safetensors").display().to_string();
    let ckpt = mmrl_fixture("model.pth.tar-5").display().to_string();
    let tok = clip_fixture("tiny_hf/tokenizer.json").display().to_string();
    let imgs = clip_image_paths();
    let mut args = vec![
        "predict",
        "--method",
        "mmrl",
        "--clip",
        &clip,
        "--checkpoint",
        &ckpt,
        "--tokenizer",
        &tok,
        "--classes",
        "cat,dog,red_car,café",
        "--json",
    ];
    args.extend_from_slice(extra);
    args.push("--images");
    args.extend(imgs.iter().map(String::as_str));
    let out = mmrl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The trainable parameter count is reported.
    assert!(stderr.contains("8624 trainable parameters"), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn field(json: &serde_json::Value, row: usize, key: &str) -> Vec<f32> {
    json["results"][row][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// The reference's images were cropped as transformers does (offset floored);
/// an OpenAI-named CLIP file is preprocessed as OpenAI does (rounded half to
/// even), which moves gray.png's 32-px crop by one row. The other five
/// images crop identically, so they are compared.
const SAME_CROP: std::ops::Range<usize> = 1..6;

fn check(json: &serde_json::Value, logits_key: &str) {
    let path = mmrl_fixture("expected.safetensors");
    for (ours, key) in [
        ("logits", logits_key),
        ("class_logits", "class_logits"),
        ("rep_logits", "rep_logits"),
    ] {
        let (expected, shape) = tensor_at(&path, key);
        let n = shape[1];
        for row in SAME_CROP {
            let got = field(json, row, ours);
            let d = max_abs_diff(&got, &expected[row * n..(row + 1) * n]);
            assert!(
                d <= 1e-4,
                "row {row} {ours}: differs from the reference by {d}"
            );
        }
    }
}

#[test]
fn base_classes_use_fused_logits() {
    let json = predict(&[]);
    check(&json, "fused_logits");
}

#[test]
fn novel_classes_use_class_logits_only() {
    let json = predict(&["--novel"]);
    check(&json, "class_logits");
}

#[test]
fn wrong_checkpoint_is_refused_cleanly() {
    let clip = mmrl_fixture("tiny_clip.safetensors").display().to_string();
    let tok = clip_fixture("tiny_hf/tokenizer.json").display().to_string();
    let img = clip_image_paths()[1].clone();
    let out = mmrl(&[
        "predict",
        "--clip",
        &clip,
        "--checkpoint",
        &clip,
        "--tokenizer",
        &tok,
        "--classes",
        "a,b",
        "--images",
        &img,
    ]);
    assert_clean_failure(&out, &["tiny_clip.safetensors", "compound_rep_tokens"]);
}
