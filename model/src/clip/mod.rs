//! CLIP (Radford et al., 2021) as Burn modules, generic over the backend.
//!
//! Module and parameter names follow Hugging Face transformers'
//! `modeling_clip.py` (v4.x/5.x `CLIPModel`), so its `model.safetensors`
//! loads with a transpose of the linear weights only; every other spelling
//! lives in [`loader`].

pub mod config;
pub mod loader;
pub mod model;
pub mod pickle_scan;
pub mod precision;
pub mod save;
pub mod text;
pub mod transformer;
pub mod vision;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig, HiddenAct};
pub use model::{l2_normalize, Clip};
pub use precision::Precision;
pub use transformer::{BlockHook, Encoder, NoHook};
