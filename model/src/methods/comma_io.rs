//! COMMA checkpoints: the reference's Dassl checkpoints
//! (`MultiModalPromptLearner/model.pth.tar-N`: the whole model's state dict
//! under `state_dict`, next to the optimizer and scheduler) and our
//! safetensors files, which hold the prompt learner under the same names and
//! PyTorch layouts.
//!
//! | reference name | ours |
//! |---|---|
//! | `prompt_learner.ctx` `[n_ctx, tw]` | same |
//! | `prompt_learner.proj.{weight,bias}` (`[vw, tw]`) | same, weight transposed (Burn `Linear` is `[in, out]`) |
//! | `prompt_learner.compound_prompts_text` `[depth−1, n_ctx, tw]` | same |
//! | `prompt_learner.compound_prompt_projections_image_base.{fc,mlp.0,mlp.2}.{weight,bias}`, `.ln.{weight,bias}` | `…mlp_0`, `…mlp_2`; LayerNorm `gamma`/`beta` |
//! | `prompt_learner.compound_prompt_projections_image.N.*` | same |
//! | `prompt_learner.compound_prompts_image` | written (the generated prompts), ignored on load: the forward regenerates them |
//! | `prompt_learner.token_prefix` / `token_suffix` | dropped: they belong to the training class names (the reference drops them on load too) |
//!
//! The depth comes from `compound_prompts_text`, `n_ctx` and the widths from
//! the shapes (the reference hard-codes ViT-B/16's 512 and 768). Everything
//! outside `prompt_learner.` (the copies of CLIP) is ignored: CLIP comes from
//! the user's CLIP weights. The reference stores `ctx`, `proj` and the base
//! generator in fp16; they are read as f32.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn_store::TensorSnapshot;

use super::checkpoint::{apply_reference_tensors, read_state_dict, reference_state};
use super::comma::{Comma, CommaConfig};
use super::NamedTensor;
use crate::clip::loader::Op;
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::ClipBackend;

const PREFIX: &str = "prompt_learner.";
const TEXT_PROMPTS: &str = "prompt_learner.compound_prompts_text";
const IMAGE_PROMPTS: &str = "prompt_learner.compound_prompts_image";
/// Class-dependent or regenerated: never loaded.
const SKIPPED: [&str; 3] = [
    "prompt_learner.token_prefix",
    "prompt_learner.token_suffix",
    IMAGE_PROMPTS,
];

/// The reference name of one of our parameters, and its layout.
fn reference_key(param: &str) -> Option<(String, Op)> {
    let rest = param.strip_prefix(PREFIX)?;
    if rest == "ctx" || rest == "compound_prompts_text" {
        return Some((param.to_string(), Op::Identity));
    }
    let (module, leaf) = rest.rsplit_once('.')?;
    let (leaf, op) = match leaf {
        "weight" => ("weight", Op::Transpose),
        "bias" => ("bias", Op::Identity),
        "gamma" => ("weight", Op::Identity),
        "beta" => ("bias", Op::Identity),
        _ => return None,
    };
    let module = module.replace("mlp_0", "mlp.0").replace("mlp_2", "mlp.2");
    Some((format!("{PREFIX}{module}.{leaf}"), op))
}

/// COMMA around `clip` from a checkpoint (ours or the reference's), with the
/// depth and `n_ctx` the checkpoint implies and the other settings of
/// `config`.
pub fn load_comma<B: ClipBackend>(
    path: &Path,
    clip: Clip<B>,
    config: &CommaConfig,
    device: &B::Device,
) -> Result<Comma<B>> {
    let tensors: BTreeMap<String, TensorSnapshot> = read_state_dict(path)?
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && !SKIPPED.contains(&k.as_str()))
        .collect();
    let (depth, n_ctx) = match tensors
        .get(TEXT_PROMPTS)
        .map(|t| t.shape.to_vec())
        .as_deref()
    {
        Some(&[d, n, _]) => (d + 1, n),
        Some(other) => {
            return Err(Error::ShapeMismatch {
                path: path.into(),
                key: TEXT_PROMPTS.into(),
                param: TEXT_PROMPTS.into(),
                expected: vec![8, 2, 512],
                found: other.to_vec(),
            })
        }
        None => {
            return Err(Error::MissingTensor {
                path: path.into(),
                key: TEXT_PROMPTS.into(),
                param: TEXT_PROMPTS.into(),
                hint: "; is this a COMMA checkpoint (MultiModalPromptLearner/model.pth.tar-N of \
                       hulianyuyy/COMMA, or one saved by mmrl)?"
                    .into(),
            })
        }
    };
    let text_depth = clip.text_model.encoder.depth();
    let vision_depth = clip.vision_model.encoder.depth();
    if depth > text_depth.min(vision_depth) {
        return Err(Error::ShapeMismatch {
            path: path.into(),
            key: TEXT_PROMPTS.into(),
            param: format!(
                "prompts for {depth} layers, but this CLIP has {} (load it with the CLIP it was \
                 trained on)",
                text_depth.min(vision_depth)
            ),
            expected: vec![text_depth.min(vision_depth) - 1, n_ctx],
            found: tensors[TEXT_PROMPTS].shape.to_vec(),
        });
    }
    let config = CommaConfig {
        n_ctx,
        prompt_depth: depth,
        ..config.clone()
    };
    let ids = Tensor::zeros([n_ctx], device);
    let model = config.init(clip, ids, device);
    apply_reference_tensors(
        model,
        path,
        &tensors,
        reference_key,
        " (a COMMA checkpoint of another depth or design?)",
        "COMMA",
    )
}

/// The prompt learner's tensors under the reference names, in PyTorch
/// layout, with the generated vision prompts as `compound_prompts_image`.
pub fn comma_state<B: ClipBackend>(model: &Comma<B>) -> Vec<NamedTensor> {
    let mut out = reference_state(model, reference_key);
    if let Some(v) = model.vision_prompts() {
        let data = v.into_data().convert::<f32>();
        out.push((
            IMAGE_PROMPTS.into(),
            data.shape.to_vec(),
            data.to_vec().unwrap_or_default(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_names_map_to_the_references() {
        let m = |p| reference_key(p).map(|(k, _)| k);
        for (ours, theirs) in [
            ("prompt_learner.ctx", "prompt_learner.ctx"),
            ("prompt_learner.proj.weight", "prompt_learner.proj.weight"),
            (
                "prompt_learner.compound_prompts_text",
                "prompt_learner.compound_prompts_text",
            ),
            (
                "prompt_learner.compound_prompt_projections_image_base.mlp_0.weight",
                "prompt_learner.compound_prompt_projections_image_base.mlp.0.weight",
            ),
            (
                "prompt_learner.compound_prompt_projections_image.3.mlp_2.bias",
                "prompt_learner.compound_prompt_projections_image.3.mlp.2.bias",
            ),
            (
                "prompt_learner.compound_prompt_projections_image.0.ln.gamma",
                "prompt_learner.compound_prompt_projections_image.0.ln.weight",
            ),
        ] {
            assert_eq!(m(ours).as_deref(), Some(theirs));
        }
        assert_eq!(m("clip.logit_scale"), None);
    }
}
