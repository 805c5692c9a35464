//! `mmrl train --dry-run`: without `--config`, each method × protocol ×
//! dataset (× shots) starts from the recipe the reference scripts use; the
//! resolved config is printed as TOML, and no data or weights are read.

mod common;

use common::{assert_clean_failure, mmrl};

/// The printed recipe name and resolved config of a dry run.
fn dry_run(args: &[&str]) -> (String, toml::Table) {
    let mut all = vec!["train", "--dry-run"];
    all.extend_from_slice(args);
    let o = mmrl(&all);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let recipe = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# recipe: "))
        .unwrap_or_else(|| panic!("no recipe line: {stdout}"))
        .to_string();
    let cfg: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (recipe, cfg)
}

fn int(t: &toml::Table, key: &str) -> i64 {
    t[key]
        .as_integer()
        .unwrap_or_else(|| panic!("{key}: {t:?}"))
}

#[test]
fn mmrl_recipes_follow_the_reference_scripts() {
    let (recipe, c) = dry_run(&["--method", "mmrl", "--dataset", "imagenet"]);
    assert_eq!(recipe, "configs/mmrl/base2novel_imagenet.toml");
    assert_eq!((int(&c, "epochs"), int(&c, "batch_size")), (5, 32));
    assert_eq!(c["protocol"].as_str(), Some("base2novel"));
    // ImageNet's λ from trainers/config.py, resolved into the method's table.
    assert_eq!(c["mmrl"]["reg_weight"].as_float(), Some(0.5));
    assert_eq!(int(&c, "val_every"), 0);

    let (recipe, c) = dry_run(&["--dataset", "eurosat"]);
    assert_eq!(recipe, "configs/mmrl/base2novel.toml");
    assert_eq!((int(&c, "epochs"), int(&c, "batch_size")), (10, 4));
    assert_eq!(int(c["mmrl"].as_table().unwrap(), "rep_dim"), 2048);

    let (recipe, c) = dry_run(&["--dataset", "dtd", "--protocol", "fewshot", "--shots", "4"]);
    assert_eq!(recipe, "configs/mmrl/fewshot.toml");
    assert_eq!(
        (int(&c, "epochs"), int(&c, "batch_size"), int(&c, "shots")),
        (50, 32, 4)
    );

    for protocol in ["cross", "dg"] {
        let (recipe, c) = dry_run(&["--dataset", "imagenet", "--protocol", protocol]);
        assert_eq!(recipe, "configs/mmrl/cross.toml");
        assert_eq!(c["protocol"].as_str(), Some(protocol));
        assert_eq!((int(&c, "epochs"), int(&c, "batch_size")), (1, 32));
        assert_eq!(int(&c, "warmup_epochs"), 0);
        assert_eq!(c["mmrl"]["reg_weight"].as_float(), Some(0.2));
    }
}

#[test]
fn coop_recipes_follow_the_reference_scripts() {
    let (recipe, c) = dry_run(&["--method", "coop", "--dataset", "oxford_pets"]);
    assert_eq!(recipe, "configs/coop/base2novel.toml");
    assert_eq!(c["coop"]["ctx_init"].as_str(), Some("a photo of a"));
    assert_eq!(c["optimizer"].as_str(), Some("sgd"));
    for (shots, epochs) in [("1", 50), ("2", 100), ("4", 100), ("8", 200), ("16", 200)] {
        let (_, c) = dry_run(&[
            "--method",
            "coop",
            "--dataset",
            "dtd",
            "--protocol",
            "fewshot",
            "--shots",
            shots,
        ]);
        assert_eq!(int(&c, "epochs"), epochs, "{shots} shots");
        assert_eq!(c["coop"]["ctx_init"].as_str(), Some(""));
        assert_eq!(int(c["coop"].as_table().unwrap(), "n_ctx"), 16);
    }
    for shots in ["1", "16"] {
        let (recipe, c) = dry_run(&[
            "--method",
            "coop",
            "--dataset",
            "imagenet",
            "--protocol",
            "fewshot",
            "--shots",
            shots,
        ]);
        assert_eq!(recipe, "configs/coop/fewshot_imagenet.toml");
        assert_eq!(int(&c, "epochs"), 50);
    }
}

#[test]
fn overrides_apply_in_order_and_bad_ones_are_named() {
    let (_, c) = dry_run(&[
        "--dataset",
        "eurosat",
        "--epochs",
        "3",
        "--set",
        "epochs=7",
        "--set",
        "mmrl.alpha=0.2",
    ]);
    assert_eq!(int(&c, "epochs"), 7);
    assert_eq!(c["mmrl"]["alpha"].as_float(), Some(0.2));
    let o = mmrl(&[
        "train",
        "--dry-run",
        "--dataset",
        "eurosat",
        "--set",
        "mmrl.alpah=1",
    ]);
    assert_clean_failure(&o, &["[mmrl]", "alpah"]);
    let o = mmrl(&[
        "train",
        "--dry-run",
        "--dataset",
        "eurosat",
        "--method",
        "nope",
    ]);
    assert_clean_failure(&o, &["nope", "zeroshot, coop, mmrl"]);
    let o = mmrl(&["train", "--dataset", "eurosat"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--root"));
}

#[test]
fn mm_adapter_recipes_use_the_references_optimiser_on_the_common_protocol() {
    for protocol in ["base2novel", "fewshot", "cross"] {
        let (recipe, c) = dry_run(&[
            "--method",
            "mm-adapter",
            "--dataset",
            "eurosat",
            "--protocol",
            protocol,
        ]);
        assert_eq!(recipe, format!("configs/mm-adapter/{protocol}.toml"));
        assert_eq!(c["optimizer"].as_str(), Some("adam"));
        assert_eq!(c["lr_scheduler"].as_str(), Some("constant"));
        assert_eq!(c["lr"].as_float(), Some(0.01));
        assert_eq!(c["weight_decay"].as_float(), Some(1e-4));
        assert_eq!((int(&c, "epochs"), int(&c, "batch_size")), (100, 64));
        assert_eq!(int(&c, "patience"), 10);
        assert_eq!(c["augment"].as_bool(), Some(false));
        assert_eq!(c["mm-adapter"]["variant"].as_str(), Some("master"));
    }
}

/// COMMA: `vit_b16_c2_ep5_batch4_2ctx` for base-to-novel (and few-shot, which
/// the reference does not report), `..._cross_datasets` for cross and DG.
#[test]
fn comma_recipes_follow_the_reference_configs() {
    for (protocol, file, epochs, lr, depth) in [
        ("base2novel", "base2novel", 5, 0.0035, 9),
        ("fewshot", "fewshot", 5, 0.0035, 9),
        ("cross", "cross", 2, 0.0026, 3),
        ("dg", "cross", 2, 0.0026, 3),
    ] {
        let (recipe, c) = dry_run(&[
            "--method",
            "comma",
            "--dataset",
            "imagenet",
            "--protocol",
            protocol,
        ]);
        assert_eq!(recipe, format!("configs/comma/{file}.toml"));
        assert_eq!(c["optimizer"].as_str(), Some("sgd"));
        assert_eq!(c["lr"].as_float(), Some(lr));
        assert_eq!((int(&c, "epochs"), int(&c, "batch_size")), (epochs, 4));
        assert_eq!(
            (int(&c, "warmup_epochs"), c["warmup_lr"].as_float()),
            (1, Some(1e-5))
        );
        let m = &c["comma"];
        assert_eq!(m["prompt_depth"].as_integer(), Some(depth));
        assert_eq!(m["n_ctx"].as_integer(), Some(2));
        assert_eq!(m["ctx_init"].as_str(), Some("a photo of a"));
        assert_eq!(m["kp_weight"].as_float(), Some(1.0));
        assert_eq!(m["fp16"].as_bool(), Some(true));
        assert_eq!(m["train_generators"].as_bool(), Some(false));
    }
}
