//! Custom folder and CSV datasets, base/novel counts, the errors a broken
//! dataset gives, and `mmrl data verify`'s advice for broken layouts.

mod common;

use std::path::Path;

use common::{assert_clean_failure, mmrl, TempDir};
use mmrl::data::dataset::{self, verify, Benchmark, Request, Source};
use mmrl::data::few_shot::Subsample;

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn req(shots: usize, seed: u64, subsample: Subsample) -> Request {
    Request {
        shots,
        seed,
        subsample,
        manifest: None,
    }
}

fn folder_dataset(root: &Path, classes: &[(&str, usize)]) {
    for (c, n) in classes {
        for i in 0..*n {
            touch(root, &format!("{c}/img_{i:03}.jpg"));
        }
    }
    touch(root, &format!("{}/notes.txt", classes[0].0)); // not an image: ignored
}

#[test]
fn a_folder_per_class_is_a_dataset_with_a_deterministic_split() {
    let tmp = TempDir::new("folder");
    let root = tmp.path();
    folder_dataset(
        root,
        &[
            ("cat", 10),
            ("dog", 7),
            ("red_car", 5),
            ("zebra", 4),
            ("axolotl", 9),
        ],
    );
    let a = dataset::read_splits(&Source::Folder, root, None, false).unwrap();
    let b = dataset::read_splits(&Source::Folder, root, None, false).unwrap();
    assert_eq!(a.train, b.train, "deterministic");
    assert_eq!(a.test, b.test);
    // 50/20/30 with Python's rounding: 10 -> 5/2/3, 7 -> 4/1/2 (round(3.5) = 4), 5 -> 2/1/2 (round(2.5) = 2), 4 -> 2/1/1.
    let count = |items: &[dataset::Item], c: &str| items.iter().filter(|i| i.class == c).count();
    assert_eq!(
        (
            count(&a.train, "cat"),
            count(&a.val, "cat"),
            count(&a.test, "cat")
        ),
        (5, 2, 3)
    );
    assert_eq!(
        (
            count(&a.train, "dog"),
            count(&a.val, "dog"),
            count(&a.test, "dog")
        ),
        (4, 1, 2)
    );
    assert_eq!(
        (
            count(&a.train, "red_car"),
            count(&a.val, "red_car"),
            count(&a.test, "red_car")
        ),
        (2, 1, 2)
    );
    assert!(a
        .train
        .iter()
        .chain(&a.test)
        .all(|i| i.path.extension().unwrap() == "jpg"));
    // Labels follow the sorted folder names; 5 classes: base 3, novel 2.
    let base = dataset::prepare(&a, &req(2, 1, Subsample::Base)).unwrap();
    assert_eq!(base.classes, ["axolotl", "cat", "dog"]);
    assert_eq!(base.train.len(), 6);
    let novel = dataset::prepare(&a, &req(2, 1, Subsample::Novel)).unwrap();
    assert_eq!(novel.classes, ["red_car", "zebra"]);
    assert!(novel.test.iter().all(|i| i.label < 2));
    assert_eq!(novel.test.len(), 2 + 1);
}

#[test]
fn a_folder_with_train_and_test_folders_and_a_class_name_file() {
    let tmp = TempDir::new("folder-tt");
    let root = tmp.path();
    for (c, n) in [("n01", 6), ("n02", 5)] {
        for i in 0..n {
            touch(root, &format!("train/{c}/{i}.png"));
        }
        touch(root, &format!("test/{c}/t.png"));
    }
    write(root, "names.txt", "n01 golden retriever\nn02 tabby cat\n");
    let s =
        dataset::read_splits(&Source::Folder, root, Some(&root.join("names.txt")), false).unwrap();
    // No val/: 20 % of train (round(1.2) = 1, round(1.0) = 1).
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (9, 2, 2));
    let p = dataset::prepare(&s, &req(0, 1, Subsample::All)).unwrap();
    assert_eq!(p.classes, ["golden retriever", "tabby cat"]);
}

#[test]
fn a_csv_of_paths_and_labels_is_a_dataset() {
    let tmp = TempDir::new("csv");
    let root = tmp.path();
    let mut rows = String::from("path,label,split\n");
    for (c, n) in [("ant", 5), ("bee", 4)] {
        for i in 0..n {
            touch(root, &format!("imgs/{c}{i}.jpg"));
            let split = if i == 0 {
                "test"
            } else if i == 1 {
                "val"
            } else {
                "train"
            };
            rows.push_str(&format!("imgs/{c}{i}.jpg,{c},{split}\n"));
        }
    }
    write(root, "data.csv", &rows);
    let s = dataset::read_splits(&Source::Csv, &root.join("data.csv"), None, false).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (5, 2, 2));
    let p = dataset::prepare(&s, &req(2, 3, Subsample::All)).unwrap();
    assert_eq!(p.classes, ["ant", "bee"]);
    assert_eq!(p.train.len(), 4);
    assert_eq!(p.val.len(), 2);

    // Integer labels with a class-name file, no split column: 50/20/30.
    let mut rows = String::new();
    for i in 0..5 {
        rows.push_str(&format!("imgs/ant{i}.jpg,0\n"));
    }
    for i in 0..4 {
        rows.push_str(&format!("imgs/bee{i}.jpg,1\n"));
    }
    write(root, "ints.csv", &rows);
    write(root, "classes.txt", "formica\napis\n");
    let s = dataset::read_splits(
        &Source::Csv,
        &root.join("ints.csv"),
        Some(&root.join("classes.txt")),
        false,
    )
    .unwrap();
    let p = dataset::prepare(&s, &req(0, 1, Subsample::All)).unwrap();
    assert_eq!(p.classes, ["formica", "apis"]);

    // Integer labels without names: a clear error.
    let out = mmrl(&[
        "data",
        "split",
        "--dataset",
        "csv",
        "--root",
        root.join("ints.csv").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["ints.csv", "line 1", "--classnames"]);
}

#[test]
fn broken_datasets_are_errors_that_say_what_to_fix() {
    let tmp = TempDir::new("errors");
    let root = tmp.path();
    let r = root.to_str().unwrap();

    // A split entry pointing outside the dataset folder.
    write(
        root,
        "dtd/split_zhou_DescribableTextures.json",
        r#"{"train": [["../../etc/passwd", 0, "x"]], "val": [], "test": []}"#,
    );
    std::fs::create_dir_all(root.join("dtd/images")).unwrap();
    let out = mmrl(&["data", "split", "--dataset", "dtd", "--root", r]);
    assert_clean_failure(
        &out,
        &[
            "split_zhou_DescribableTextures.json",
            "outside the dataset folder",
        ],
    );

    // A missing image: named, with the split file.
    write(
        root,
        "dtd/split_zhou_DescribableTextures.json",
        r#"{"train": [["banded/a.jpg", 0, "banded"]], "val": [], "test": [["banded/b.jpg", 0, "banded"]]}"#,
    );
    touch(root, "dtd/images/banded/a.jpg");
    let out = mmrl(&["data", "split", "--dataset", "dtd", "--root", r]);
    assert_clean_failure(
        &out,
        &[
            "banded/b.jpg",
            "do not exist",
            "split_zhou_DescribableTextures.json",
        ],
    );

    // Duplicate class names.
    write(
        root,
        "dtd/split_zhou_DescribableTextures.json",
        r#"{"train": [["banded/a.jpg", 0, "banded"], ["banded/a.jpg", 1, "banded"]], "val": [], "test": []}"#,
    );
    let out = mmrl(&["data", "split", "--dataset", "dtd", "--root", r]);
    assert_clean_failure(&out, &["share the class name", "banded"]);

    // A malformed split file.
    write(
        root,
        "dtd/split_zhou_DescribableTextures.json",
        r#"{"train": [["a.jpg", "zero", "x"]]"#,
    );
    let out = mmrl(&["data", "split", "--dataset", "dtd", "--root", r]);
    assert_clean_failure(
        &out,
        &["split_zhou_DescribableTextures.json", "not valid JSON"],
    );

    // An empty class folder in a custom dataset.
    folder_dataset(&root.join("custom"), &[("a", 4), ("b", 4)]);
    std::fs::create_dir_all(root.join("custom/empty_class")).unwrap();
    let out = mmrl(&[
        "data",
        "split",
        "--dataset",
        "folder",
        "--root",
        root.join("custom").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["empty_class", "no images"]);

    // A class too small to split 50/20/30.
    std::fs::remove_dir_all(root.join("custom/empty_class")).unwrap();
    folder_dataset(&root.join("custom"), &[("tiny", 2)]);
    let out = mmrl(&[
        "data",
        "split",
        "--dataset",
        "folder",
        "--root",
        root.join("custom").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["tiny", "at least 4"]);

    // Duplicate class names through a class-name file.
    std::fs::remove_dir_all(root.join("custom/tiny")).unwrap();
    write(root, "names.txt", "a same name\nb same name\n");
    let out = mmrl(&[
        "data",
        "split",
        "--dataset",
        "folder",
        "--root",
        root.join("custom").to_str().unwrap(),
        "--classnames",
        root.join("names.txt").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["share the class name", "same name"]);

    // An unknown dataset name lists the known ones.
    let out = mmrl(&["data", "split", "--dataset", "pets", "--root", r]);
    assert_clean_failure(&out, &["unknown dataset \"pets\"", "oxford_pets"]);

    // A rebuilt split needs annotation files that are not there (Stanford Cars: .mat).
    std::fs::create_dir_all(root.join("stanford_cars/cars_train")).unwrap();
    let out = mmrl(&["data", "split", "--dataset", "stanford_cars", "--root", r]);
    assert_clean_failure(&out, &["split_zhou_StanfordCars.json", "DATASETS.md"]);
}

#[test]
fn a_class_smaller_than_k_gives_all_its_images_and_a_warning() {
    let tmp = TempDir::new("small");
    let root = tmp.path();
    folder_dataset(root, &[("a", 20), ("b", 4)]);
    let s = dataset::read_splits(&Source::Folder, root, None, false).unwrap();
    let p = dataset::prepare(&s, &req(4, 1, Subsample::All)).unwrap();
    // b has 2 training images (round(0.5·4)): both, never repeated.
    let b: Vec<_> = p.train.iter().filter(|i| i.class == "b").collect();
    assert_eq!(b.len(), 2);
    assert_ne!(b[0].path, b[1].path);
    assert!(
        p.warnings.iter().any(|w| w.contains("\"b\" has only 2")),
        "{:?}",
        p.warnings
    );
}

fn verify_errors(b: Benchmark, root: &Path) -> Vec<String> {
    let r = verify::verify(b, root, false);
    assert!(!r.ok(), "{}", r.render());
    r.findings
        .iter()
        .map(|f| format!("{} | {}", f.what, f.fix))
        .collect()
}

#[test]
fn verify_explains_each_broken_layout() {
    let tmp = TempDir::new("verify");
    let root = tmp.path();
    let any = |v: &[String], needles: &[&str]| {
        assert!(
            v.iter().any(|f| needles.iter().all(|n| f.contains(n))),
            "{needles:?} not in {v:#?}"
        );
    };

    // Missing dataset folder, present under an alias.
    std::fs::create_dir_all(root.join("food101/images")).unwrap();
    any(
        &verify_errors(Benchmark::Food101, root),
        &["food101", "mv", "food-101"],
    );

    // --root is the dataset folder itself.
    any(
        &verify_errors(Benchmark::Food101, &root.join("food101")),
        &["folder itself", "--root"],
    );

    // The Kaggle copy of Stanford Cars.
    touch(root, "stanford_cars/cars_train/cars_train/00001.jpg");
    touch(root, "stanford_cars/cars_test/cars_test/00001.jpg");
    any(
        &verify_errors(Benchmark::StanfordCars, root),
        &["Kaggle", "cars_train/cars_train"],
    );

    // EuroSAT's newer zip name.
    touch(root, "eurosat/EuroSAT_RGB/Forest/Forest_1.jpg");
    any(
        &verify_errors(Benchmark::EuroSat, root),
        &["EuroSAT_RGB", "mv"],
    );

    // An archive extracted one level too deep.
    touch(root, "dtd/dtd/images/banded/banded_0001.jpg");
    any(
        &verify_errors(Benchmark::Dtd, root),
        &["one folder too deep"],
    );

    // FGVC's data/ folder not renamed.
    touch(root, "fgvc-aircraft-2013b/data/images/0001.jpg");
    any(
        &verify_errors(Benchmark::FgvcAircraft, root),
        &["fgvc-aircraft-2013b/data", "mv"],
    );

    // ImageNet's flat val folder.
    touch(root, "imagenet/images/train/n01440764/a.JPEG");
    touch(root, "imagenet/images/val/ILSVRC2012_val_00000001.JPEG");
    write(root, "imagenet/classnames.txt", "n01440764 tench\n");
    any(
        &verify_errors(Benchmark::ImageNet, root),
        &["flat", "valprep"],
    );

    // Counts that differ from the protocol's.
    write(
        root,
        "oxford_pets/split_zhou_OxfordPets.json",
        r#"{"train": [["a_1.jpg", 0, "a"]], "val": [["a_2.jpg", 0, "a"]], "test": [["a_3.jpg", 0, "a"]]}"#,
    );
    for f in ["a_1", "a_2", "a_3"] {
        touch(root, &format!("oxford_pets/images/{f}.jpg"));
    }
    let r = verify::verify(Benchmark::OxfordPets, root, false);
    assert!(
        r.render().contains("1 classes found, the protocol has 37"),
        "{}",
        r.render()
    );

    // A corrupt image, found with --decode; the CLI exits 2 with the report.
    std::fs::write(root.join("oxford_pets/images/a_1.jpg"), b"\xff\xd8garbage").unwrap();
    let out = mmrl(&[
        "data",
        "verify",
        "--dataset",
        "oxford_pets",
        "--root",
        root.to_str().unwrap(),
        "--decode",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("a_1.jpg") && stdout.contains("fix:"),
        "{stdout}"
    );
    assert_clean_failure(&out, &["OxfordPets is not usable"]);
}

#[test]
fn data_list_names_every_dataset_with_its_sizes() {
    let out = mmrl(&["data", "list", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 15);
    let pets = rows.iter().find(|r| r["dataset"] == "oxford_pets").unwrap();
    assert_eq!(
        (
            pets["classes"].as_u64(),
            pets["base"].as_u64(),
            pets["novel"].as_u64()
        ),
        (Some(37), Some(19), Some(18))
    );
    let a = rows.iter().find(|r| r["dataset"] == "imagenet_a").unwrap();
    assert_eq!(a["classes"], 200);
}
