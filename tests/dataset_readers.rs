//! The benchmark readers against CoOp's own readers (on Dassl): the same
//! train/val/test lists, class names and few-shot draws for the same seed,
//! shots and SUBSAMPLE_CLASSES, on tiny copies of every layout, and the same
//! split files where they are rebuilt. Fixture:
//! `tests/scripts/gen_dataset_fixtures.py`.

mod common;

use std::path::{Path, PathBuf};

use common::TempDir;
use mmrl::data::dataset::{self, Benchmark, Item, Request, Source};
use mmrl::data::few_shot::Subsample;
use serde_json::Value;

type Row = (String, u64, String);

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/datasets.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes a layout of the fixture (empty image files, text files verbatim).
fn materialize(layout: &Value, root: &Path) {
    for f in layout["files"].as_array().unwrap() {
        let p = root.join(f.as_str().unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"").unwrap();
    }
    for (f, text) in layout["texts"].as_object().unwrap() {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text.as_str().unwrap()).unwrap();
    }
}

fn rows(items: &[Item], root: &Path) -> Vec<Row> {
    items
        .iter()
        .map(|it| {
            let rel = it
                .path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, it.label as u64, it.class.clone())
        })
        .collect()
}

fn expected_rows(v: &Value) -> Vec<Row> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_u64().unwrap(),
                r[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn subsample(s: &str) -> Subsample {
    match s {
        "all" => Subsample::All,
        "base" => Subsample::Base,
        "new" => Subsample::Novel,
        _ => panic!("{s}"),
    }
}

#[test]
fn every_layout_gives_coops_lists_for_every_seed_shots_and_subsample() {
    let f = fixture();
    let layouts = f["layouts"].as_object().unwrap();
    let runs = f["runs"].as_array().unwrap();
    assert!(layouts.len() >= 15, "all datasets covered");
    let mut checked = 0;
    for (key, layout) in layouts {
        let tmp = TempDir::new("layout");
        let root = tmp.path();
        materialize(layout, root);
        let name = layout["name"].as_str().unwrap();
        let b = Benchmark::from_name(name).unwrap_or_else(|| panic!("{name} known"));
        let splits = dataset::read_splits(&Source::Benchmark(b), root, None, true)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        if let Some(written) = layout.get("written_split") {
            let info = b.info();
            let ours: Value = serde_json::from_str(
                &std::fs::read_to_string(root.join(info.folder).join(info.split_file.unwrap()))
                    .unwrap(),
            )
            .unwrap();
            for k in ["train", "val", "test"] {
                assert_eq!(
                    expected_rows(&ours[k]),
                    expected_rows(&written[k]),
                    "{key}: rebuilt split file, {k}"
                );
            }
            assert!(
                !splits.warnings.is_empty(),
                "{key}: the rebuild is reported"
            );
        }
        for run in runs.iter().filter(|r| r["layout"] == key.as_str()) {
            let req = Request {
                shots: run["shots"].as_u64().unwrap() as usize,
                seed: run["seed"].as_u64().unwrap(),
                subsample: subsample(run["subsample"].as_str().unwrap()),
                manifest: None,
            };
            let what = format!(
                "{key} shots {} seed {} {:?}",
                req.shots, req.seed, req.subsample
            );
            // Read again each time: later runs read the split file written above.
            let splits = dataset::read_splits(&Source::Benchmark(b), root, None, true).unwrap();
            let p = dataset::prepare(&splits, &req).unwrap_or_else(|e| panic!("{what}: {e}"));
            let classes: Vec<String> = run["classes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().into())
                .collect();
            assert_eq!(p.classes, classes, "{what}: classes");
            assert_eq!(
                rows(&p.train, root),
                expected_rows(&run["train"]),
                "{what}: train"
            );
            assert_eq!(
                rows(&p.val, root),
                expected_rows(&run["val"]),
                "{what}: val"
            );
            if let Some(test) = run.get("test") {
                assert_eq!(rows(&p.test, root), expected_rows(test), "{what}: test");
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked} runs checked");
}

#[test]
fn a_manifest_replays_the_draw_and_the_cli_prints_the_runs_lists() {
    let f = fixture();
    let layout = &f["layouts"]["oxford_pets"];
    let tmp = TempDir::new("manifest");
    let root = tmp.path();
    materialize(layout, root);
    let splits =
        dataset::read_splits(&Source::Benchmark(Benchmark::OxfordPets), root, None, false).unwrap();
    let drawn = dataset::prepare(
        &splits,
        &Request {
            shots: 4,
            seed: 2,
            subsample: Subsample::Base,
            manifest: None,
        },
    )
    .unwrap();
    let manifest = root.join("out/fewshot.json");
    dataset::split_file::write_json_atomic(&manifest, &drawn.manifest).unwrap();
    // Replayed with another seed: the manifest wins.
    let replayed = dataset::prepare(
        &splits,
        &Request {
            shots: 4,
            seed: 99,
            subsample: Subsample::Base,
            manifest: Some(manifest.clone()),
        },
    )
    .unwrap();
    assert_eq!(replayed.train, drawn.train);
    assert_eq!(replayed.val, drawn.val);
    assert_eq!(replayed.classes, drawn.classes);

    // `mmrl data split --json` = the library's lists = CoOp's.
    let out = common::mmrl(&[
        "data",
        "split",
        "--dataset",
        "oxford_pets",
        "--root",
        root.to_str().unwrap(),
        "--shots",
        "4",
        "--seed",
        "2",
        "--subsample",
        "base",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["dataset"], "OxfordPets");
    let run = f["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["layout"] == "oxford_pets"
                && r["shots"] == 4
                && r["seed"] == 2
                && r["subsample"] == "base"
        })
        .unwrap();
    assert_eq!(j["classes"], run["classes"]);
    let cli_rows: Vec<Row> = j["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            let p = PathBuf::from(it["path"].as_str().unwrap());
            (
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                it["label"].as_u64().unwrap(),
                it["class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(cli_rows, expected_rows(&run["train"]));

    // A manifest naming a class the dataset names differently is refused.
    let mut bad = drawn.manifest.clone();
    bad["train"][0][2] = Value::from("not_a_pet");
    let bad_path = root.join("out/bad.json");
    dataset::split_file::write_json_atomic(&bad_path, &bad).unwrap();
    let err = dataset::prepare(
        &splits,
        &Request {
            shots: 4,
            seed: 1,
            subsample: Subsample::All,
            manifest: Some(bad_path),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.json") && err.contains("not_a_pet"),
        "{err}"
    );
}
