//! Checkpoint helpers shared by the methods: reading the model tensors of a
//! Dassl checkpoint (or of a plain state dict / safetensors file), and writing
//! f32 tensors as safetensors atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Module, ParamId};
use burn::prelude::*;
use burn_store::{ModuleSnapshot, TensorSnapshot};

use crate::clip::loader::{convert, read_tensors, transpose, Op};
use crate::error::{Error, Result};
use crate::methods::NamedTensor;

/// Fills every trained parameter of `model` (what its visitors see; frozen
/// parts are hidden) from a checkpoint's `tensors`: `source` gives each
/// parameter's reference name and layout; each must be present with the
/// parameter's shape, and none of `tensors` may be left unused (`unused_hint`
/// is appended to that error). `what` names the method in messages.
pub fn apply_reference_tensors<B: Backend, M: Module<B>>(
    mut model: M,
    path: &Path,
    tensors: &BTreeMap<String, TensorSnapshot>,
    source: impl Fn(&str) -> Option<(String, Op)>,
    unused_hint: &str,
    what: &str,
) -> Result<M> {
    let mut used = BTreeSet::new();
    let mut snapshots = Vec::new();
    for param in model.collect(None, None, false) {
        let name = param.full_path();
        let expected = param.shape.to_vec();
        let (key, op) = source(&name).ok_or_else(|| Error::UnknownLayout {
            path: path.into(),
            msg: format!("no source known for `{name}`"),
        })?;
        let snap = tensors.get(&key).ok_or_else(|| Error::MissingTensor {
            path: path.into(),
            key: key.clone(),
            param: name.clone(),
            hint: String::new(),
        })?;
        used.insert(key.clone());
        let (values, shape) = convert(path, &key, snap, &op)?;
        if shape != expected {
            return Err(Error::ShapeMismatch {
                path: path.into(),
                key,
                param: name,
                expected,
                found: snap.shape.to_vec(),
            });
        }
        snapshots.push(TensorSnapshot::from_data(
            TensorData::new(values, shape),
            name.split('.').map(String::from).collect(),
            Vec::new(),
            ParamId::new(),
        ));
    }
    let unused: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        return Err(Error::UnexpectedTensors {
            path: path.into(),
            keys: format!("{unused:?}{unused_hint}"),
        });
    }
    let result = model.apply(snapshots, None, None, false);
    if !result.errors.is_empty() {
        return Err(Error::WeightsFormat {
            path: path.into(),
            msg: format!("applying the {what} weights failed: {:?}", result.errors),
        });
    }
    Ok(model)
}

/// Every trained parameter of `model` under its reference name and layout
/// (`key` maps a parameter's path to both; parameters it maps to `None` are
/// left out): the inverse of [`apply_reference_tensors`].
pub fn reference_state<B: Backend, M: Module<B>>(
    model: &M,
    key: impl Fn(&str) -> Option<(String, Op)>,
) -> Vec<NamedTensor> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter_map(|snap| {
            let (key, op) = key(&snap.full_path())?;
            let data = snap.to_data().ok()?.convert::<f32>();
            let shape = data.shape.to_vec();
            let values: Vec<f32> = data.to_vec().ok()?;
            Some(match (op, &shape[..]) {
                (Op::Transpose, &[rows, cols]) => {
                    (key, vec![cols, rows], transpose(&values, rows, cols))
                }
                _ => (key, shape, values),
            })
        })
        .collect()
}

/// The model tensors of a checkpoint, by name. Dassl's `model.pth.tar-N` is a
/// `torch.save`d dict with the model under `state_dict`, next to the optimizer
/// and scheduler states: when any name starts with `state_dict.`, only those
/// are kept, without the prefix. Other files (safetensors, plain state dicts)
/// are returned as read (with `module.`/`model.` wrappers stripped).
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>> {
    let all = read_tensors(path)?;
    if all.keys().any(|k| k.starts_with("state_dict.")) {
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("state_dict.")?.to_string(), v)))
            .collect())
    } else {
        Ok(all)
    }
}

/// Saves `(name, shape, values)` tensors as f32 safetensors with an
/// optional string header (`__metadata__`), atomically: written to a
/// temporary file in the same folder, synced, then renamed into place, so
/// the file is either complete or absent. Every checkpoint we write goes
/// through here.
pub fn save_f32_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::WeightsFormat {
                    path: path.into(),
                    msg: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, metadata).map_err(|e| Error::WeightsFormat {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let tmp = path.with_extension("safetensors.tmp");
    let io = |source| Error::Io {
        path: tmp.clone(),
        source,
    };
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })
}
