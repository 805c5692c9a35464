//! Multi-Modal Adapter checkpoints: the reference's `model_best.pth.tar`
//! (`torch.save({epoch, state_dict, best_acc1, optimizer})`, the whole
//! model's state dict, CLIP included) and our safetensors files, which hold
//! only the adapter under the same names and PyTorch layouts.
//!
//! | reference name (master) | cross-only branch | ours |
//! |---|---|---|
//! | `adapter.downsampler.{0,1}.{weight,bias}` | `adapter.downsampler.{weight,bias}` | `adapter.downsampler.N`, weights transposed (Burn `Linear` is `[in, out]`) |
//! | `adapter.mha.in_proj_weight` `[3w, w]`, `adapter.mha.in_proj_bias` | same | `adapter.mha.in_proj` |
//! | `adapter.mha.out_proj.{weight,bias}` | same | `adapter.mha.out_proj` |
//! | `adapter.upsampler.{0,2}.{weight,bias}` (1 is the GELU) | `adapter.upsampler.{weight,bias}` | `adapter.upsampler.N` |
//!
//! The variant comes from the keys, the widths from the shapes; the number
//! of heads is not stored (the reference's is 4) and comes from the config.
//! Everything outside `adapter.` (CLIP's tensors, `logit_scale`) is ignored:
//! CLIP comes from the user's CLIP weights.

use std::collections::BTreeMap;
use std::path::Path;

use burn_store::TensorSnapshot;

use super::checkpoint::{apply_reference_tensors, read_state_dict, reference_state};
use super::mm_adapter::{MmAdapter, MmAdapterConfig, Variant};
use super::NamedTensor;
use crate::clip::loader::Op;
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::ClipBackend;

const PREFIX: &str = "adapter.";
const MASTER_KEY: &str = "adapter.downsampler.0.weight";
const CROSS_KEY: &str = "adapter.downsampler.weight";
const IN_PROJ: &str = "adapter.mha.in_proj_weight";

/// The reference name of one of our parameters (`adapter.…` paths), and
/// whether its layout is transposed.
fn reference_key(param: &str, variant: Variant) -> Option<(String, Op)> {
    let rest = param.strip_prefix(PREFIX)?;
    let (module, leaf) = rest.rsplit_once('.')?;
    let op = if leaf == "weight" {
        Op::Transpose
    } else {
        Op::Identity
    };
    let module = match (module, variant) {
        ("mha.in_proj", _) => return Some((format!("{PREFIX}mha.in_proj_{leaf}"), op)),
        ("mha.out_proj", _) => "mha.out_proj".to_string(),
        (m, Variant::CrossOnly) => m.split('.').next()?.to_string(),
        (m, Variant::Master) => match m.split_once('.')? {
            ("upsampler", i) => format!("upsampler.{}", 2 * i.parse::<usize>().ok()?),
            (s, i) => format!("{s}.{i}"),
        },
    };
    Some((format!("{PREFIX}{module}.{leaf}"), op))
}

/// Builds the adapter around `clip` from a checkpoint (ours or the
/// reference's), with the variant and widths the checkpoint implies and
/// the heads and blend ratios of `config`.
pub fn load_mm_adapter<B: ClipBackend>(
    path: &Path,
    config: &MmAdapterConfig,
    clip: Clip<B>,
    device: &B::Device,
) -> Result<MmAdapter<B>> {
    let tensors: BTreeMap<String, TensorSnapshot> = read_state_dict(path)?
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    let variant = match (tensors.get(MASTER_KEY), tensors.get(CROSS_KEY)) {
        (Some(_), None) => Variant::Master,
        (None, Some(_)) => Variant::CrossOnly,
        _ => {
            return Err(Error::MissingTensor {
                path: path.into(),
                key: MASTER_KEY.into(),
                param: "adapter.downsampler".into(),
                hint: format!(
                    " (or `{CROSS_KEY}`); is this a Multi-Modal Adapter checkpoint \
                     (model_best.pth.tar of dqmis/clip-mma, or one saved by mmrl)?"
                ),
            })
        }
    };
    let width = match tensors.get(IN_PROJ).map(|t| t.shape.to_vec()).as_deref() {
        Some(&[rows, w]) if rows == 3 * w => w,
        Some(other) => {
            return Err(Error::ShapeMismatch {
                path: path.into(),
                key: IN_PROJ.into(),
                param: "adapter.mha.in_proj".into(),
                expected: vec![384, 128],
                found: other.to_vec(),
            })
        }
        None => {
            return Err(Error::MissingTensor {
                path: path.into(),
                key: IN_PROJ.into(),
                param: "adapter.mha.in_proj".into(),
                hint: String::new(),
            })
        }
    };
    let bottleneck = match variant {
        Variant::Master => tensors[MASTER_KEY].shape[0],
        Variant::CrossOnly => config.bottleneck,
    };
    let config = MmAdapterConfig {
        variant,
        width,
        bottleneck,
        ..config.clone()
    };
    apply_reference_tensors(
        MmAdapter::new(&config, clip, device)?,
        path,
        &tensors,
        |name| reference_key(name, variant),
        " (only the reference's block_type=\"mha\" adapter with Linear samplers is supported)",
        "Multi-Modal Adapter",
    )
}

/// The adapter's tensors under the reference names, in PyTorch layout.
pub fn mm_adapter_state<B: ClipBackend>(model: &MmAdapter<B>) -> Vec<NamedTensor> {
    let variant = model.adapter.variant();
    reference_state(model, |p| reference_key(p, variant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_names_map_to_the_references() {
        let m = |p, v| reference_key(p, v).map(|(k, _)| k);
        for (ours, master, cross) in [
            (
                "adapter.downsampler.0.weight",
                "adapter.downsampler.0.weight",
                "adapter.downsampler.weight",
            ),
            (
                "adapter.downsampler.1.bias",
                "adapter.downsampler.1.bias",
                "adapter.downsampler.bias",
            ),
            (
                "adapter.upsampler.0.weight",
                "adapter.upsampler.0.weight",
                "adapter.upsampler.weight",
            ),
            (
                "adapter.upsampler.1.bias",
                "adapter.upsampler.2.bias",
                "adapter.upsampler.bias",
            ),
            (
                "adapter.mha.in_proj.weight",
                "adapter.mha.in_proj_weight",
                "adapter.mha.in_proj_weight",
            ),
            (
                "adapter.mha.in_proj.bias",
                "adapter.mha.in_proj_bias",
                "adapter.mha.in_proj_bias",
            ),
            (
                "adapter.mha.out_proj.weight",
                "adapter.mha.out_proj.weight",
                "adapter.mha.out_proj.weight",
            ),
        ] {
            assert_eq!(m(ours, Variant::Master).as_deref(), Some(master));
            assert_eq!(m(ours, Variant::CrossOnly).as_deref(), Some(cross));
        }
        assert_eq!(m("clip.logit_scale", Variant::Master), None);
    }
}
