//! Custom datasets with no code: a folder per class, or a CSV of
//! `path,label[,split]`; an optional class-name file; train/val/test made
//! deterministically when not given.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::readers::{
    list_sorted, read_classnames, shuffle_cut, split_per_class, split_trainval, EntryKind,
    SPLIT_SEED,
};
use super::{Item, Splits};
use crate::error::{Error, Result};
use crate::pyrandom::PyRandom;

/// The default prompt template of a custom dataset.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// File extensions a custom dataset's images may have (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"];

fn is_image(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn dataset_name(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "custom".into())
}

/// Display names for class folders/labels: `<folder> <name words>` lines
/// (as ImageNet's `classnames.txt`); folders not listed keep their name.
fn rename_map(classnames: Option<&Path>) -> Result<HashMap<String, String>> {
    Ok(match classnames {
        Some(p) => read_classnames(p)?.into_iter().collect(),
        None => HashMap::new(),
    })
}

/// `root/<class>/*`, split 50/20/30 per class (as CoOp rebuilds DTD's
/// split, Python `random` seeded with 1, files in sorted order); or
/// `root/train/<class>/*` with optional `val/` (else 20 % of train, as
/// CoOp's 80/20 rule) and `test/`.
pub fn read_folder(root: &Path, classnames: Option<&Path>) -> Result<Splits> {
    if !root.is_dir() {
        return Err(Error::dataset(
            root,
            "no such folder; --dataset folder needs --root <folder with one subfolder per class>",
        ));
    }
    let renames = rename_map(classnames)?;
    let mut rng = PyRandom::new(SPLIT_SEED);
    let (train, val, test, image_dir) = if root.join("train").is_dir() {
        let classes = list_sorted(&root.join("train"), EntryKind::Dirs)?;
        if classes.is_empty() {
            return Err(Error::dataset(
                root.join("train"),
                "no class folders; put each class's images in train/<class>/",
            ));
        }
        let labels: HashMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let read = |split: &str, required: bool| -> Result<Vec<Item>> {
            let dir = root.join(split);
            if !dir.is_dir() {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for class in list_sorted(&dir, EntryKind::Dirs)? {
                let label = *labels.get(class.as_str()).ok_or_else(|| {
                    Error::dataset(
                        dir.join(&class),
                        "this class has no folder in train/; every class needs training images",
                    )
                })?;
                let files: Vec<String> = list_sorted(&dir.join(&class), EntryKind::Files)?
                    .into_iter()
                    .filter(|f| is_image(f))
                    .collect();
                if files.is_empty() && required {
                    return Err(Error::dataset(
                        dir.join(&class),
                        "no images in this class folder; add images or remove the folder",
                    ));
                }
                let name = renames.get(&class).unwrap_or(&class);
                out.extend(
                    files
                        .iter()
                        .map(|f| Item::new(root, &format!("{split}/{class}/{f}"), label, name)),
                );
            }
            Ok(out)
        };
        let train = read("train", true)?;
        let mut val = read("val", false)?;
        let test = read("test", false)?;
        if test.is_empty() {
            return Err(Error::dataset(
                root.join("test"),
                "no test images; a dataset with train/ also needs test/<class>/ (or use root/<class>/ folders and let mmrl split them 50/20/30)",
            ));
        }
        let train = if val.is_empty() {
            let (t, v) = split_trainval(train, &mut rng, root)?;
            val = v;
            t
        } else {
            train
        };
        (train, val, test, root.to_path_buf())
    } else {
        let classes = list_sorted(root, EntryKind::Dirs)?;
        if classes.is_empty() {
            return Err(Error::dataset(
                root,
                "no class folders; put each class's images in <root>/<class name>/",
            ));
        }
        for c in &classes {
            let n = list_sorted(&root.join(c), EntryKind::Files)?
                .into_iter()
                .filter(|f| is_image(f))
                .count();
            if n == 0 {
                return Err(Error::dataset(
                    root.join(c),
                    "no images in this class folder; add images or remove the folder",
                ));
            }
        }
        let pairs: Vec<(&str, &str)> = renames
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (train, val, test) = split_per_class(root, &[], &pairs, &mut rng)?;
        let keep =
            |v: Vec<Item>| -> Vec<Item> { v.into_iter().filter(|i| is_image(&i.rel)).collect() };
        (keep(train), keep(val), keep(test), root.to_path_buf())
    };
    let splits = Splits {
        name: dataset_name(root),
        template: DEFAULT_TEMPLATE.into(),
        image_dir,
        train,
        val,
        test,
        source: root.display().to_string(),
        warnings: Vec::new(),
    };
    splits.check_files()?;
    Ok(splits)
}

/// A CSV of `path,label` with an optional third column `split`
/// (`train`/`val`/`test`) and an optional header row. Paths are relative to
/// the CSV's folder (or absolute). Labels are class names, or 0-based
/// integers when `classnames` (one name per line, or `<key> <name>` lines)
/// is given (one class name per line: line i names label i). Without a split column: 50/20/30 per class as for folders.
pub fn read_csv(file: &Path, classnames: Option<&Path>) -> Result<Splits> {
    if !file.is_file() {
        return Err(Error::dataset(
            file,
            "no such file; --dataset csv needs --root <file.csv> with rows path,label[,split]",
        ));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(file)
        .map_err(|e| Error::dataset(file, e.to_string()))?;
    let names_file: Option<Vec<String>> = match classnames {
        Some(p) => Some(super::readers::read_lines(p)?),
        None => None,
    };
    let mut rows: Vec<(usize, String, String, Option<String>)> = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| Error::dataset(file, format!("row {}: {e}", i + 1)))?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(i + 1);
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        if i == 0 && rec.get(0).is_some_and(|f| f.eq_ignore_ascii_case("path")) {
            continue;
        }
        if rec.len() < 2 || rec.len() > 3 {
            return Err(Error::dataset(
                file,
                format!(
                    "line {line}: expected path,label or path,label,split, found {} column(s)",
                    rec.len()
                ),
            ));
        }
        let split = rec
            .get(2)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_lowercase());
        if let Some(s) = &split {
            if !["train", "val", "test"].contains(&s.as_str()) {
                return Err(Error::dataset(
                    file,
                    format!("line {line}: split {s:?} is not train, val or test"),
                ));
            }
        }
        rows.push((line, rec[0].to_string(), rec[1].to_string(), split));
    }
    if rows.is_empty() {
        return Err(Error::dataset(
            file,
            "no rows; write one `path,label` row per image",
        ));
    }
    // Class list: the name file's lines, or the sorted distinct labels.
    let classes: Vec<String> = match &names_file {
        Some(lines) => lines.clone(),
        None => rows
            .iter()
            .map(|r| r.2.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut items: Vec<(Item, Option<String>)> = Vec::new();
    for (line, path, label, split) in rows {
        let numeric = label.parse::<usize>().is_ok();
        let label_idx = match index.get(label.as_str()) {
            Some(&i) if !(numeric && names_file.is_none()) => i,
            _ => match (label.parse::<usize>(), &names_file) {
                (Ok(i), Some(_)) if i < classes.len() => i,
                (Ok(i), Some(_)) => {
                    return Err(Error::dataset(file, format!("line {line}: label {i} is out of range; the class-name file has {} classes", classes.len())))
                }
                (Ok(_), None) => {
                    return Err(Error::dataset(
                        file,
                        format!("line {line}: label {label:?} is a number; give --classnames FILE (one class name per line, line i = label i) so prompts have names"),
                    ))
                }
                (Err(_), _) => return Err(Error::dataset(file, format!("line {line}: class {label:?} is not in the class-name file"))),
            },
        };
        super::split_file::check_relative(&path)
            .or_else(|e| {
                if Path::new(&path).is_absolute() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::dataset(file, format!("line {line}: {e}")))?;
        items.push((
            Item::new(base, &path, label_idx, &classes[label_idx]),
            split,
        ));
    }
    let has_split = items.iter().any(|(_, s)| s.is_some());
    let (train, val, test) = if has_split {
        if let Some((it, _)) = items.iter().find(|(_, s)| s.is_none()) {
            return Err(Error::dataset(
                file,
                format!(
                    "{:?} has no split while other rows do; give every row a split or none",
                    it.rel
                ),
            ));
        }
        let pick = |s: &str| -> Vec<Item> {
            items
                .iter()
                .filter(|(_, x)| x.as_deref() == Some(s))
                .map(|(i, _)| i.clone())
                .collect()
        };
        let (mut train, mut val, test) = (pick("train"), pick("val"), pick("test"));
        if test.is_empty() {
            return Err(Error::dataset(file, "no rows with split \"test\"; add test rows (or drop the split column to split 50/20/30)"));
        }
        if val.is_empty() {
            let (t, v) = split_trainval(train, &mut PyRandom::new(SPLIT_SEED), file)?;
            train = t;
            val = v;
        }
        (train, val, test)
    } else {
        // 50/20/30 per class in label order, files sorted, as for folders.
        let mut rng = PyRandom::new(SPLIT_SEED);
        let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for (label, class) in classes.iter().enumerate() {
            let mut group: Vec<Item> = items
                .iter()
                .filter(|(i, _)| i.label == label)
                .map(|(i, _)| i.clone())
                .collect();
            if group.is_empty() {
                continue;
            }
            group.sort_by(|a, b| a.rel.cmp(&b.rel));
            let (tr, va, te) = shuffle_cut(group, &mut rng).map_err(|n| {
                Error::dataset(
                    file,
                    format!("class {class:?} has {n} images; a 50/20/30 split needs at least 4 (or add a split column)"),
                )
            })?;
            train.extend(tr);
            val.extend(va);
            test.extend(te);
        }
        (train, val, test)
    };
    let splits = Splits {
        name: dataset_name(file),
        template: DEFAULT_TEMPLATE.into(),
        image_dir: base.to_path_buf(),
        train,
        val,
        test,
        source: file.display().to_string(),
        warnings: Vec::new(),
    };
    splits.check_files()?;
    Ok(splits)
}
