//! CLIP configuration: the fields and defaults of Hugging Face's `CLIPConfig`
//! (`transformers/models/clip/configuration_clip.py`), so a `config.json`
//! published with a checkpoint deserialises directly.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Activation of the MLP inside each residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// `x * sigmoid(1.702 x)`: every OpenAI CLIP checkpoint.
    #[default]
    QuickGelu,
    /// Exact (erf) GELU: some open_clip checkpoints.
    Gelu,
}

/// The text tower (`text_config` in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Number of BPE tokens. Default 49408.
    pub vocab_size: usize,
    /// Residual width. Default 512.
    pub hidden_size: usize,
    /// MLP width. Default 2048.
    pub intermediate_size: usize,
    /// Residual blocks. Default 12.
    pub num_hidden_layers: usize,
    /// Attention heads. Default 8.
    pub num_attention_heads: usize,
    /// Context length. Default 77.
    pub max_position_embeddings: usize,
    /// MLP activation. Default `quick_gelu`.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon. Default 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// The vision tower (`vision_config` in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Residual width. Default 768.
    pub hidden_size: usize,
    /// MLP width. Default 3072.
    pub intermediate_size: usize,
    /// Residual blocks. Default 12.
    pub num_hidden_layers: usize,
    /// Attention heads. Default 12.
    pub num_attention_heads: usize,
    /// Input resolution (square). Default 224.
    pub image_size: usize,
    /// Patch size of the stem convolution. Default 32.
    pub patch_size: usize,
    /// Input channels. Default 3.
    pub num_channels: usize,
    /// MLP activation. Default `quick_gelu`.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon. Default 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches along one side of the image.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens in the vision sequence: class token plus patches.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }
}

/// A whole CLIP model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// Text tower.
    pub text_config: ClipTextConfig,
    /// Vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the shared embedding space. Default 512.
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (a log temperature). Default ln(1/0.07) = 2.6592.
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    /// OpenAI ViT-B/32 (`openai/clip-vit-base-patch32`).
    pub fn vit_b32() -> Self {
        Self::default()
    }

    /// OpenAI ViT-B/16 (`openai/clip-vit-base-patch16`).
    pub fn vit_b16() -> Self {
        let mut c = Self::default();
        c.vision_config.patch_size = 16;
        c
    }

    /// OpenAI ViT-L/14 (`openai/clip-vit-large-patch14`).
    pub fn vit_l14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                patch_size: 14,
                ..ClipVisionConfig::default()
            },
            projection_dim: 768,
            ..Self::default()
        }
    }

    /// OpenAI ViT-L/14@336px (`openai/clip-vit-large-patch14-336`).
    pub fn vit_l14_336() -> Self {
        let mut c = Self::vit_l14();
        c.vision_config.image_size = 336;
        c
    }

    /// A small CLIP of the standard layout: both towers `width` wide (MLP
    /// 4 × width) and `layers` deep with `heads` heads, projection `width`;
    /// the text tower keeps CLIP's vocabulary and context length.
    pub fn small(
        width: usize,
        layers: usize,
        heads: usize,
        image_size: usize,
        patch_size: usize,
    ) -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: width,
                intermediate_size: 4 * width,
                num_hidden_layers: layers,
                num_attention_heads: heads,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: width,
                intermediate_size: 4 * width,
                num_hidden_layers: layers,
                num_attention_heads: heads,
                image_size,
                patch_size,
                ..ClipVisionConfig::default()
            },
            projection_dim: width,
            ..Self::default()
        }
    }

    /// A preset by its usual name: `ViT-B/32`, `ViT-B/16`, `ViT-L/14`,
    /// `ViT-L/14@336px` (case and `-`/`/` insensitive).
    pub fn preset(name: &str) -> Option<Self> {
        let key: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '@')
            .collect::<String>()
            .to_ascii_lowercase();
        match key.as_str() {
            "vitb32" => Some(Self::vit_b32()),
            "vitb16" => Some(Self::vit_b16()),
            "vitl14" => Some(Self::vit_l14()),
            "vitl14@336px" | "vitl14@336" | "vitl14336" => Some(Self::vit_l14_336()),
            _ => None,
        }
    }

    /// Reads a Hugging Face `config.json`. Fields it omits take HF's defaults.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate().map_err(|msg| Error::InvalidConfig {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(config)
    }

    /// Checks that the numbers describe a buildable model.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if self.projection_dim == 0 || t.vocab_size == 0 || t.max_position_embeddings == 0 {
            return Err(
                "projection_dim, vocab_size and max_position_embeddings must be > 0".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_sizes() {
        let b16 = ClipConfig::preset("ViT-B/16").unwrap();
        assert_eq!(b16.vision_config.num_positions(), 197);
        assert_eq!(
            ClipConfig::preset("vit-b-32")
                .unwrap()
                .vision_config
                .num_positions(),
            50
        );
        let l336 = ClipConfig::preset("ViT-L/14@336px").unwrap();
        assert_eq!(l336.vision_config.num_positions(), 577);
        assert_eq!(l336.projection_dim, 768);
        assert!(ClipConfig::preset("RN50").is_none());
    }

    #[test]
    fn hf_json_omitted_fields_take_hf_defaults() {
        let c: ClipConfig = serde_json::from_str(
            r#"{"projection_dim": 48, "text_config": {"hidden_size": 64, "num_attention_heads": 1},
                "vision_config": {"patch_size": 16, "unknown_field": 1}, "architectures": ["CLIPModel"]}"#,
        )
        .unwrap();
        assert_eq!(c.text_config.hidden_size, 64);
        assert_eq!(c.text_config.max_position_embeddings, 77);
        assert_eq!(c.vision_config.patch_size, 16);
        assert_eq!(c.vision_config.hidden_size, 768);
        assert_eq!(c.projection_dim, 48);
        assert!(c.validate().is_ok());
    }
}
