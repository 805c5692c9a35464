//! The vision tower: patch embedding, class token, positional embedding,
//! `pre_layrnorm`, the transformer, `post_layernorm` on the class token.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

use super::config::ClipVisionConfig;
use super::text::CLIP_EMBEDDING_INIT;
use super::transformer::{BlockHook, Encoder, EncoderConfig, NoHook};
use crate::ClipBackend;

/// Patch, class and positional embeddings (`vision_model.embeddings`).
#[derive(Module, Debug)]
pub struct VisionEmbeddings<B: Backend> {
    /// `[width]`
    pub class_embedding: Param<Tensor<B, 1>>,
    /// Stem convolution, kernel = stride = patch, no bias: weight `[width, 3, patch, patch]`.
    pub patch_embedding: Conv2d<B>,
    /// `[1 + patches, width]`
    pub position_embedding: Embedding<B>,
    pub patch_size: usize,
}

/// CLIP's vision transformer (`vision_model`).
#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    pub embeddings: VisionEmbeddings<B>,
    /// (sic: Hugging Face's spelling.)
    pub pre_layrnorm: LayerNorm<B>,
    pub encoder: Encoder<B>,
    pub post_layernorm: LayerNorm<B>,
}

impl ClipVisionConfig {
    /// Builds the vision tower with random weights.
    pub fn init<B: ClipBackend>(&self, device: &B::Device) -> ClipVisionTransformer<B> {
        let w = self.hidden_size;
        let p = self.patch_size;
        let ln = || {
            LayerNormConfig::new(w)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        ClipVisionTransformer {
            embeddings: VisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::random(
                    [w],
                    Distribution::Normal(0.0, 1.0 / (w as f64).sqrt()),
                    device,
                )),
                patch_embedding: Conv2dConfig::new([self.num_channels, w], [p, p])
                    .with_stride([p, p])
                    .with_bias(false)
                    .with_initializer(CLIP_EMBEDDING_INIT)
                    .init(device),
                position_embedding: EmbeddingConfig::new(self.num_positions(), w)
                    .with_initializer(CLIP_EMBEDDING_INIT)
                    .init(device),
                patch_size: p,
            },
            pre_layrnorm: ln(),
            encoder: self.encoder_config().init(device),
            post_layernorm: ln(),
        }
    }

    /// The transformer's shape.
    pub fn encoder_config(&self) -> EncoderConfig {
        EncoderConfig {
            width: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            act: self.hidden_act,
            eps: self.layer_norm_eps,
        }
    }
}

impl<B: ClipBackend> VisionEmbeddings<B> {
    /// Patches as one matrix product (the stem convolution has kernel =
    /// stride), then the class token and positional embeddings.
    ///
    /// # Shapes
    /// - `images`: `[batch, channels, size, size]`
    /// - output: `[batch, 1 + patches, width]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, channels, height, width_px] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (height / p, width_px / p);
        let weight = self.patch_embedding.weight.val(); // [width, channels, p, p]
        let [width, ..] = weight.dims();
        // [batch, c, gh, p, gw, p] -> [batch, gh, gw, c, p, p] -> [batch·patches, c·p·p]
        let patches = images
            .reshape([batch, channels, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch * gh * gw, channels * p * p]);
        let w = weight.reshape([width, channels * p * p]).transpose();
        let x = patches.matmul(w).reshape([batch, gh * gw, width]);
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, width])
            .expand([batch, 1, width]);
        let x = Tensor::cat(vec![cls, x], 1);
        x + self.position_embedding.weight.val().unsqueeze_dim(0)
    }
}

impl<B: ClipBackend> ClipVisionTransformer<B> {
    /// Embeddings and `pre_layrnorm`: the input of the first block.
    ///
    /// # Shapes
    /// - `images`: `[batch, channels, size, size]`
    /// - output: `[batch, 1 + patches, width]`
    pub fn embed(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        self.pre_layrnorm.forward(self.embeddings.forward(images))
    }

    /// Every block with a hook; returns the last hidden state.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - output: `[batch, seq', width]`
    pub fn forward_embedded_with(
        &self,
        x: Tensor<B, 3>,
        hook: &mut impl BlockHook<B>,
    ) -> Tensor<B, 3> {
        self.encoder
            .forward_range(x, 0..self.encoder.depth(), false, hook)
    }

    /// `post_layernorm` of the class token.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, width]`
    /// - output: `[batch, width]`
    pub fn pool(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, width] = hidden.dims();
        self.post_layernorm
            .forward(hidden.narrow(1, 0, 1).reshape([batch, width]))
    }

    /// Pooled, unprojected image features.
    ///
    /// # Shapes
    /// - `images`: `[batch, channels, size, size]`
    /// - output: `[batch, width]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.pool(self.forward_embedded_with(self.embed(images), &mut NoHook))
    }
}
