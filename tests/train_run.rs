//! `mmrl train` end to end on a tiny random CLIP and a generated folder
//! dataset: base-to-novel over two seeds writes the table, JSON, CSV and
//! small checkpoints; the same seed gives the same numbers.

mod common;

use std::path::Path;

use common::{assert_clean_failure, clip_fixture, mmrl, TempDir};
use serde_json::Value;

/// 6 classes of 8 images each: a coloured square on a grey background.
fn make_dataset(root: &Path) {
    let colours = [
        [220u8, 30, 30],
        [30, 200, 40],
        [40, 40, 220],
        [220, 220, 30],
        [200, 40, 200],
        [30, 210, 210],
    ];
    for (c, rgb) in colours.iter().enumerate() {
        let dir = root.join(format!("class_{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..8u32 {
            let img = image::RgbImage::from_fn(40 + i, 36, |x, y| {
                let inside = (8 + i..28 + i).contains(&x) && (6..30).contains(&y);
                if inside {
                    image::Rgb(*rgb)
                } else {
                    image::Rgb([120, 120, 120])
                }
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn train_with(root: &Path, out: &Path, seeds: &str, extra: &[&str]) -> std::process::Output {
    let args = train_with_args(root, out, seeds, extra);
    mmrl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The arguments of [`train_with`]: MMRL, base-to-novel, 2 shots, 3 epochs
/// of batch 2 on the tiny CLIP.
fn train_with_args(root: &Path, out: &Path, seeds: &str, extra: &[&str]) -> Vec<String> {
    let clip = clip_fixture("tiny_hf");
    let mut args = vec![
        "train",
        "--method",
        "mmrl",
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--protocol",
        "base2novel",
        "--shots",
        "2",
        "--seeds",
        seeds,
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--set",
        "workers=1",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

fn train(root: &Path, out: &Path, seeds: &str) -> Value {
    let o = train_with(root, out, seeds, &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("epoch 3/3 train"),
        "one line per epoch: {stdout}"
    );
    // MMRL's loss terms are Burn metrics in the epoch line; no validation
    // pass runs unless the config asks for one.
    for term in ["ce_class", "ce_rep", "reg_image", "reg_text"] {
        assert!(stdout.contains(term), "{term}: {stdout}");
    }
    assert!(!stdout.contains(" valid: "), "{stdout}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // Each epoch line shows that epoch's mean loss (Burn's metric log), and
    // each seed's result its last epoch's training accuracy.
    for s in r["seeds"].as_array().unwrap() {
        let seed = s["seed"].as_u64().unwrap();
        let log = |epoch: usize, metric: &str| {
            epoch_mean(&out.join(format!("seed{seed}/train/train/epoch-{epoch}/{metric}.log")))
        };
        for epoch in 1..=3 {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("mmrl seed {seed} epoch {epoch}/3 train:")))
                .unwrap_or_else(|| panic!("seed {seed} epoch {epoch}: {stdout}"));
            let shown: f64 = line
                .split("Loss epoch ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no loss in {line}"));
            let want = log(epoch, "Loss");
            assert!(
                (shown - want).abs() <= 0.005 + 1e-3 * want.abs(),
                "epoch {epoch} shows loss {shown}, its log's mean is {want}: {line}"
            );
        }
        let acc = s["train_accuracy"].as_f64().expect("train_accuracy");
        assert!((acc - log(3, "Accuracy")).abs() < 1e-9, "{s}");
    }
    r
}

/// The batch-size-weighted mean of one of Burn's per-epoch metric logs
/// (`value,batch size` lines).
fn epoch_mean(path: &Path) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (sum, n) = text
        .lines()
        .map(|l| {
            let (v, n) = l.split_once(',').unwrap();
            let (v, n): (f64, f64) = (v.parse().unwrap(), n.parse().unwrap());
            (v * n, n)
        })
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    sum / n
}

#[test]
fn base_to_novel_over_two_seeds_writes_results_and_small_checkpoints() {
    let tmp = TempDir::new("train");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let out = tmp.path().join("run");
    let r = train(&root, &out, "1,2");
    assert_eq!(r["method"], "mmrl");
    assert_eq!(r["protocol"], "base2novel");
    let seeds = r["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    for s in seeds {
        for k in ["base", "novel", "hm"] {
            let v = s[k].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{k} = {v}");
        }
        let (b, n) = (s["base"].as_f64().unwrap(), s["novel"].as_f64().unwrap());
        let hm = s["hm"].as_f64().unwrap();
        assert!(
            (hm - if b + n > 0.0 {
                2.0 * b * n / (b + n)
            } else {
                0.0
            })
            .abs()
                < 1e-9
        );
    }
    let mean_base = (seeds[0]["base"].as_f64().unwrap() + seeds[1]["base"].as_f64().unwrap()) / 2.0;
    assert!((r["mean"]["base"].as_f64().unwrap() - mean_base).abs() < 1e-9);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("mean ± std"), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(out.join("config.toml").is_file());
    assert!(out.join("seed1/fewshot.json").is_file());

    // The checkpoint holds only the trained parameters, with the CLIP hash.
    let ckpt = std::fs::read(out.join("seed1/mmrl.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&ckpt).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["clip_sha256"].len(), 64);
    let st = safetensors::SafeTensors::deserialize(&ckpt).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    assert!(
        names
            .iter()
            .all(|n| n.contains("representation_learner") || n.contains("proj_rep")),
        "{names:?}"
    );
    let clip_bytes = std::fs::metadata(clip_fixture("tiny_hf/model.safetensors"))
        .unwrap()
        .len();
    assert!(
        (ckpt.len() as u64) < clip_bytes,
        "checkpoint {} B vs CLIP {clip_bytes} B",
        ckpt.len()
    );

    // `mmrl eval` on the checkpoint reproduces the run's base and novel accuracy.
    let clip = clip_fixture("tiny_hf");
    for (sub, key) in [("base", "base"), ("novel", "novel")] {
        let o = mmrl(&[
            "eval",
            "--checkpoint",
            out.join("seed1/mmrl.safetensors").to_str().unwrap(),
            "--dataset",
            "folder",
            "--root",
            root.to_str().unwrap(),
            "--clip",
            clip.to_str().unwrap(),
            "--subsample",
            sub,
            "--shots",
            "2",
            "--seed",
            "1",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e["accuracy"], seeds[0][key], "{sub}");
        assert_eq!(e["classes"], 3);
    }
    // `mmrl report` collects runs into one table.
    let o = mmrl(&["report", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| mmrl | data | Base2novel | 2 | 2 |"),
        "{table}"
    );

    // Same seed, same numbers.
    let again = train(&root, &tmp.path().join("again"), "1");
    let s1 = &again["seeds"][0];
    for k in ["base", "novel", "hm"] {
        assert_eq!(s1[k], seeds[0][k], "{k}");
    }

    // Killed during epoch 3, with epoch 2's model checkpoint cut short (as
    // a kill while Burn writes it in place leaves it), then resumed: epoch
    // 2's checkpoint is skipped, the run continues after epoch 1 and ends
    // with the same numbers as uninterrupted.
    let out2 = tmp.path().join("killed");
    let o = train_with(&root, &out2, "1", &["--interrupt-after-epoch", "2"]);
    assert_clean_failure(&o, &["interrupted", "--resume"]);
    assert!(!out2.join("results.json").exists());
    let cut = out2.join("seed1/train/checkpoint/model-2.mpk");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // Without --resume the run is not overwritten.
    let o = train_with(&root, &out2, "1", &[]);
    assert_clean_failure(&o, &["previous run", "--resume"]);
    let o = train_with(&root, &out2, "1", &["--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("epoch 2's checkpoint is incomplete") && stdout.contains("model-2.mpk"),
        "{stdout}"
    );
    assert!(stdout.contains("resuming after epoch 1"), "{stdout}");
    let resumed: Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("results.json")).unwrap()).unwrap();
    for k in ["base", "novel", "hm"] {
        assert_eq!(resumed["seeds"][0][k], seeds[0][k], "{k} after resume");
    }
    // A finished seed is not run again.
    let o = train_with(&root, &out2, "1", &["--resume"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("done before"));
}

#[test]
fn eval_takes_method_settings_from_the_checkpoint() {
    let tmp = TempDir::new("train-settings");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let out = tmp.path().join("run");
    let o = train_with(
        &root,
        &out,
        "1",
        &["--set", "mmrl.alpha=0.2", "--set", "mmrl.rep_layers=[1]"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let ckpt = out.join("seed1/mmrl.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let settings: Value = serde_json::from_str(&meta["method_config"]).unwrap();
    assert_eq!(settings["alpha"], 0.2);
    assert_eq!(settings["rep_layers"], serde_json::json!([1]));
    let classes: Vec<String> = serde_json::from_str(&meta["classes"]).unwrap();
    assert_eq!(classes.len(), 3);
    assert_eq!((meta["seed"].as_str(), meta["shots"].as_str()), ("1", "2"));
    let clip = clip_fixture("tiny_hf");
    let eval = |sub: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--dataset",
            "folder",
            "--root",
            root.to_str().unwrap(),
            "--clip",
            clip.to_str().unwrap(),
            "--subsample",
            sub,
        ];
        args.extend_from_slice(extra);
        let o = mmrl(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e: Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            e["accuracy"].clone(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // No method flags, no --shots/--seed: all from the checkpoint.
    for (sub, key) in [("base", "base"), ("novel", "novel")] {
        let (acc, _) = eval(sub, &[]);
        assert_eq!(acc, r["seeds"][0][key], "{sub}");
    }
    // A flag that contradicts the checkpoint wins, with a notice.
    let (_, stderr) = eval("base", &["--set", "mmrl.alpha=0.7"]);
    assert!(stderr.contains("override"), "{stderr}");
    let (_, stderr) = eval("base", &["--seed", "2"]);
    assert!(stderr.contains("--seed 2 overrides"), "{stderr}");
    // A method flag that contradicts it is refused: the tensors would not fit.
    let o = mmrl(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--method",
        "coop",
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["mmrl checkpoint", "--method mmrl"]);
}

#[test]
fn bad_training_arguments_are_clear_errors() {
    let tmp = TempDir::new("train-bad");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let clip = clip_fixture("tiny_hf");
    let o = mmrl(&[
        "train",
        "--method",
        "mmrl",
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--set",
        "mmrl.no_such_key=1",
        "--output",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["no_such_key"]);
    // An unknown precision names the ones there are.
    for bad in [&["--precision", "fp8"][..], &["--set", "precision=fp16"]] {
        let mut args = vec!["train", "--dataset", "eurosat", "--dry-run"];
        args.extend_from_slice(bad);
        assert_clean_failure(&mmrl(&args), &["f32", "bf16"]);
    }

    // A corrupt training image stops the run with its path; --skip-bad-images
    // goes on. (class_1/2.png is in seed 1's training draw; the validation
    // split is not read, as the reference never validates.)
    std::fs::write(root.join("class_1/2.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let run = |extra: &[&str], out: &str| {
        let mut args = vec![
            "train",
            "--method",
            "mmrl",
            "--dataset",
            "folder",
            "--root",
            root.to_str().unwrap(),
            "--clip",
            clip.to_str().unwrap(),
            "--shots",
            "8",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--output",
        ];
        let out = tmp.path().join(out);
        let out = out.to_str().unwrap().to_string();
        args.push(&out);
        args.extend_from_slice(extra);
        mmrl(&args)
    };
    let o = run(&[], "corrupt");
    assert_clean_failure(&o, &["class_1/2.png"]);
    let o = run(&["--skip-bad-images"], "skipped");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn coop_and_zero_shot_run_through_the_same_trainer_and_reports() {
    let tmp = TempDir::new("train-coop");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let clip = clip_fixture("tiny_hf");
    for (method, extra) in [
        (
            "coop",
            vec!["--set", "coop.n_ctx=4", "--set", "val_every=1"],
        ),
        ("zeroshot", vec![]),
    ] {
        let out = tmp.path().join(method);
        let mut args = vec![
            "train",
            "--method",
            method,
            "--dataset",
            "folder",
            "--root",
            root.to_str().unwrap(),
            "--clip",
            clip.to_str().unwrap(),
            "--shots",
            "2",
            "--seeds",
            "1,2",
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = mmrl(&args);
        assert!(
            o.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(r["method"], method);
        assert_eq!(r["seeds"].as_array().unwrap().len(), 2);
        if method == "coop" {
            // `val_every = 1`: a validation line after every epoch.
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(stdout.contains("epoch 2/2 valid: "), "{stdout}");
        }
        assert!(r["mean"]["hm"].is_number());
    }
    let ckpt = std::fs::read(tmp.path().join("coop/seed1/coop.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&ckpt).unwrap();
    assert_eq!(st.names(), vec!["prompt_learner.ctx"]);
    assert_eq!(st.tensor("prompt_learner.ctx").unwrap().shape(), &[4, 64]);

    // `mmrl predict` classifies images with the trained checkpoints.
    let img = root.join("class_0/0.png");
    let coop = tmp.path().join("coop/seed1/coop.safetensors");
    let o = mmrl(&[
        "predict",
        "--method",
        "coop",
        "--checkpoint",
        coop.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--classes",
        "class_0,class_1,class_2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["results"][0]["logits"].as_array().unwrap().len(), 3);
    // The wrong method, other CLIP weights, a truncated file: clear errors.
    let o = mmrl(&[
        "predict",
        "--method",
        "mmrl",
        "--checkpoint",
        coop.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--classes",
        "a,b",
    ]);
    assert_clean_failure(&o, &["coop checkpoint", "--method coop"]);
    let other = clip_fixture("tiny_openai.safetensors");
    let o = mmrl(&[
        "predict",
        "--method",
        "coop",
        "--checkpoint",
        coop.to_str().unwrap(),
        "--clip",
        other.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--classes",
        "a,b",
    ]);
    assert_clean_failure(&o, &["other CLIP weights", "tiny_openai.safetensors"]);
    let bytes = std::fs::read(&coop).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = mmrl(&[
        "predict",
        "--method",
        "coop",
        "--checkpoint",
        cut.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--classes",
        "a,b",
    ]);
    assert_clean_failure(&o, &["cut.safetensors"]);
}

/// `mmrl train --method mm-adapter` on the generated folder dataset, one
/// seed, 4 shots, batch 4, into `out`, with `extra` flags after these.
fn mm_adapter_args(root: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Vec<String> {
    let clip = clip_fixture("tiny_hf");
    let mut args: Vec<String> = [
        "train",
        "--method",
        "mm-adapter",
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--shots",
        "4",
        "--seeds",
        "1",
        "--epochs",
        epochs,
        "--batch-size",
        "4",
        "--set",
        "workers=1",
        "--output",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The Multi-Modal Adapter through the same trainer with its recipe's
/// optimiser (Adam, constant rate) and early stopping: the loss falls, the
/// run stops `patience` epochs after its best validation epoch and keeps
/// that epoch's weights (also when interrupted after its best epoch and
/// resumed), the checkpoint holds the adapter under the reference's names,
/// `mmrl eval` reproduces the run's numbers and `mmrl predict` scores with
/// it.
#[test]
fn mm_adapter_trains_stops_early_evaluates_and_predicts() {
    let tmp = TempDir::new("train-mma");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let clip = clip_fixture("tiny_hf");
    let out = tmp.path().join("run");
    let o = mmrl(&strs(&mm_adapter_args(
        &root,
        &out,
        "12",
        &["--set", "patience=2"],
    )));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("77552 trainable parameters"), "{stdout}");
    // Validation after every epoch; the run ends 2 epochs after the best.
    let kept: usize = stdout
        .split("kept epoch ")
        .nth(1)
        .and_then(|s| s.split('\'').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the best epoch is named: {stdout} {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    let ran = stdout.matches(" valid: ").count();
    assert_eq!(ran, (kept + 2).min(12), "{stdout}");
    assert_eq!(stdout.matches(" train: ").count(), ran);
    assert_eq!(iteration_losses(&out).len(), ran * 3);
    // Interrupted after the best epoch, then resumed: the early stopper
    // remembers the best epoch (from Burn's validation logs), so the run
    // stops where the uninterrupted one stopped, keeping the same weights.
    assert!(
        kept + 1 < ran,
        "the best epoch ({kept}) leaves no epoch to interrupt after it ({ran} ran)"
    );
    let cut = tmp.path().join("cut");
    let args = mm_adapter_args(&root, &cut, "12", &["--set", "patience=2"]);
    let after = (kept + 1).to_string();
    let mut first = strs(&args);
    first.extend(["--interrupt-after-epoch", after.as_str()]);
    assert_clean_failure(&mmrl(&first), &["interrupted", "--resume"]);
    let mut again = strs(&args);
    again.push("--resume");
    let o = mmrl(&again);
    let resumed = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{resumed}");
    assert!(
        resumed.contains(&format!("kept epoch {kept}'s weights")),
        "{resumed}"
    );
    assert_eq!(
        resumed.matches(" valid: ").count(),
        ran - kept - 1,
        "{resumed}"
    );
    let seeds = |d: &Path| -> Value {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("results.json")).unwrap())
                .unwrap();
        r["seeds"].clone()
    };
    assert_eq!(seeds(&cut), seeds(&out));
    // Without early stopping, over 6 epochs, the loss falls.
    let long = tmp.path().join("long");
    let o = mmrl(&strs(&mm_adapter_args(
        &root,
        &long,
        "6",
        &["--set", "patience=0"],
    )));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let losses = iteration_losses(&long);
    assert_eq!(losses.len(), 6 * 3, "{losses:?}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&losses[12..]) < mean(&losses[..3]),
        "the loss falls: {losses:?}"
    );
    let ckpt = out.join("seed1/mm-adapter.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), 12);
    assert!(names.iter().all(|n| n.starts_with("adapter.")), "{names:?}");
    assert_eq!(
        st.tensor("adapter.mha.in_proj_weight").unwrap().shape(),
        &[384, 128]
    );
    assert_eq!(
        st.tensor("adapter.upsampler.2.weight").unwrap().shape(),
        &[48, 32]
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for key in ["base", "novel"] {
        let o = mmrl(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--dataset",
            "folder",
            "--root",
            root.to_str().unwrap(),
            "--clip",
            clip.to_str().unwrap(),
            "--subsample",
            key,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            e["accuracy"], r["seeds"][0][key],
            "{key}: eval {e} vs train {r}"
        );
    }
    let img = root.join("class_0/0.png");
    let o = mmrl(&[
        "predict",
        "--method",
        "mm-adapter",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--classes",
        "class_0,class_1,class_2,class_3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["results"][0]["logits"].as_array().unwrap().len(), 4);
}

/// Two runs on one output folder: while the first runs, the second refuses,
/// naming the first's process; once it is gone (killed: its lock stays
/// behind), a run takes the folder over.
#[test]
fn a_second_run_on_a_held_folder_refuses() {
    let tmp = TempDir::new("train-lock");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let args =
        |out: &Path, epochs: &str| mm_adapter_args(&root, out, epochs, &["--set", "patience=0"]);
    let out = tmp.path().join("run");
    let long = args(&out, "100000");
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let mut first = common::mmrl_command(&long)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join("mmrl.lock");
    let start = std::time::Instant::now();
    while !lock.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(lock.exists(), "the first run holds the folder");
    let second = args(&out, "1");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let o = mmrl(&second);
    assert_clean_failure(&o, &[&format!("process {}", first.id()), "mmrl.lock"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(lock.exists(), "a killed run leaves its lock");
    // That lock, in a fresh folder: its process is gone, so it is taken over.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&lock, other.join("mmrl.lock")).unwrap();
    let third = args(&other, "1");
    let third: Vec<&str> = third.iter().map(String::as_str).collect();
    let o = mmrl(&third);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("taking over the lock"), "{stdout}");
    assert!(!other.join("mmrl.lock").exists(), "the lock is released");
}

/// Ctrl-C mid-run (SIGINT): the run stops at the next batch with a message
/// naming `--resume`; resuming finishes with the uninterrupted run's numbers.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_cleanly_and_resume_gives_the_uninterrupted_numbers() {
    let tmp = TempDir::new("train-sigint");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let args = |out: &Path| {
        mm_adapter_args(
            &root,
            out,
            "100",
            &["--set", "patience=0", "--set", "augment=true"],
        )
    };
    let whole = tmp.path().join("whole");
    let a = args(&whole);
    let o = mmrl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = tmp.path().join("cut");
    let a = args(&out);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let child = common::mmrl_command(&a)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = out.join("seed1/train/checkpoint/model-3.mpk");
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ckpt.exists(), "training reached epoch 3");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("stopping at the next batch") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(!out.join("results.json").exists(), "the run did not finish");
    let mut resume = a.clone();
    resume.push("--resume");
    let o = mmrl(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
    };
    assert_eq!(read(&out)["seeds"], read(&whole)["seeds"]);
}

/// A run killed (SIGKILL: no chance to clean up) at many moments, including
/// while it writes checkpoints and logs, then resumed, finishes with the
/// uninterrupted run's numbers every time: every file is complete or
/// absent, the dead run's lock is taken over, the resume starts after the
/// last epoch whose checkpoint and logs are whole, and every epoch's log
/// ends up as the uninterrupted run's.
#[cfg(unix)]
#[test]
fn killed_at_any_moment_resume_gives_the_uninterrupted_numbers() {
    let tmp = TempDir::new("train-kill");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let whole = tmp.path().join("whole");
    let started = std::time::Instant::now();
    let o = train_with(&root, &whole, "1", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
    };
    // Kill points spread over the whole run, from its start to its end.
    let run_ms = started.elapsed().as_millis() as u64;
    let mut killed_mid_run = 0;
    for i in 1..=8u64 {
        let out = tmp.path().join(format!("kill{i}"));
        let args = train_with_args(&root, &out, "1", &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = common::mmrl_command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(run_ms * i / 9));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
        let mut resume = args.clone();
        resume.push("--resume");
        let o = mmrl(&resume);
        assert!(
            o.status.success(),
            "killed at {}/9 of the run, resumed: {}\n{}",
            i,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            read(&out)["seeds"],
            read(&whole)["seeds"],
            "killed at {i}/9"
        );
        // Every epoch's metric logs as the uninterrupted run's (Burn's
        // store numbers a resumed run's first epoch 1: it overwrote epoch 1).
        for epoch in 1..=3 {
            let log = |dir: &Path| {
                std::fs::read_to_string(
                    dir.join(format!("seed1/train/train/epoch-{epoch}/Loss.log")),
                )
                .unwrap_or_default()
            };
            assert_eq!(
                log(&out),
                log(&whole),
                "killed at {i}/9: epoch {epoch}'s log"
            );
        }
    }
    assert!(
        killed_mid_run >= 4,
        "only {killed_mid_run} kills landed mid-run"
    );
}

/// A disk that fills up during training: the run stops with an error naming
/// the file and "No space left on device" (no panic, in our code or Burn's
/// writers), and once space is freed `--resume` finishes with the
/// uninterrupted run's numbers. The disk is a small tmpfs mounted in a
/// private mount namespace (`unshare`), sized from 2 to 12 pages (full while
/// the run writes its config, draw and first metric logs) and at a quarter,
/// half and three quarters of what the run writes (full while it writes a
/// checkpoint); where the machine does not allow mounting one the test says
/// so and passes.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_stops_cleanly_and_resume_gives_the_uninterrupted_numbers() {
    let tmp = TempDir::new("train-full-disk");
    let root = tmp.path().join("data");
    make_dataset(&root);
    // `unshare -m` as root, `unshare -rm` (a user namespace) otherwise.
    let probe = tmp.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    let unshare = [&["-m"][..], &["-r", "-m"][..]].into_iter().find(|flags| {
        std::process::Command::new("unshare")
            .args(*flags)
            .args([
                "sh",
                "-c",
                "mount -t tmpfs -o size=64k tmpfs \"$0\"",
                probe.to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(unshare) = unshare else {
        eprintln!("skipped: this machine does not allow mounting a small tmpfs (unshare -m / -rm)");
        return;
    };
    let whole = tmp.path().join("whole");
    let o = train_with(&root, &whole, "1", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What the run leaves on disk, in 4 KiB pages as tmpfs counts them.
    fn pages(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    pages(&e.path())
                } else {
                    m.len().div_ceil(4096)
                }
            })
            .sum()
    }
    let footprint = pages(&whole);
    assert!(footprint >= 8, "{footprint} pages");
    let read = |path: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let sizes_kib = (1..=12u64)
        .map(|p| 4 * p)
        .chain((1..=3).map(|q| footprint * q));
    let mut failed_files = Vec::new();
    for kib in sizes_kib {
        let case = tmp.path().join(format!("{kib}k"));
        let mnt = case.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let out = mnt.join("run");
        let cmd = common::mmrl_command(&[]);
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        let mut run: Vec<String> = vec![quote(cmd.get_program().to_str().unwrap())];
        run.extend(
            train_with_args(&root, &out, "1", &[])
                .iter()
                .map(|a| quote(a)),
        );
        let run = run.join(" ");
        let c = case.display();
        let script = format!(
            "mount -t tmpfs -o size={}k tmpfs {mnt} || exit 3\n\
             {run} > {c}/first.out 2> {c}/first.err; echo $? > {c}/first.rc\n\
             mount -o remount,size=256m {mnt} || exit 4\n\
             {run} --resume > {c}/second.out 2> {c}/second.err; echo $? > {c}/second.rc\n\
             cp {out}/results.json {c}/results.json || true\n",
            kib,
            mnt = quote(mnt.to_str().unwrap()),
            out = quote(out.to_str().unwrap()),
        );
        let status = std::process::Command::new("unshare")
            .args(unshare)
            .args(["sh", "-c", &script])
            .status()
            .unwrap();
        assert!(status.success(), "the namespace script failed: {script}");
        let text = |name: &str| std::fs::read_to_string(case.join(name)).unwrap();
        let (err, rc) = (text("first.err"), text("first.rc"));
        assert_eq!(rc.trim(), "2", "{kib} KiB: {err}\n{}", text("first.out"));
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("No space left on device") && err.contains("cannot write /"),
            "{kib} KiB: {err}"
        );
        let file = err
            .split("cannot write ")
            .nth(1)
            .and_then(|t| t.split(':').next());
        failed_files.push(file.unwrap_or_default().to_string());
        let (err, rc) = (text("second.err"), text("second.rc"));
        assert_eq!(
            rc.trim(),
            "0",
            "{kib} KiB, resumed: {err}\n{}",
            text("second.out")
        );
        assert_eq!(
            read(&case.join("results.json"))["seeds"],
            read(&whole.join("results.json"))["seeds"],
            "{kib} KiB, resumed: {}",
            text("second.out")
        );
    }
    // Every kind of writer met the full disk: ours (the config, the draw),
    // Burn's metric logs (which panicked before) and the checkpoints.
    for kind in ["config.toml", "fewshot.json", ".log", ".mpk"] {
        assert!(
            failed_files.iter().any(|f| f.ends_with(kind)),
            "no {kind} among {failed_files:?}"
        );
    }
}

/// One epoch of `method` under `protocol` on `dataset` (2 shots, seed 1,
/// batch 4, the tiny CLIP) into `out`, with `targets` for the protocols
/// that score other datasets.
fn one_epoch(
    method: &str,
    protocol: &str,
    dataset: &str,
    root: &Path,
    targets: &str,
    out: &Path,
) -> std::process::Output {
    let clip = clip_fixture("tiny_hf");
    mmrl(&[
        "train",
        "--method",
        method,
        "--dataset",
        dataset,
        "--root",
        root.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--protocol",
        protocol,
        "--shots",
        "2",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--set",
        &format!("targets={targets}"),
        "--output",
        out.to_str().unwrap(),
    ])
}

#[test]
fn cross_dataset_scores_each_target_with_its_own_classes() {
    let tmp = TempDir::new("train-cross");
    let root = tmp.path().join("data");
    make_dataset(&root.join("dtd/images"));
    // A second benchmark layout: EuroSAT's class folders (split rebuilt and written).
    for c in ["Forest", "River", "SeaLake"] {
        make_one_class(&root.join("eurosat/2750").join(c));
    }
    // Every method that trains, under the same protocol code.
    for method in ["mmrl", "comma", "mm-adapter"] {
        let out = tmp.path().join(method);
        let o = one_epoch(method, "cross", "dtd", &root, "[\"eurosat\"]", &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        let s = &r["seeds"][0];
        for k in ["dtd", "eurosat", "average"] {
            assert!(s[k].is_number(), "{k}: {s}");
        }
        assert_eq!(s["average"], s["eurosat"]);
    }
    assert!(root.join("eurosat/split_zhou_EuroSAT.json").is_file());
}

/// Few-shot and domain generalisation, the two protocols the other tests do
/// not train, for every method that trains: few-shot scores all classes of
/// the dataset; domain generalisation trains on an ImageNet-layout source
/// (`imagenet/images/{train,val}/<wnid>/`, `classnames.txt`) and scores
/// ImageNet-Sketch's layout (`imagenet-sketch/images/<wnid>/`) with the
/// class head.
#[test]
fn few_shot_and_domain_generalisation_train_every_method() {
    let tmp = TempDir::new("train-fs-dg");
    let root = tmp.path().join("data");
    make_dataset(&root.join("folder"));
    let wnids = ["n01440764", "n01443537", "n01484850"];
    let names: String = wnids
        .iter()
        .zip(["tench", "goldfish", "great white shark"])
        .map(|(w, n)| format!("{w} {n}\n"))
        .collect();
    for w in wnids {
        for dir in [
            "imagenet/images/train",
            "imagenet/images/val",
            "imagenet-sketch/images",
        ] {
            make_one_class(&root.join(dir).join(w));
        }
    }
    std::fs::write(root.join("imagenet/classnames.txt"), &names).unwrap();
    std::fs::write(root.join("imagenet-sketch/classnames.txt"), &names).unwrap();
    for method in ["mmrl", "comma", "mm-adapter"] {
        for (protocol, dataset, data_root, keys) in [
            ("fewshot", "folder", root.join("folder"), &["accuracy"][..]),
            (
                "dg",
                "imagenet",
                root.clone(),
                &["imagenet", "imagenet_sketch", "average"][..],
            ),
        ] {
            let out = tmp.path().join(format!("{method}-{protocol}"));
            let targets = "[\"imagenet_sketch\"]";
            let o = one_epoch(method, protocol, dataset, &data_root, targets, &out);
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{method} {protocol}: {stdout}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                stdout.contains(&format!("{method} seed 1 epoch 1/1 train")),
                "{method} {protocol}: {stdout}"
            );
            let r: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                    .unwrap();
            assert_eq!(r["protocol"], protocol, "{r}");
            assert_eq!(r["method"], method, "{r}");
            let s = &r["seeds"][0];
            for k in keys {
                let v = s[k]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{method} {protocol} {k}: {s}"));
                assert!((0.0..=100.0).contains(&v), "{method} {protocol} {k}: {s}");
            }
            if protocol == "dg" {
                assert_eq!(s["average"], s["imagenet_sketch"], "{s}");
            }
            let ckpt = out.join(format!("seed1/{method}.safetensors"));
            assert!(ckpt.is_file(), "{}", ckpt.display());
        }
    }
}

fn make_one_class(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..6u32 {
        image::RgbImage::from_fn(34 + i, 34, |x, _| image::Rgb([(x * 7) as u8, 90, 160]))
            .save(dir.join(format!("{i}.png")))
            .unwrap();
    }
}

/// Every iteration's training loss of a run, from Burn's metric logs
/// (`seed1/train/train/epoch-N/Loss.log`), in order.
fn iteration_losses(out: &Path) -> Vec<f64> {
    let epochs = out.join("seed1/train/train");
    let mut n = 1;
    let mut losses = Vec::new();
    while let Ok(text) = std::fs::read_to_string(epochs.join(format!("epoch-{n}/Loss.log"))) {
        losses.extend(
            text.lines()
                .filter_map(|l| l.split(',').next()?.trim().parse::<f64>().ok()),
        );
        n += 1;
    }
    losses
}

/// `mmrl train --precision bf16` (frozen CLIP's blocks in bf16) follows the
/// f32 run: the config records it, the loss falls, every iteration's loss
/// stays within bf16's rounding of the f32 run's (the tolerance of
/// `common::BF16_REL_TOL`), and the checkpoint's trained tensors are f32,
/// pointing the same way as the f32 run's.
#[test]
fn training_with_a_bf16_clip_follows_the_f32_run() {
    use common::{cosine, tensor_at, BF16_MIN_COSINE, BF16_REL_TOL, DEVICE};
    let tmp = TempDir::new("train-bf16");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let run = |precision: &str| {
        let out = tmp.path().join(precision);
        let o = train_with(
            &root,
            &out,
            "1",
            &["--device", DEVICE, "--precision", precision],
        );
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        (out, o.status.success(), stderr)
    };
    let (bf_out, ok, stderr) = run("bf16");
    if !ok {
        // Only a backend without bf16 may refuse, and it says what to do.
        assert!(stderr.contains("--precision f32"), "{stderr}");
        return;
    }
    let config = std::fs::read_to_string(bf_out.join("config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "{config}");
    let (f32_out, ok, stderr) = run("f32");
    assert!(ok, "{stderr}");
    let (bf, full) = (iteration_losses(&bf_out), iteration_losses(&f32_out));
    assert!(bf.len() >= 6 && bf.len() == full.len(), "{bf:?} {full:?}");
    let (first, last) = (bf[0] + bf[1], bf[bf.len() - 2] + bf[bf.len() - 1]);
    assert!(last < first, "the loss does not fall: {bf:?}");
    for (i, (b, f)) in bf.iter().zip(&full).enumerate() {
        let d = (b - f).abs();
        eprintln!("iteration {i}: bf16 {b}, f32 {f} ({:.2e})", d / f.abs());
        assert!(
            d <= BF16_REL_TOL as f64 * f.abs(),
            "iteration {i}: bf16 {b}, f32 {f}"
        );
    }
    let ckpt = |out: &Path| out.join("seed1/mmrl.safetensors");
    let bytes = std::fs::read(ckpt(&bf_out)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let (b, _) = tensor_at(&ckpt(&bf_out), &name);
        let (f, _) = tensor_at(&ckpt(&f32_out), &name);
        let cos = cosine(&b, &f);
        eprintln!("trained {name}: cosine {cos}");
        assert!(
            cos >= BF16_MIN_COSINE,
            "trained {name}: cosine {cos} with the f32 run's"
        );
    }
}

/// The same `mmrl train` on the GPU backend the tests were built for and on
/// the CPU: the loss falls on the GPU, every iteration's loss and the trained
/// parameters agree with the CPU run, the checkpoint holds only the trained
/// tensors, and the accuracies agree. Both runs start from the same weights
/// because the methods draw them on the host (`mmrl_model::init`); training
/// runs on the backend without Burn's fusion layer (`backend::WgpuTrain`).
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
#[test]
fn training_on_gpu_matches_the_cpu_run() {
    use common::{assert_close_to, tensor_at, DEVICE};
    let tmp = TempDir::new("train-gpu");
    let root = tmp.path().join("data");
    make_dataset(&root);
    let run = |device: &str| {
        let out = tmp.path().join(device);
        let o = train_with(&root, &out, "1", &["--device", device]);
        assert!(
            o.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        (out, results)
    };
    let (cpu_out, cpu) = run("cpu");
    let (gpu_out, gpu) = run(DEVICE);
    let (cpu_losses, gpu_losses) = (iteration_losses(&cpu_out), iteration_losses(&gpu_out));
    assert!(gpu_losses.len() >= 6, "{gpu_losses:?}");
    assert_eq!(cpu_losses.len(), gpu_losses.len());
    let first = gpu_losses[..2].iter().sum::<f64>();
    let last = gpu_losses[gpu_losses.len() - 2..].iter().sum::<f64>();
    assert!(last < first, "the loss does not fall: {gpu_losses:?}");
    for (i, (c, g)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
        // Within 1e-4 of the loss (or of 1 when the loss is smaller).
        assert_close_to(
            &format!("training loss at iteration {i}"),
            &[*g as f32],
            &[*c as f32],
            1e-4 * c.abs().max(1.0) as f32,
        );
    }
    let ckpt = |out: &Path| out.join("seed1/mmrl.safetensors");
    let bytes = std::fs::read(ckpt(&gpu_out)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in st.names() {
        assert!(
            name.contains("representation_learner") || name.contains("proj_rep"),
            "{name} is not a trained tensor"
        );
        let (c, _) = tensor_at(&ckpt(&cpu_out), name);
        let (g, _) = tensor_at(&ckpt(&gpu_out), name);
        assert_close_to(&format!("trained {name}"), &g, &c, 1e-4);
    }
    for k in ["base", "novel"] {
        let (c, g) = (
            cpu["seeds"][0][k].as_f64().unwrap(),
            gpu["seeds"][0][k].as_f64().unwrap(),
        );
        assert!((c - g).abs() < 1e-9, "{k}: cpu {c}, {DEVICE} {g}");
    }
}
