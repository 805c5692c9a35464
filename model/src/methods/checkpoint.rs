//! Checkpoint helpers shared by the methods: reading the model tensors of a
//! Dassl checkpoint (or of a plain state dict / safetensors file), and writing
//! f32 tensors as safetensors atomically.

use std::collections::BTreeMap;
use std::path::Path;

use burn_store::TensorSnapshot;

use crate::clip::loader::read_tensors;
use crate::error::{Error, Result};

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
