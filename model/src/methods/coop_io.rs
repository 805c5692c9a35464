//! CoOp checkpoints: the reference trainer's Dassl checkpoints
//! (`prompt_learner/model.pth.tar-N`: a `torch.save`d dict whose `state_dict`
//! is the prompt learner's, `ctx` plus the `token_prefix`/`token_suffix`
//! buffers, next to the optimizer and scheduler states) and our own
//! safetensors files.
//!
//! | name | shape (PyTorch) | ours |
//! |---|---|---|
//! | `ctx` (Dassl file) or `prompt_learner.ctx` (ours, as in `CustomCLIP.state_dict()`) | `[n_ctx, width]`, or `[classes, n_ctx, width]` with CSC | [`CoopContext`], same layout |
//! | `token_prefix`, `token_suffix` | `[classes, 1, width]`, `[classes, 77 − 1 − n_ctx, width]` | ignored, as `CoOp.load_model` does: they are rebuilt from the current class names |
//!
//! The number of context tokens and whether they are class-specific come
//! from `ctx`'s shape; the class token position is not stored by the
//! reference and must be given.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn_store::TensorSnapshot;

use super::checkpoint::{read_state_dict, save_f32_safetensors};
use super::coop::{ClassTokenPosition, Coop, CoopConfig, CoopContext};
use crate::clip::loader::{convert, Op};
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::ClipBackend;

/// The context's name in our files (and in `CustomCLIP.state_dict()`).
pub const CTX_KEY: &str = "prompt_learner.ctx";
/// Names that hold the context in a checkpoint.
const CTX_KEYS: [&str; 2] = ["ctx", CTX_KEY];
/// The prompt learner's buffers, which the reference saves and ignores on load.
const IGNORED: [&str; 4] = [
    "token_prefix",
    "token_suffix",
    "prompt_learner.token_prefix",
    "prompt_learner.token_suffix",
];

/// The context read from a CoOp checkpoint, in the reference layout.
#[derive(Debug, Clone)]
pub struct CoopCheckpoint {
    /// `[n_ctx, width]` or `[classes, n_ctx, width]`, f32.
    pub ctx: TensorData,
}

impl CoopCheckpoint {
    /// Number of context tokens.
    pub fn n_ctx(&self) -> usize {
        self.ctx.shape[self.ctx.shape.len() - 2]
    }

    /// Whether the context is class-specific (rank 3).
    pub fn csc(&self) -> bool {
        self.ctx.shape.len() == 3
    }

    /// The configuration the checkpoint implies (its `n_ctx` and `csc`).
    pub fn config(&self, class_token_position: ClassTokenPosition) -> CoopConfig {
        CoopConfig {
            n_ctx: self.n_ctx(),
            csc: self.csc(),
            class_token_position,
            ..CoopConfig::default()
        }
    }
}

/// Reads the context of a reference Dassl checkpoint or of one of ours,
/// refusing files with other tensors.
pub fn read_coop_checkpoint(path: &Path) -> Result<CoopCheckpoint> {
    let tensors: BTreeMap<String, TensorSnapshot> = read_state_dict(path)?;
    let found: Vec<&str> = CTX_KEYS
        .into_iter()
        .filter(|k| tensors.contains_key(*k))
        .collect();
    let key = match found[..] {
        [key] => key,
        [] => {
            return Err(Error::MissingTensor {
                path: path.into(),
                key: CTX_KEY.into(),
                param: "ctx".into(),
                hint: "; is this a CoOp checkpoint (prompt_learner/model.pth.tar-N of \
                       KaiyangZhou/CoOp, or one saved by mmrl)?"
                    .into(),
            })
        }
        _ => {
            return Err(Error::UnexpectedTensors {
                path: path.into(),
                keys: format!("{found:?} (two contexts)"),
            })
        }
    };
    let unused: Vec<&String> = tensors
        .keys()
        .filter(|k| k.as_str() != key && !IGNORED.contains(&k.as_str()))
        .collect();
    if !unused.is_empty() {
        return Err(Error::UnexpectedTensors {
            path: path.into(),
            keys: format!("{unused:?}"),
        });
    }
    let (values, shape) = convert(path, key, &tensors[key], &Op::Identity)?;
    if !(2..=3).contains(&shape.len()) || shape.contains(&0) {
        return Err(Error::ShapeMismatch {
            path: path.into(),
            key: key.into(),
            param: "ctx".into(),
            expected: vec![16, 512],
            found: shape,
        });
    }
    Ok(CoopCheckpoint {
        ctx: TensorData::new(values, shape),
    })
}

/// Builds CoOp around `clip` from a checkpoint, checking the context width
/// against the text tower.
pub fn load_coop<B: ClipBackend>(
    path: &Path,
    clip: Clip<B>,
    class_token_position: ClassTokenPosition,
    device: &B::Device,
) -> Result<Coop<B>> {
    let ckpt = read_coop_checkpoint(path)?;
    let width = clip.text_model.final_layer_norm.gamma.dims()[0];
    let shape = ckpt.ctx.shape.to_vec();
    if shape[shape.len() - 1] != width {
        let mut expected = shape.clone();
        *expected.last_mut().unwrap_or(&mut 0) = width;
        return Err(Error::ShapeMismatch {
            path: path.into(),
            key: CTX_KEY.into(),
            param: "ctx (its last dimension is the CLIP text width)".into(),
            expected,
            found: shape,
        });
    }
    let ctx = CoopContext::from_data(ckpt.ctx, device).map_err(|msg| Error::WeightsFormat {
        path: path.into(),
        msg,
    })?;
    Ok(Coop::new(clip, ctx, class_token_position))
}

/// The trainable tensor under its reference name, in PyTorch layout.
pub fn coop_state<B: ClipBackend>(model: &Coop<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let data = model.ctx.to_data().convert::<f32>();
    let shape = data.shape.to_vec();
    vec![(
        CTX_KEY.to_string(),
        shape,
        data.to_vec().unwrap_or_default(),
    )]
}

/// Saves the context as safetensors (`prompt_learner.ctx`), atomically.
pub fn save_coop_safetensors<B: ClipBackend>(model: &Coop<B>, path: &Path) -> Result<()> {
    save_f32_safetensors(path, coop_state(model), None)
}
