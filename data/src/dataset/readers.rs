//! Readers of the benchmark datasets in the layout CoOp's `DATASETS.md`
//! gives (its `datasets/*.py` readers): the split file where there
//! is one, else the dataset's own annotation files, split as CoOp does it
//! and written back as the split file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::catalog::Benchmark;
use super::split_file::{read_split_file, write_split_file};
use super::{Item, Splits};
use crate::error::{Error, Result};
use crate::pyrandom::PyRandom;

/// The seed of Python's `random` when a missing split file is rebuilt.
/// Dassl shuffles with the run's seed the first time and writes the file;
/// every later run reads it. We always use 1, the protocols' first seed, so
/// the file does not depend on which seed happened to run first.
pub const SPLIT_SEED: i128 = 1;

/// Non-hidden entries of a folder, sorted in code-point order (Python's
/// `sorted` on `str`). `dirs`: folders only / files only / both.
pub fn list_sorted(dir: &Path, kind: EntryKind) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let keep = match kind {
            EntryKind::Any => true,
            EntryKind::Dirs => entry.path().is_dir(),
            EntryKind::Files => entry.path().is_file(),
        };
        if keep {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Which entries [`list_sorted`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Any,
    Dirs,
    Files,
}

/// Reads the full train/val/test splits of a benchmark dataset under `root`
/// (the folder holding the dataset folders). `write_split`: write a
/// rebuilt split file next to the data (a failure to write is a warning).
pub fn read_benchmark(b: Benchmark, root: &Path, write_split: bool) -> Result<Splits> {
    let info = b.info();
    let dir = root.join(info.folder);
    if !dir.is_dir() {
        return Err(Error::dataset(
            &dir,
            format!(
                "no such folder: {} expects its data in <root>/{} (run `mmrl data verify --dataset {} --root {}` for help)",
                info.name,
                info.folder,
                info.stem,
                root.display()
            ),
        ));
    }
    let image_dir = if info.image_dir.is_empty() {
        dir.clone()
    } else {
        dir.join(info.image_dir)
    };
    let mut warnings = Vec::new();
    let source;
    let (train, val, test) = match b {
        Benchmark::ImageNet => {
            let names = read_classnames(&dir.join("classnames.txt"))?;
            let train = read_wnid_folders(&image_dir.join("train"), &names, "train")?;
            let test = read_wnid_folders(&image_dir.join("val"), &names, "val")?;
            source = format!("{} (train/ and val/ class folders)", image_dir.display());
            // Dassl: val = test, and ImageNet never draws a few-shot val.
            (train, test.clone(), test)
        }
        Benchmark::ImageNetV2 => {
            let names = read_classnames(&dir.join("classnames.txt"))?;
            let mut test = Vec::new();
            for (label, (_, name)) in names.iter().enumerate() {
                let folder = image_dir.join(label.to_string());
                if !folder.is_dir() {
                    return Err(Error::dataset(
                        &folder,
                        format!("ImageNetV2 needs the 1,000 folders 0..999 of imagenetv2-matched-frequency-format-val; folder {label} is missing"),
                    ));
                }
                for f in list_sorted(&folder, EntryKind::Files)? {
                    test.push(Item::new(&image_dir, &format!("{label}/{f}"), label, name));
                }
            }
            source = image_dir.display().to_string();
            (test.clone(), Vec::new(), test)
        }
        Benchmark::ImageNetSketch | Benchmark::ImageNetA | Benchmark::ImageNetR => {
            let names = read_classnames(&dir.join("classnames.txt"))?;
            let test = read_wnid_folders(&image_dir, &names, "")?;
            source = image_dir.display().to_string();
            (test.clone(), Vec::new(), test)
        }
        Benchmark::FgvcAircraft => {
            let variants = read_lines(&dir.join("variants.txt"))?;
            let lab: HashMap<&str, usize> = variants
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_str(), i))
                .collect();
            let read = |split: &str| -> Result<Vec<Item>> {
                let file = dir.join(format!("images_variant_{split}.txt"));
                let mut out = Vec::new();
                for (n, line) in read_lines(&file)?.iter().enumerate() {
                    let (id, variant) = line.split_once(' ').ok_or_else(|| {
                        Error::dataset(
                            &file,
                            format!("line {}: {line:?} is not \"<image id> <variant>\"", n + 1),
                        )
                    })?;
                    let label = *lab.get(variant).ok_or_else(|| {
                        Error::dataset(
                            &file,
                            format!("line {}: variant {variant:?} is not in variants.txt", n + 1),
                        )
                    })?;
                    out.push(Item::new(&image_dir, &format!("{id}.jpg"), label, variant));
                }
                Ok(out)
            };
            source = format!("{}/images_variant_{{train,val,test}}.txt", dir.display());
            (read("train")?, read("val")?, read("test")?)
        }
        _ => {
            let split_path = dir.join(info.split_file.expect("datasets with split files"));
            if split_path.is_file() {
                source = split_path.display().to_string();
                let [train, val, test] = read_split_file(&split_path, &image_dir)?;
                (train, val, test)
            } else {
                let (train, val, test) = rebuild_split(b, &dir, &image_dir, &split_path)?;
                source = format!(
                    "rebuilt from the annotations (seed {SPLIT_SEED}), as {} would",
                    info.name
                );
                if write_split {
                    match write_split_file(&split_path, &train, &val, &test) {
                        Ok(()) => warnings.push(format!(
                            "{} was missing: rebuilt it as CoOp does (Python random, seed {SPLIT_SEED}) and wrote it",
                            split_path.display()
                        )),
                        Err(e) => warnings.push(format!(
                            "{} was missing and was rebuilt, but could not be written ({e}); it is rebuilt identically on every run",
                            split_path.display()
                        )),
                    }
                }
                (train, val, test)
            }
        }
    };
    let splits = Splits {
        name: info.name.to_string(),
        template: info.template.to_string(),
        image_dir,
        train,
        val,
        test,
        source,
        warnings,
    };
    splits.check_files()?;
    Ok(splits)
}

/// `classnames.txt`: lines `"<wnid> <name words>"`, in order.
pub fn read_classnames(path: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in read_lines(path)?.iter().enumerate() {
        let mut parts = line.split(' ');
        let wnid = parts.next().unwrap_or_default().to_string();
        let name = parts.collect::<Vec<_>>().join(" ");
        if wnid.is_empty() || name.is_empty() {
            return Err(Error::dataset(
                path,
                format!("line {}: {line:?} is not \"<folder> <class name>\"", n + 1),
            ));
        }
        out.push((wnid, name));
    }
    if out.is_empty() {
        return Err(Error::dataset(
            path,
            "empty; it needs one \"<folder> <class name>\" line per class",
        ));
    }
    Ok(out)
}

/// Lines of a text file, stripped, without empty lines.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// ImageNet-style class folders: sorted subfolders of `dir`, label = index,
/// name from `classnames.txt` by folder; files sorted (the canonical order,
/// since Dassl's follows the file system's).
fn read_wnid_folders(dir: &Path, names: &[(String, String)], what: &str) -> Result<Vec<Item>> {
    if !dir.is_dir() {
        return Err(Error::dataset(dir, "no such folder".to_string()));
    }
    let by_wnid: HashMap<&str, &str> = names
        .iter()
        .map(|(w, n)| (w.as_str(), n.as_str()))
        .collect();
    let folders = list_sorted(dir, EntryKind::Dirs)?;
    if folders.is_empty() {
        let hint = if what == "val" {
            "; the official val tarball is flat: sort it into one <wnid> folder per class (the usual valprep.sh) first"
        } else {
            ""
        };
        return Err(Error::dataset(dir, format!("no class folders{hint}")));
    }
    let base = dir;
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}/")
    };
    let mut out = Vec::new();
    for (label, folder) in folders.iter().enumerate() {
        let name = by_wnid.get(folder.as_str()).ok_or_else(|| {
            Error::dataset(
                dir.join(folder),
                "this class folder is not in classnames.txt; use the classnames.txt of CoOp's DATASETS.md",
            )
        })?;
        for f in list_sorted(&base.join(folder), EntryKind::Files)? {
            let rel = format!("{prefix}{folder}/{f}");
            out.push(Item {
                path: base.join(folder).join(&f),
                rel,
                label,
                class: name.to_string(),
            });
        }
    }
    Ok(out)
}

/// Rebuilds a missing split file as the dataset's CoOp reader does.
fn rebuild_split(
    b: Benchmark,
    dir: &Path,
    image_dir: &Path,
    split_path: &Path,
) -> Result<(Vec<Item>, Vec<Item>, Vec<Item>)> {
    let mut rng = PyRandom::new(SPLIT_SEED);
    match b {
        Benchmark::Dtd | Benchmark::Food101 | Benchmark::EuroSat | Benchmark::Caltech101 => {
            split_per_class(image_dir, b.ignored(), b.renames(), &mut rng)
        }
        Benchmark::OxfordPets => {
            let read = |file: &str| -> Result<Vec<Item>> {
                let path = dir.join("annotations").join(file);
                let mut out = Vec::new();
                for (n, line) in read_lines(&path)?.iter().enumerate() {
                    let f: Vec<&str> = line.split(' ').collect();
                    let bad = || Error::dataset(&path, format!("line {}: {line:?} is not \"<image> <class id> <species> <breed id>\"", n + 1));
                    if f.len() != 4 {
                        return Err(bad());
                    }
                    let id: usize = f[1].parse().ok().filter(|&i| i >= 1).ok_or_else(bad)?;
                    let parts: Vec<&str> = f[0].split('_').collect();
                    let breed = parts[..parts.len() - 1].join("_").to_lowercase();
                    out.push(Item::new(image_dir, &format!("{}.jpg", f[0]), id - 1, &breed));
                }
                Ok(out)
            };
            let trainval = read("trainval.txt").map_err(|e| missing_split(split_path, e))?;
            let test = read("test.txt")?;
            let (train, val) = split_trainval(trainval, &mut rng, split_path)?;
            Ok((train, val, test))
        }
        Benchmark::Sun397 => {
            let keys: Vec<String> = read_lines(&dir.join("ClassName.txt"))
                .map_err(|e| missing_split(split_path, e))?
                .into_iter()
                .map(|l| l.trim_start_matches('/').to_string())
                .collect();
            let lab: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
            let read = |file: &str| -> Result<Vec<Item>> {
                let path = dir.join(file);
                let mut out = Vec::new();
                for (n, line) in read_lines(&path)?.iter().enumerate() {
                    let rel = line.strip_prefix('/').unwrap_or(line);
                    let key = rel.rsplit_once('/').map(|(k, _)| k).unwrap_or("");
                    let label = *lab.get(key).ok_or_else(|| {
                        Error::dataset(&path, format!("line {}: class {key:?} is not in ClassName.txt", n + 1))
                    })?;
                    let mut names: Vec<&str> = key.split('/').skip(1).collect();
                    names.reverse();
                    out.push(Item::new(image_dir, rel, label, &names.join(" ")));
                }
                Ok(out)
            };
            let trainval = read("Training_01.txt")?;
            let test = read("Testing_01.txt")?;
            let (train, val) = split_trainval(trainval, &mut rng, split_path)?;
            Ok((train, val, test))
        }
        Benchmark::Ucf101 => {
            let list = dir.join("ucfTrainTestlist");
            let class_file = list.join("classInd.txt");
            let mut lab: HashMap<String, usize> = HashMap::new();
            for (n, line) in read_lines(&class_file).map_err(|e| missing_split(split_path, e))?.iter().enumerate() {
                let (id, name) = line.split_once(' ').ok_or_else(|| {
                    Error::dataset(&class_file, format!("line {}: {line:?} is not \"<id> <ClassName>\"", n + 1))
                })?;
                let id: usize = id.parse().ok().filter(|&i| i >= 1).ok_or_else(|| {
                    Error::dataset(&class_file, format!("line {}: {id:?} is not a class id ≥ 1", n + 1))
                })?;
                lab.insert(name.to_string(), id - 1);
            }
            let read = |file: &str| -> Result<Vec<Item>> {
                let path = list.join(file);
                let mut out = Vec::new();
                for (n, line) in read_lines(&path)?.iter().enumerate() {
                    let entry = line.split(' ').next().unwrap_or_default();
                    let (action, file) = entry.split_once('/').ok_or_else(|| {
                        Error::dataset(&path, format!("line {}: {entry:?} is not \"<Class>/<video>.avi\"", n + 1))
                    })?;
                    let label = *lab.get(action).ok_or_else(|| {
                        Error::dataset(&path, format!("line {}: class {action:?} is not in classInd.txt", n + 1))
                    })?;
                    let renamed = split_camel(action);
                    let jpg = file.replace(".avi", ".jpg");
                    out.push(Item::new(image_dir, &format!("{renamed}/{jpg}"), label, &renamed));
                }
                Ok(out)
            };
            let trainval = read("trainlist01.txt")?;
            let test = read("testlist01.txt")?;
            let (train, val) = split_trainval(trainval, &mut rng, split_path)?;
            Ok((train, val, test))
        }
        Benchmark::StanfordCars | Benchmark::OxfordFlowers => Err(Error::dataset(
            split_path,
            format!(
                "missing. {} is rebuilt from MATLAB .mat annotations, which mmrl does not read: download {} (linked in CoOp's DATASETS.md) into {}",
                b.info().name,
                split_path.file_name().unwrap().to_string_lossy(),
                dir.display()
            ),
        )),
        _ => unreachable!("{b} has no split file"),
    }
}

fn missing_split(split_path: &Path, e: Error) -> Error {
    Error::dataset(
        split_path,
        format!("missing, and it cannot be rebuilt: {e}. Download it (CoOp's DATASETS.md links it) or add the annotation files"),
    )
}

/// `ApplyEyeMakeup` → `Apply_Eye_Makeup` (regex `[A-Z][^A-Z]*`, joined with
/// `_`; text before the first capital is dropped, as `re.findall` does).
pub fn split_camel(s: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            parts.push(c.to_string());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts.join("_")
}

/// Python's `round` (half to even) of `n * p`.
fn round_frac(n: usize, p: f64) -> usize {
    (n as f64 * p).round_ties_even() as usize
}

/// `DescribableTextures.read_and_split_data`: per class (sorted folders,
/// minus `ignored`, label = index), shuffle the files (sorted first: the
/// canonical order) and cut 50/20/30 with Python's rounding; renames after
/// labelling.
pub fn split_per_class(
    image_dir: &Path,
    ignored: &[&str],
    renames: &[(&str, &str)],
    rng: &mut PyRandom,
) -> Result<(Vec<Item>, Vec<Item>, Vec<Item>)> {
    if !image_dir.is_dir() {
        return Err(Error::dataset(
            image_dir,
            "no such folder (it should hold one folder per class)",
        ));
    }
    let classes: Vec<String> = list_sorted(image_dir, EntryKind::Dirs)?
        .into_iter()
        .filter(|c| !ignored.contains(&c.as_str()))
        .collect();
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (label, class) in classes.iter().enumerate() {
        let cdir = image_dir.join(class);
        let files = list_sorted(&cdir, EntryKind::Files)?;
        let name = renames
            .iter()
            .find(|(from, _)| from == class)
            .map(|(_, to)| *to)
            .unwrap_or(class);
        let items = files
            .iter()
            .map(|f| Item::new(image_dir, &format!("{class}/{f}"), label, name))
            .collect();
        let (tr, va, te) = shuffle_cut(items, rng).map_err(|n| {
            Error::dataset(
                &cdir,
                format!("class {class:?} has {n} images; a 50/20/30 split needs at least 4 so that train, val and test are not empty"),
            )
        })?;
        train.extend(tr);
        val.extend(va);
        test.extend(te);
    }
    Ok((train, val, test))
}

/// Train, val and test parts.
pub type TrainValTest<T> = (Vec<T>, Vec<T>, Vec<T>);

/// One class of `read_and_split_data`: `random.shuffle`, then 50/20/30 with
/// Python's rounding. `Err(n)` when a part would be empty.
pub fn shuffle_cut<T>(
    mut items: Vec<T>,
    rng: &mut PyRandom,
) -> std::result::Result<TrainValTest<T>, usize> {
    rng.shuffle(&mut items);
    let n = items.len();
    let n_train = round_frac(n, 0.5);
    let n_val = round_frac(n, 0.2);
    if n_train == 0 || n_val == 0 || n_train + n_val >= n {
        return Err(n);
    }
    let test = items.split_off(n_train + n_val);
    let val = items.split_off(n_train);
    Ok((items, val, test))
}

/// `OxfordPets.split_trainval`: per label in order of first appearance,
/// n_val = round(0.2 n) (> 0), shuffle the indices, the first n_val to val.
pub fn split_trainval(
    trainval: Vec<Item>,
    rng: &mut PyRandom,
    origin: &Path,
) -> Result<(Vec<Item>, Vec<Item>)> {
    let mut order: Vec<usize> = Vec::new();
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, it) in trainval.iter().enumerate() {
        groups
            .entry(it.label)
            .or_insert_with(|| {
                order.push(it.label);
                Vec::new()
            })
            .push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for label in order {
        let idxs = groups.get_mut(&label).unwrap();
        let n_val = round_frac(idxs.len(), 0.2);
        if n_val == 0 {
            return Err(Error::dataset(
                origin,
                format!(
                    "class {:?} has {} train+val images; an 80/20 split needs at least 3",
                    trainval[idxs[0]].class,
                    idxs.len()
                ),
            ));
        }
        rng.shuffle(idxs);
        for (n, &i) in idxs.iter().enumerate() {
            if n < n_val {
                val.push(trainval[i].clone());
            } else {
                train.push(trainval[i].clone());
            }
        }
    }
    Ok((train, val))
}

/// The dataset folder of a benchmark under `root`.
pub fn dataset_dir(b: Benchmark, root: &Path) -> PathBuf {
    root.join(b.info().folder)
}
