//! Our checkpoints: a method's trained tensors (the reference's names and
//! PyTorch layouts) in a safetensors file whose header describes the run,
//! so that `mmrl eval` and `mmrl predict` need nothing else: the method and
//! its full config, the dataset, protocol, template, class names, few-shot
//! draw, and the SHA-256 of the CLIP weights it was trained on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Protocol, TrainConfig};
use crate::{Error, Result};

/// What a checkpoint says about itself (its safetensors `__metadata__`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// The method's registry name.
    pub method: String,
    /// The method's settings as JSON (its config type).
    pub method_config: serde_json::Value,
    /// The training dataset (Dassl's name).
    pub dataset: String,
    pub protocol: Option<Protocol>,
    /// The prompt template the run used.
    pub template: String,
    /// The training classes, in label order.
    pub classes: Vec<String>,
    /// The few-shot draw that defines the classes (`shots`, `seed`).
    pub shots: Option<usize>,
    pub seed: Option<u64>,
    /// SHA-256 of the CLIP weights (see [`clip_hash`]).
    pub clip_sha256: String,
    /// The whole run config, TOML.
    pub train_config: String,
}

/// SHA-256 of the CLIP weights a checkpoint belongs to (the weights file,
/// and `config.json` for a Hugging Face folder).
pub fn clip_hash(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        ["model.safetensors", "pytorch_model.bin", "config.json"]
            .iter()
            .map(|f| path.join(f))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| mmrl_data::Error::io(&f, e))?;
        std::io::copy(&mut file, &mut h).map_err(|e| mmrl_data::Error::io(&f, e))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

impl CheckpointHeader {
    /// The header of a run's checkpoint.
    pub fn new(cfg: &TrainConfig, method_config: serde_json::Value, dataset: &str) -> Self {
        CheckpointHeader {
            method: cfg.method.clone(),
            method_config,
            dataset: dataset.into(),
            protocol: Some(cfg.protocol),
            template: cfg.template.clone(),
            classes: Vec::new(),
            shots: Some(cfg.shots),
            seed: None,
            clip_sha256: String::new(),
            train_config: cfg.to_toml(),
        }
    }

    fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".into(), "mmrl".into());
        m.insert("method".into(), self.method.clone());
        m.insert("method_config".into(), self.method_config.to_string());
        // Read by older mmrl versions.
        m.insert(
            format!("{}_config", self.method),
            self.method_config.to_string(),
        );
        m.insert("dataset".into(), self.dataset.clone());
        if let Some(p) = self.protocol {
            m.insert("protocol".into(), p.name().into());
        }
        m.insert("template".into(), self.template.clone());
        m.insert(
            "classes".into(),
            serde_json::to_string(&self.classes).expect("strings serialise"),
        );
        if let Some(s) = self.shots {
            m.insert("shots".into(), s.to_string());
        }
        if let Some(s) = self.seed {
            m.insert("seed".into(), s.to_string());
        }
        m.insert("clip_sha256".into(), self.clip_sha256.clone());
        m.insert("train_config".into(), self.train_config.clone());
        m
    }

    fn from_metadata(path: &Path, m: &HashMap<String, String>) -> Result<Self> {
        let bad = |what, msg: String| Error::BadCheckpointHeader {
            path: path.into(),
            what,
            msg,
        };
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        let method = get("method");
        let config_text = m
            .get("method_config")
            .or_else(|| m.get(&format!("{method}_config")));
        let method_config = match config_text {
            Some(t) => {
                serde_json::from_str(t).map_err(|e| bad("a method config", e.to_string()))?
            }
            None => serde_json::Value::Null,
        };
        let protocol = match m.get("protocol") {
            Some(p) => Some(
                Protocol::parse(p).ok_or_else(|| bad("a protocol", format!("unknown {p:?}")))?,
            ),
            None => None,
        };
        let classes = match m.get("classes") {
            Some(t) => serde_json::from_str(t).map_err(|e| bad("class names", e.to_string()))?,
            None => Vec::new(),
        };
        let num = |k: &'static str| -> Result<Option<u64>> {
            m.get(k)
                .map(|v| v.parse::<u64>().map_err(|e| bad(k, e.to_string())))
                .transpose()
        };
        Ok(CheckpointHeader {
            method,
            method_config,
            dataset: get("dataset"),
            protocol,
            template: get("template"),
            classes,
            shots: num("shots")?.map(|s| s as usize),
            seed: num("seed")?,
            clip_sha256: get("clip_sha256"),
            train_config: get("train_config"),
        })
    }
}

/// Writes a method's trained tensors with `header`, atomically.
pub fn save_checkpoint(
    path: &Path,
    state: Vec<mmrl_model::methods::NamedTensor>,
    header: &CheckpointHeader,
) -> Result<()> {
    mmrl_model::methods::checkpoint::save_f32_safetensors(path, state, Some(header.to_metadata()))?;
    Ok(())
}

/// Reads a checkpoint's header before it is used. `None`: a file that is
/// not ours (the reference's `model.pth.tar-N`, a plain state dict).
/// When it records the CLIP weights' hash, they must be the ones given.
pub fn read_header(checkpoint: &Path, clip: &Path) -> Result<Option<CheckpointHeader>> {
    let is_st = checkpoint.extension().is_some_and(|e| e == "safetensors");
    if !is_st {
        return Ok(None);
    }
    let bytes = std::fs::read(checkpoint).map_err(|e| mmrl_data::Error::io(checkpoint, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::BadCheckpoint {
            path: checkpoint.into(),
            msg: e.to_string(),
        })?;
    let Some(meta) = meta.metadata() else {
        return Ok(None);
    };
    if meta.get("format").map(String::as_str) != Some("mmrl") {
        return Ok(None);
    }
    let header = CheckpointHeader::from_metadata(checkpoint, meta)?;
    if !header.clip_sha256.is_empty() {
        let have = clip_hash(clip)?;
        if header.clip_sha256 != have {
            return Err(Error::OtherClip {
                path: checkpoint.into(),
                clip: clip.into(),
                want: header.clip_sha256[..header.clip_sha256.len().min(12)].into(),
                have: have[..12].into(),
            });
        }
    }
    Ok(Some(header))
}

/// The settings to load a method from `checkpoint` with: what its header
/// records (the defaults for a checkpoint without one, the reference's),
/// then `sets` (`key=value`), which win with a printed notice.
pub fn method_settings<C: mmrl_model::methods::MethodConfig>(
    checkpoint: &Path,
    header: Option<&CheckpointHeader>,
    method: &str,
    sets: &[String],
) -> Result<C> {
    let recorded: C = match header.map(|h| &h.method_config) {
        Some(v) if !v.is_null() => {
            serde_json::from_value(v.clone()).map_err(|e| Error::BadCheckpointHeader {
                path: checkpoint.into(),
                what: "method settings",
                msg: e.to_string(),
            })?
        }
        _ => C::default(),
    };
    let settings = crate::config::override_settings(&recorded, method, sets)?;
    if header.is_some() && settings != recorded {
        eprintln!(
            "note: {} override the settings recorded in {}",
            sets.join(" "),
            checkpoint.display()
        );
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_safetensors_metadata() {
        let cfg = TrainConfig::default();
        let mut h = CheckpointHeader::new(&cfg, serde_json::json!({"alpha": 0.2}), "ImageNet");
        h.classes = vec!["tench".into(), "goldfish, \"carassius\"".into()];
        h.seed = Some(3);
        let back = CheckpointHeader::from_metadata(Path::new("x"), &h.to_metadata()).unwrap();
        assert_eq!(back, h);
        let mut m = h.to_metadata();
        m.insert("classes".into(), "not json".into());
        let e = CheckpointHeader::from_metadata(Path::new("x.safetensors"), &m)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.safetensors") && e.contains("class names"),
            "{e}"
        );
    }
}
