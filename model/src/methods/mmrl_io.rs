//! MMRL checkpoints: the reference implementation's Dassl checkpoints
//! (`model.pth.tar-N`: a `torch.save`d dict whose `state_dict` holds the whole
//! model) and our own safetensors files, which use the same tensor names and
//! PyTorch layouts so that checkpoints carry over both ways.
//!
//! | reference name | shape (PyTorch) | ours |
//! |---|---|---|
//! | `representation_learner.compound_rep_tokens` | `[K, d_r]` | same |
//! | `representation_learner.compound_rep_tokens_r2vproj.N.weight` | `[vision width, d_r]` | same, transposed (Burn `Linear` is `[in, out]`) |
//! | `representation_learner.compound_rep_tokens_r2vproj.N.bias` | `[vision width]` | same |
//! | `representation_learner.compound_rep_tokens_r2tproj.N.{weight,bias}` | text width | as above |
//! | `image_encoder.proj_rep` | `[vision width, projection_dim]` | `proj_rep`, as is (used as `x @ proj_rep`) |
//!
//! Everything else in a reference checkpoint (the frozen CLIP tensors under
//! `image_encoder.*`/`text_encoder.*`, the `prompt_embeddings` buffer) is
//! ignored: CLIP comes from the user's CLIP weights.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn_store::TensorSnapshot;

use super::checkpoint::{apply_reference_tensors, read_state_dict, save_f32_safetensors};
use super::mmrl::{Mmrl, MmrlConfig};
use crate::clip::loader::{transpose, Op};
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::ClipBackend;

const PREFIX: &str = "representation_learner.";
const R: &str = "representation_learner.compound_rep_tokens";
const R2V: &str = "representation_learner.compound_rep_tokens_r2vproj";
const R2T: &str = "representation_learner.compound_rep_tokens_r2tproj";
const PROJ_REP: &str = "image_encoder.proj_rep";

/// The trainable tensors of an MMRL checkpoint, by reference name.
pub struct MmrlCheckpoint {
    pub tensors: BTreeMap<String, TensorSnapshot>,
    /// K, from `compound_rep_tokens`.
    pub n_rep_tokens: usize,
    /// d_r, from `compound_rep_tokens`.
    pub rep_dim: usize,
    /// Number of injected layers, from the aligners.
    pub n_layers: usize,
}

/// Reads the trainable MMRL tensors of a reference Dassl checkpoint or of one
/// of ours; K, d_r and the number of injected layers come from the shapes.
pub fn read_mmrl_checkpoint(path: &Path) -> Result<MmrlCheckpoint> {
    // Dassl checkpoints keep the model under `state_dict`, next to the
    // optimizer and scheduler states.
    let tensors: BTreeMap<String, TensorSnapshot> = read_state_dict(path)?
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) || k == PROJ_REP)
        .collect();
    let r = tensors.get(R).ok_or_else(|| Error::MissingTensor {
        path: path.into(),
        key: R.into(),
        param: "representation_learner.compound_rep_tokens".into(),
        hint: "; is this an MMRL checkpoint (model.pth.tar-N of yunncheng/MMRL, or one saved by mmrl)?"
            .into(),
    })?;
    let shape = r.shape.to_vec();
    let [n_rep_tokens, rep_dim] = shape[..] else {
        return Err(Error::ShapeMismatch {
            path: path.into(),
            key: R.into(),
            param: "representation_learner.compound_rep_tokens".into(),
            expected: vec![5, 512],
            found: shape,
        });
    };
    let n_layers = tensors
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{R2V}.")))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0);
    if n_layers == 0 {
        return Err(Error::MissingTensor {
            path: path.into(),
            key: format!("{R2V}.0.weight"),
            param: "the vision aligners".into(),
            hint: String::new(),
        });
    }
    Ok(MmrlCheckpoint {
        tensors,
        n_rep_tokens,
        rep_dim,
        n_layers,
    })
}

impl MmrlCheckpoint {
    /// The MMRL configuration the checkpoint implies: its K and d_r, and
    /// `rep_layers` if given (1-based), else its last `n_layers` layers of the
    /// shallower tower.
    pub fn config(
        &self,
        clip_depth: usize,
        rep_layers: Option<Vec<usize>>,
        alpha: f64,
    ) -> MmrlConfig {
        let layers = rep_layers.unwrap_or_else(|| {
            ((clip_depth + 1).saturating_sub(self.n_layers)..=clip_depth).collect()
        });
        MmrlConfig {
            n_rep_tokens: self.n_rep_tokens,
            rep_dim: self.rep_dim,
            rep_layers: Some(layers),
            alpha,
            ..MmrlConfig::default()
        }
    }
}

/// Where each of our trainable parameters lives in a checkpoint.
fn reference_source(param: &str) -> Option<(String, Op)> {
    if param == "proj_rep" {
        return Some((PROJ_REP.into(), Op::Identity));
    }
    let rest = param.strip_prefix(PREFIX)?;
    let op = if rest.ends_with(".weight") {
        Op::Transpose
    } else {
        Op::Identity
    };
    Some((format!("{PREFIX}{rest}"), op))
}

/// Builds MMRL around `clip` from a checkpoint, checking every trainable
/// tensor's presence and shape and that none is left unused.
pub fn load_mmrl<B: ClipBackend>(
    path: &Path,
    clip: Clip<B>,
    rep_layers: Option<Vec<usize>>,
    alpha: f64,
    device: &B::Device,
) -> Result<Mmrl<B>> {
    let ckpt = read_mmrl_checkpoint(path)?;
    let depth = clip
        .text_model
        .encoder
        .depth()
        .min(clip.vision_model.encoder.depth());
    let config = ckpt.config(depth, rep_layers, alpha);
    let layers = config.layers(depth, depth);
    if layers.len() != ckpt.n_layers {
        return Err(Error::InvalidConfig {
            path: path.into(),
            msg: format!(
                "the checkpoint has aligners for {} layers but {} layers were given ({layers:?})",
                ckpt.n_layers,
                layers.len()
            ),
        });
    }
    config.validate(depth, depth)?;
    apply_reference_tensors(
        config.init(clip, device),
        path,
        &ckpt.tensors,
        reference_source,
        "",
        "MMRL",
    )
}

/// The trainable tensors under the reference names, in PyTorch layout.
pub fn mmrl_state<B: ClipBackend>(model: &Mmrl<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let to_vec = |t: Tensor<B, 2>| -> (Vec<usize>, Vec<f32>) {
        let dims = t.dims().to_vec();
        (
            dims,
            t.into_data().convert::<f32>().to_vec().unwrap_or_default(),
        )
    };
    let rl = &model.representation_learner;
    let (shape, values) = to_vec(rl.compound_rep_tokens.val());
    out.push((R.to_string(), shape, values));
    for (prefix, linears) in [
        (R2V, &rl.compound_rep_tokens_r2vproj),
        (R2T, &rl.compound_rep_tokens_r2tproj),
    ] {
        for (i, l) in linears.iter().enumerate() {
            let (shape, values) = to_vec(l.weight.val());
            // Burn [in, out] -> PyTorch [out, in].
            out.push((
                format!("{prefix}.{i}.weight"),
                vec![shape[1], shape[0]],
                transpose(&values, shape[0], shape[1]),
            ));
            if let Some(b) = &l.bias {
                let b = b.val();
                let n = b.dims()[0];
                out.push((
                    format!("{prefix}.{i}.bias"),
                    vec![n],
                    b.into_data().convert::<f32>().to_vec().unwrap_or_default(),
                ));
            }
        }
    }
    let (shape, values) = to_vec(model.proj_rep.val());
    out.push((PROJ_REP.to_string(), shape, values));
    out
}

/// Saves the trainable tensors as safetensors under the reference names,
/// atomically (a temporary file renamed into place).
pub fn save_mmrl_safetensors<B: ClipBackend>(model: &Mmrl<B>, path: &Path) -> Result<()> {
    save_f32_safetensors(path, mmrl_state(model), None)
}
