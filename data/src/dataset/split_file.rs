//! CoOp's split files (`split_zhou_<Name>.json`) and our few-shot manifests,
//! which have the same shape: `{"train"|"val"|"test": [[relative_path,
//! label, classname], ...]}` (CoOp's `datasets/oxford_pets.py`, `save_split`).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::Item;
use crate::error::{Error, Result};

/// Reads the list `key` of a split object; paths are joined to `image_dir`.
/// `required`: a missing key is an error (else an empty list).
pub fn items_of(
    obj: &Value,
    key: &str,
    image_dir: &Path,
    file: &Path,
    required: bool,
) -> Result<Vec<Item>> {
    let Some(list) = obj.get(key) else {
        if required {
            return Err(Error::dataset(
                file,
                format!("no \"{key}\" list; a split file has \"train\", \"val\" and \"test\" lists of [path, label, classname]"),
            ));
        }
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| {
        Error::dataset(
            file,
            format!("\"{key}\" is not a list of [path, label, classname]"),
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let bad = |what: &str| {
                Error::dataset(
                    file,
                    format!("\"{key}\"[{i}] = {entry}: {what}; each entry is [relative_path, label, classname]"),
                )
            };
            let a = entry.as_array().filter(|a| a.len() == 3).ok_or_else(|| bad("not a 3-element list"))?;
            let rel = a[0].as_str().ok_or_else(|| bad("the path is not a string"))?;
            // Python's int() of the stored value: ints, or floats/strings holding one.
            let label = match &a[1] {
                Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64)),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            }
            .ok_or_else(|| bad("the label is not a non-negative integer"))? as usize;
            let class = a[2].as_str().ok_or_else(|| bad("the class name is not a string"))?;
            check_relative(rel).map_err(|why| bad(&why))?;
            Ok(Item::new(image_dir, rel, label, class))
        })
        .collect()
}

/// A split entry must stay inside the image folder.
pub fn check_relative(rel: &str) -> std::result::Result<(), String> {
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    if p.is_absolute() || rel.starts_with('/') || rel.starts_with('\\') {
        return Err(format!(
            "the path {rel:?} is absolute; split paths are relative to the image folder"
        ));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(format!(
            "the path {rel:?} points outside the dataset folder"
        ));
    }
    Ok(())
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::dataset(
            path,
            format!("not valid JSON ({e}); delete it to rebuild it, or restore the original file"),
        )
    })
}

/// Reads a split file: train, val, test.
pub fn read_split_file(path: &Path, image_dir: &Path) -> Result<[Vec<Item>; 3]> {
    let obj = read_json(path)?;
    if !obj.is_object() {
        return Err(Error::dataset(
            path,
            "not a JSON object with \"train\", \"val\" and \"test\" lists",
        ));
    }
    Ok([
        items_of(&obj, "train", image_dir, path, true)?,
        items_of(&obj, "val", image_dir, path, true)?,
        items_of(&obj, "test", image_dir, path, true)?,
    ])
}

/// Items as `[relative_path, label, classname]` triples.
pub fn to_json_list(items: &[Item]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|it| serde_json::json!([it.rel, it.label, it.class]))
            .collect(),
    )
}

/// Writes `value` as Python's `json.dump(indent=4, separators=(",", ": "))`
/// does (so Dassl reads it), atomically: a temporary file renamed over the
/// target.
pub fn write_json_atomic(path: &Path, value: &Value) -> Result<()> {
    let mut text = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut text, fmt);
    serde::Serialize::serialize(value, &mut ser).expect("JSON values serialise");
    write_atomic(path, &text)
}

/// Writes bytes to `path` through a temporary file in the same folder and a
/// rename, so a crash never leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` through a temporary file in the same folder: `write` fills
/// it, it is synced to disk and renamed over `path`. On failure (a full
/// disk, a vanished folder) the temporary file is removed, since it would
/// hold space, `path` is left as it was, and the error names the file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    let result = std::fs::create_dir_all(dir)
        .map_err(err(dir))
        .and_then(|()| std::fs::File::create(&tmp).map_err(err(&tmp)))
        .and_then(|mut f| write(&mut f).and_then(|()| f.sync_all()).map_err(err(path)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(err(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a split file.
pub fn write_split_file(path: &Path, train: &[Item], val: &[Item], test: &[Item]) -> Result<()> {
    let obj = serde_json::json!({
        "train": to_json_list(train),
        "val": to_json_list(val),
        "test": to_json_list(test),
    });
    write_json_atomic(path, &obj)
}
