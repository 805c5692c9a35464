//! `mmrl data verify`: checks a benchmark dataset's layout, split file and
//! image counts against the protocol, and says what is wrong and how to
//! fix it, including the layouts of known mirrors and archives.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::catalog::Benchmark;
use super::readers::read_benchmark;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The dataset cannot be used as it is.
    Error,
    /// Usable, but the user should know (e.g. a split file will be rebuilt,
    /// counts differ from the protocol's).
    Warning,
}

/// One finding: what is wrong and how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

/// Image counts found.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Counts {
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: String,
    pub folder: PathBuf,
    pub counts: Option<Counts>,
    pub expected: Counts,
    pub findings: Vec<Finding>,
}

impl Report {
    /// No errors (warnings allowed).
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Error)
    }

    fn error(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.findings.push(Finding {
            severity: Severity::Error,
            what: what.into(),
            fix: fix.into(),
        });
    }

    fn warn(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            what: what.into(),
            fix: fix.into(),
        });
    }

    /// A readable report, one finding per paragraph.
    pub fn render(&self) -> String {
        let mut s = format!("{} in {}\n", self.dataset, self.folder.display());
        let e = self.expected;
        match self.counts {
            Some(c) => s.push_str(&format!(
                "  found     {} classes, {} train, {} val, {} test images\n",
                c.classes, c.train, c.val, c.test
            )),
            None => s.push_str("  found     (could not be read)\n"),
        }
        s.push_str(&format!(
            "  protocol  {} classes, {} train, {} val, {} test images\n",
            e.classes, e.train, e.val, e.test
        ));
        if self.findings.is_empty() {
            s.push_str("OK: the layout, split and counts are the protocol's.\n");
        }
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            s.push_str(&format!("{tag}: {}\n  fix: {}\n", f.what, f.fix));
        }
        s
    }
}

/// Checks `root/<folder>` for benchmark `b`. `decode`: also decode every
/// image (slow; finds corrupt files).
pub fn verify(b: Benchmark, root: &Path, decode: bool) -> Report {
    let info = b.info();
    let dir = root.join(info.folder);
    let e = info.sizes;
    let mut r = Report {
        dataset: info.name.into(),
        folder: dir.clone(),
        counts: None,
        expected: Counts {
            classes: e.classes,
            train: e.train.unwrap_or(0),
            val: e
                .val
                .unwrap_or(if b == Benchmark::ImageNet { e.test } else { 0 }),
            test: e.test,
        },
        findings: Vec::new(),
    };
    if !root.is_dir() {
        r.error(
            format!("--root {} is not a folder", root.display()),
            "pass the folder that holds the dataset folders (CoOp's $DATA), e.g. --root ~/data",
        );
        return r;
    }
    if !dir.is_dir() {
        dataset_folder_missing(b, root, &mut r);
        return r;
    }
    known_layout_problems(b, &dir, &mut r);
    if let Some(split) = info.split_file {
        if !dir.join(split).is_file() {
            match b {
                Benchmark::StanfordCars | Benchmark::OxfordFlowers => r.error(
                    format!("{split} is missing from {}", dir.display()),
                    format!("download {split} (linked in CoOp's DATASETS.md for {}) into {}", info.name, dir.display()),
                ),
                _ => r.warn(
                    format!("{split} is missing from {}", dir.display()),
                    format!(
                        "mmrl rebuilds it from the annotations as CoOp does and writes it there on first use; for numbers comparable with the papers, download the original {split} (CoOp's DATASETS.md) instead"
                    ),
                ),
            }
        }
    }
    if !r.ok() {
        return r;
    }
    match read_benchmark(b, root, false) {
        Err(err) => r.error(
            err.to_string(),
            "fix the file or folder named above; the layout is in CoOp's DATASETS.md",
        ),
        Ok(s) => {
            let classes = s
                .train
                .iter()
                .chain(&s.test)
                .map(|i| i.label + 1)
                .max()
                .unwrap_or(0);
            let c = Counts {
                classes,
                train: if b.is_test_only() { 0 } else { s.train.len() },
                val: s.val.len(),
                test: s.test.len(),
            };
            r.counts = Some(c);
            let want = r.expected;
            if c.classes != want.classes {
                r.error(
                    format!("{} classes found, the protocol has {}", c.classes, want.classes),
                    "a class folder or split entry is missing or extra; re-extract the dataset or restore the original split file",
                );
            }
            for (what, got, exp) in [
                ("train", c.train, want.train),
                ("val", c.val, want.val),
                ("test", c.test, want.test),
            ] {
                if got != exp {
                    r.warn(
                        format!("{got} {what} images, the protocol's split has {exp}"),
                        "results will not be comparable with published tables; use the original split file and a complete copy of the images",
                    );
                }
            }
            if decode {
                let bad: Vec<String> = s
                    .train
                    .iter()
                    .chain(&s.val)
                    .chain(&s.test)
                    .map(|i| &i.path)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_par_iter()
                    .filter_map(|p| crate::preprocess::load_rgb8(p).err().map(|e| e.to_string()))
                    .collect();
                for msg in bad.iter().take(20) {
                    r.error(msg.clone(), "replace the file from the original archive, or train with --skip-bad-images");
                }
                if bad.len() > 20 {
                    r.error(
                        format!("... and {} more unreadable images", bad.len() - 20),
                        "re-extract the archive",
                    );
                }
            }
        }
    }
    r
}

fn dataset_folder_missing(b: Benchmark, root: &Path, r: &mut Report) {
    let info = b.info();
    let want = root.join(info.folder);
    // The user passed the dataset folder itself as --root.
    let looks_like_dataset = (!info.image_dir.is_empty() && root.join(info.image_dir).is_dir())
        || info.split_file.is_some_and(|f| root.join(f).is_file())
        || root.file_name().is_some_and(|n| n == info.folder);
    if looks_like_dataset {
        let parent = root
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "..".into());
        r.error(
            format!(
                "{} is the {} folder itself, not the folder holding the dataset folders",
                root.display(),
                info.name
            ),
            format!(
                "pass its parent: --root {parent} (and name the folder {})",
                info.folder
            ),
        );
        return;
    }
    for alias in info.aliases {
        let p = root.join(alias);
        if p.is_dir() {
            r.error(
                format!("no folder {}, but {} exists", want.display(), p.display()),
                format!("rename it: mv {} {}", p.display(), want.display()),
            );
            return;
        }
    }
    if b == Benchmark::FgvcAircraft && root.join("fgvc-aircraft-2013b").join("data").is_dir() {
        r.error(
            format!(
                "no folder {}; the archive's data/ folder is at {}/fgvc-aircraft-2013b/data",
                want.display(),
                root.display()
            ),
            format!(
                "mv {}/fgvc-aircraft-2013b/data {}",
                root.display(),
                want.display()
            ),
        );
        return;
    }
    r.error(
        format!("no folder {} for {}", want.display(), info.name),
        format!(
            "download {} as CoOp's DATASETS.md describes and put it at {} (the folder names are fixed)",
            info.name,
            want.display()
        ),
    );
}

fn known_layout_problems(b: Benchmark, dir: &Path, r: &mut Report) {
    let info = b.info();
    let image_dir = dir.join(info.image_dir);
    let d = dir.display();
    // An archive extracted into a folder of the same name.
    let nested = dir.join(info.folder);
    if !info.image_dir.is_empty() && !image_dir.is_dir() && nested.join(info.image_dir).is_dir() {
        r.error(
            format!(
                "the images are one folder too deep: {}",
                nested.join(info.image_dir).display()
            ),
            format!(
                "move the contents up: mv {}/* {d}/ && rmdir {}",
                nested.display(),
                nested.display()
            ),
        );
        return;
    }
    match b {
        Benchmark::StanfordCars => {
            if dir.join("cars_train").join("cars_train").is_dir()
                || dir.join("cars_test").join("cars_test").is_dir()
            {
                r.error(
                    "this is the Kaggle copy of Stanford Cars: its images are in cars_train/cars_train/ and cars_test/cars_test/",
                    format!("move them up one level: mv {d}/cars_train/cars_train/* {d}/cars_train/ && mv {d}/cars_test/cars_test/* {d}/cars_test/ (the split file's paths are cars_train/<id>.jpg and cars_test/<id>.jpg)"),
                );
            } else if dir.join("car_data").is_dir() {
                r.error(
                    "this is the class-folder Kaggle copy of Stanford Cars (car_data/), whose file names differ from the original's",
                    "use the original images (cars_train/, cars_test/) with split_zhou_StanfordCars.json, or use it as a custom dataset: --dataset folder --root <.../car_data/car_data>",
                );
            } else if !dir.join("cars_train").is_dir() || !dir.join("cars_test").is_dir() {
                r.error(
                    format!("{d} needs cars_train/ and cars_test/"),
                    "extract cars_train.tgz and cars_test.tgz there (the split file's paths are relative to the dataset folder)",
                );
            }
        }
        Benchmark::EuroSat if !image_dir.is_dir() => {
            for alt in ["EuroSAT_RGB", "EuroSAT", "eurosat"] {
                if dir.join(alt).is_dir() {
                    r.error(
                        format!(
                            "no {}/, but {d}/{alt}/ exists (the newer EuroSAT zip's name)",
                            info.image_dir
                        ),
                        format!("rename it: mv {d}/{alt} {}", image_dir.display()),
                    );
                    return;
                }
            }
        }
        Benchmark::Caltech101 if !image_dir.is_dir() => {
            for (p, how) in [
                (
                    dir.join("101_ObjectCategories.tar.gz"),
                    "extract it: tar xzf 101_ObjectCategories.tar.gz",
                ),
                (
                    dir.join("caltech101").join("101_ObjectCategories.tar.gz"),
                    "extract caltech101/101_ObjectCategories.tar.gz into the dataset folder",
                ),
                (
                    dir.join("caltech101").join("101_ObjectCategories"),
                    "move caltech101/101_ObjectCategories up one level",
                ),
            ] {
                if p.exists() {
                    r.error(
                        format!("no {}/, but {} exists", info.image_dir, p.display()),
                        how.to_string(),
                    );
                    return;
                }
            }
        }
        Benchmark::FgvcAircraft if dir.join("data").join("images").is_dir() => {
            r.error(
                format!("{d} holds the archive's data/ folder instead of being it"),
                format!("move it: mv {d}/data/* {d}/"),
            );
            return;
        }
        Benchmark::ImageNet => {
            let val = image_dir.join("val");
            if val.is_dir()
                && super::readers::list_sorted(&val, super::readers::EntryKind::Dirs)
                    .is_ok_and(|v| v.is_empty())
            {
                r.error(
                    format!("{} is flat: ImageNet's val images must be in one <wnid> folder per class, like train/", val.display()),
                    "sort them with the usual valprep.sh (from the ILSVRC2012 devkit / PyTorch's ImageNet example)",
                );
            }
            if !dir.join("classnames.txt").is_file() {
                r.error(
                    format!("{d}/classnames.txt is missing"),
                    "copy CoOp's classnames.txt (linked in DATASETS.md) there",
                );
            }
        }
        Benchmark::ImageNetV2
        | Benchmark::ImageNetSketch
        | Benchmark::ImageNetA
        | Benchmark::ImageNetR
            if !dir.join("classnames.txt").is_file() =>
        {
            r.error(
                format!("{d}/classnames.txt is missing"),
                "copy ImageNet's classnames.txt (CoOp's DATASETS.md) into this folder",
            );
        }
        _ => {}
    }
    if !info.image_dir.is_empty() && !image_dir.is_dir() && r.ok() {
        r.error(
            format!("no image folder {}", image_dir.display()),
            format!(
                "{} keeps its images in <dataset folder>/{}; extract the archive there",
                info.name, info.image_dir
            ),
        );
    }
}
