//! Datasets: the benchmark readers, custom folder and CSV datasets, and the
//! protocol's few-shot draw and base/novel selection on top of them
//! (CoOp's `datasets/*.py` on Dassl's `DatasetBase`).
//!
//! Canonical order: the split files' order where they exist (so the
//! few-shot draw for seed S is Dassl's), text-file order for FGVCAircraft
//! and the annotation fallbacks, and sorted file names inside each class
//! folder where Dassl lists the file system (ImageNet and its variants,
//! rebuilt 50/20/30 splits, custom folders) — Dassl's own order there
//! depends on the file system and is not reproducible even between two of
//! its runs on different machines.

pub mod catalog;
pub mod custom;
pub mod readers;
pub mod split_file;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

pub use catalog::{Benchmark, Info, Sizes};

use crate::error::{Error, Result};
use crate::few_shot::{fewshot_indices, subsample_labels, Subsample};
use crate::pyrandom::PyRandom;

/// Dassl's `Datum`: an image, its label and its class name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// The image file (the image folder joined with `rel`).
    pub path: PathBuf,
    /// The path as split files store it: relative to the image folder,
    /// with `/` separators.
    #[serde(skip)]
    pub rel: String,
    pub label: usize,
    /// The class name as the dataset gives it (underscores kept; prompts
    /// replace them with spaces).
    pub class: String,
}

impl Item {
    pub fn new(image_dir: &Path, rel: &str, label: usize, class: &str) -> Self {
        Item {
            path: image_dir.join(rel),
            rel: rel.to_string(),
            label,
            class: class.to_string(),
        }
    }
}

/// A dataset's full splits, before few-shot sampling.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Dassl's dataset name (`OxfordPets`), or the custom dataset's folder
    /// or file name.
    pub name: String,
    /// Prompt template with `{}` for the class name.
    pub template: String,
    /// Split paths are relative to this folder.
    pub image_dir: PathBuf,
    pub train: Vec<Item>,
    pub val: Vec<Item>,
    pub test: Vec<Item>,
    /// Where the lists came from (for messages).
    pub source: String,
    /// Things the user should know (rebuilt split files, ...).
    pub warnings: Vec<String>,
}

/// What kind of dataset a name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Benchmark(Benchmark),
    /// `root/<class>/*` or `root/{train,val,test}/<class>/*`.
    Folder,
    /// A CSV file of `path,label[,split]`.
    Csv,
}

impl Source {
    /// `oxford_pets`, `OxfordPets`, `folder`, `csv`, ...
    pub fn parse(name: &str) -> Result<Source> {
        match name {
            "folder" => Ok(Source::Folder),
            "csv" => Ok(Source::Csv),
            _ => Benchmark::from_name(name)
                .map(Source::Benchmark)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown dataset {name:?}; known: {} (`mmrl data list` shows them)",
                        catalog::known_names()
                    ))
                }),
        }
    }
}

/// Reads the full splits of any dataset. `root`: the folder holding the
/// benchmark folders, the custom dataset's folder, or the CSV file.
pub fn read_splits(
    source: &Source,
    root: &Path,
    classnames: Option<&Path>,
    write_split: bool,
) -> Result<Splits> {
    match source {
        Source::Benchmark(b) => readers::read_benchmark(*b, root, write_split),
        Source::Folder => custom::read_folder(root, classnames),
        Source::Csv => custom::read_csv(root, classnames),
    }
}

impl Splits {
    /// Whether this dataset is only tested on (train = test = all images).
    pub fn is_test_only(&self) -> bool {
        Benchmark::from_name(&self.name).is_some_and(|b| b.is_test_only())
    }

    fn val_is_test(&self) -> bool {
        self.name == "ImageNet"
    }

    /// Dassl's `Datum` asserts that each file exists: so do we, naming the
    /// first missing files and where they were listed.
    pub fn check_files(&self) -> Result<()> {
        let mut missing = Vec::new();
        let mut count = 0usize;
        let mut seen = std::collections::HashSet::new();
        for it in self.train.iter().chain(&self.val).chain(&self.test) {
            if !seen.insert(&it.path) {
                continue;
            }
            if !it.path.is_file() {
                count += 1;
                if missing.len() < 3 {
                    missing.push(it.path.display().to_string());
                }
            }
        }
        if count > 0 {
            return Err(Error::dataset(
                &self.image_dir,
                format!(
                    "{count} image(s) listed by {} do not exist, e.g. {}; check that --root is the folder holding the dataset folders and that the archive was fully extracted (`mmrl data verify` explains the layout)",
                    self.source,
                    missing.join(", ")
                ),
            ));
        }
        self.check_classes()
    }

    /// Each label has one class name, each class name one label, and every
    /// label below the largest has training images.
    fn check_classes(&self) -> Result<()> {
        let mut names: BTreeMap<usize, &str> = BTreeMap::new();
        for it in self.train.iter().chain(&self.val).chain(&self.test) {
            match names.get(&it.label) {
                Some(n) if *n != it.class => {
                    return Err(Error::dataset(
                        &self.image_dir,
                        format!(
                        "label {} is named both {n:?} and {:?} (in {}); one label, one class name",
                        it.label, it.class, self.source
                    ),
                    ))
                }
                _ => {
                    names.insert(it.label, &it.class);
                }
            }
        }
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (&label, &name) in &names {
            if let Some(other) = by_name.insert(name, label) {
                return Err(Error::dataset(
                    &self.image_dir,
                    format!("labels {other} and {label} share the class name {name:?}; class names must be distinct (rename one)"),
                ));
            }
        }
        let train_labels: std::collections::BTreeSet<usize> =
            self.train.iter().map(|i| i.label).collect();
        if let Some(&max) = train_labels.iter().next_back() {
            if let Some(gap) = (0..max).find(|l| !train_labels.contains(l)) {
                let name = names.get(&gap).copied().unwrap_or("?");
                return Err(Error::dataset(
                    &self.image_dir,
                    format!("class {gap} ({name:?}) has no training images; every class needs at least one"),
                ));
            }
        }
        Ok(())
    }

    /// label → class name over all splits.
    fn label_names(&self) -> HashMap<usize, String> {
        self.train
            .iter()
            .chain(&self.val)
            .chain(&self.test)
            .map(|it| (it.label, it.class.clone()))
            .collect()
    }
}

/// How a run selects its data from the full splits.
#[derive(Debug, Clone)]
pub struct Request {
    /// Images per class in train (val: min(shots, 4)); 0 = all.
    pub shots: usize,
    /// The run's seed (Python `random.seed(seed)` before the draw).
    pub seed: u64,
    pub subsample: Subsample,
    /// Replay this manifest instead of drawing.
    pub manifest: Option<PathBuf>,
}

/// The lists a run trains and tests on.
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    pub dataset: String,
    pub template: String,
    /// Class names in label order (after base/novel relabelling).
    pub classes: Vec<String>,
    pub train: Vec<Item>,
    pub val: Vec<Item>,
    pub test: Vec<Item>,
    /// The few-shot draw before base/novel selection, in split-file shape:
    /// write it next to the run's outputs; `Request::manifest` replays it.
    #[serde(skip)]
    pub manifest: Value,
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Few-shot draw (Dassl's, for the seed) and base/novel selection.
pub fn prepare(splits: &Splits, req: &Request) -> Result<Prepared> {
    let mut warnings = splits.warnings.clone();
    if splits.is_test_only() {
        // The ImageNet variants: NUM_SHOTS and SUBSAMPLE_CLASSES are ignored.
        let classes = class_list(&splits.test, &splits.image_dir)?;
        return Ok(Prepared {
            dataset: splits.name.clone(),
            template: splits.template.clone(),
            classes,
            train: splits.test.clone(),
            val: Vec::new(),
            test: splits.test.clone(),
            manifest: Value::Null,
            warnings,
        });
    }
    let (train, val) = if let Some(path) = &req.manifest {
        read_manifest(path, splits)?
    } else if req.shots >= 1 {
        let mut rng = PyRandom::new(req.seed as i128);
        let labels: Vec<usize> = splits.train.iter().map(|i| i.label).collect();
        let train: Vec<Item> = fewshot_indices(&labels, req.shots, &mut rng)
            .into_iter()
            .map(|i| splits.train[i].clone())
            .collect();
        warn_small_classes(&splits.train, req.shots, "train", &mut warnings);
        let val = if splits.val_is_test() {
            splits.val.clone()
        } else {
            let vl: Vec<usize> = splits.val.iter().map(|i| i.label).collect();
            fewshot_indices(&vl, req.shots.min(4), &mut rng)
                .into_iter()
                .map(|i| splits.val[i].clone())
                .collect()
        };
        (train, val)
    } else {
        (splits.train.clone(), splits.val.clone())
    };
    let manifest = serde_json::json!({
        "dataset": splits.name,
        "shots": req.shots,
        "seed": req.seed,
        "train": split_file::to_json_list(&train),
        "val": split_file::to_json_list(if splits.val_is_test() { &[] } else { &val[..] }),
    });
    let train_labels: Vec<usize> = train.iter().map(|i| i.label).collect();
    let keep = subsample_labels(&train_labels, req.subsample);
    let relabel: HashMap<usize, usize> = keep
        .iter()
        .enumerate()
        .map(|(new, &old)| (old, new))
        .collect();
    let select = |items: &[Item]| -> Vec<Item> {
        if req.subsample == Subsample::All {
            return items.to_vec();
        }
        items
            .iter()
            .filter_map(|it| {
                relabel.get(&it.label).map(|&label| Item {
                    label,
                    ..it.clone()
                })
            })
            .collect()
    };
    let train = select(&train);
    let test = select(&splits.test);
    let val = if splits.val_is_test() {
        test.clone()
    } else {
        select(&val)
    };
    let classes = class_list(&train, &splits.image_dir)?;
    Ok(Prepared {
        dataset: splits.name.clone(),
        template: splits.template.clone(),
        classes,
        train,
        val,
        test,
        manifest,
        warnings,
    })
}

/// `DatasetBase.get_lab2cname`: names ordered by label, from `items`.
fn class_list(items: &[Item], origin: &Path) -> Result<Vec<String>> {
    let n = items.iter().map(|i| i.label + 1).max().unwrap_or(0);
    let mut names: Vec<Option<String>> = vec![None; n];
    for it in items {
        names[it.label].get_or_insert_with(|| it.class.clone());
    }
    names
        .into_iter()
        .enumerate()
        .map(|(l, n)| {
            n.ok_or_else(|| {
                Error::dataset(
                    origin,
                    format!("class {l} has no training images after sampling"),
                )
            })
        })
        .collect()
}

fn warn_small_classes(items: &[Item], shots: usize, split: &str, warnings: &mut Vec<String>) {
    let mut counts: BTreeMap<usize, (usize, &str)> = BTreeMap::new();
    for it in items {
        counts.entry(it.label).or_insert((0, &it.class)).0 += 1;
    }
    for (n, class) in counts.values() {
        if *n < shots {
            warnings.push(format!(
                "class {class:?} has only {n} {split} image(s) (< {shots} shots): all {n} are used, as Dassl does"
            ));
        }
    }
}

/// A manifest (our few-shot draws, or a split-file-shaped export of
/// Dassl's pickles): its train and val lists, checked against the dataset.
pub fn read_manifest(path: &Path, splits: &Splits) -> Result<(Vec<Item>, Vec<Item>)> {
    let obj = split_file::read_json(path)?;
    let train = split_file::items_of(&obj, "train", &splits.image_dir, path, true)?;
    let val = split_file::items_of(&obj, "val", &splits.image_dir, path, false)?;
    let names = splits.label_names();
    for (key, items) in [("train", &train), ("val", &val)] {
        for it in items.iter() {
            match names.get(&it.label) {
                Some(n) if *n == it.class => {}
                Some(n) => {
                    return Err(Error::dataset(
                        path,
                        format!(
                            "\"{key}\" entry {:?} has label {} named {:?}, but the dataset names label {} {n:?}; the manifest belongs to another dataset or split",
                            it.rel, it.label, it.class, it.label
                        ),
                    ))
                }
                None => {
                    return Err(Error::dataset(
                        path,
                        format!("\"{key}\" entry {:?}: label {} is not a class of {}", it.rel, it.label, splits.name),
                    ))
                }
            }
            if !it.path.is_file() {
                return Err(Error::dataset(
                    path,
                    format!(
                        "\"{key}\" entry {:?}: {} does not exist",
                        it.rel,
                        it.path.display()
                    ),
                ));
            }
        }
    }
    if train.is_empty() {
        return Err(Error::dataset(path, "the \"train\" list is empty"));
    }
    let val = if splits.val_is_test() {
        splits.val.clone()
    } else {
        val
    };
    Ok((train, val))
}

/// The `mmrl data split --json` object: `{"dataset", "classes", "train",
/// "val"}` with `{"path", "label", "class"}` items (labels after the
/// base/novel renumbering).
pub fn split_json(p: &Prepared) -> Value {
    let list = |items: &[Item]| -> Value {
        Value::Array(
            items
                .iter()
                .map(
                    |it| serde_json::json!({"path": it.path, "label": it.label, "class": it.class}),
                )
                .collect(),
        )
    };
    serde_json::json!({
        "dataset": p.dataset,
        "classes": p.classes,
        "train": list(&p.train),
        "val": list(&p.val),
    })
}
