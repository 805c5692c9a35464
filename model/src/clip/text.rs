//! The text tower: token and positional embeddings, the causal transformer,
//! `final_layer_norm`, pooling at the end-of-text token.

use burn::module::Initializer;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::prelude::*;

use super::config::ClipTextConfig;
use super::transformer::{BlockHook, Encoder, EncoderConfig, NoHook};
use crate::ClipBackend;

/// Token and position embeddings start as `N(0, 0.02)` (transformers' `initializer_range`).
pub const CLIP_EMBEDDING_INIT: Initializer = Initializer::Normal {
    mean: 0.0,
    std: 0.02,
};

/// Token and positional embeddings (`text_model.embeddings`).
#[derive(Module, Debug)]
pub struct TextEmbeddings<B: Backend> {
    /// `[vocab, width]`
    pub token_embedding: Embedding<B>,
    /// `[context, width]`
    pub position_embedding: Embedding<B>,
}

/// CLIP's text transformer (`text_model`).
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    pub embeddings: TextEmbeddings<B>,
    pub encoder: Encoder<B>,
    pub final_layer_norm: LayerNorm<B>,
}

impl ClipTextConfig {
    /// Builds the text tower with random weights.
    pub fn init<B: ClipBackend>(&self, device: &B::Device) -> ClipTextTransformer<B> {
        ClipTextTransformer {
            embeddings: TextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, self.hidden_size)
                    .with_initializer(CLIP_EMBEDDING_INIT)
                    .init(device),
                position_embedding: EmbeddingConfig::new(
                    self.max_position_embeddings,
                    self.hidden_size,
                )
                .with_initializer(CLIP_EMBEDDING_INIT)
                .init(device),
            },
            encoder: self.encoder_config().init(device),
            final_layer_norm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
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

impl<B: ClipBackend> ClipTextTransformer<B> {
    /// Token plus positional embeddings.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` with `seq <= context`
    /// - output: `[batch, seq, width]`
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.add_positions(self.token_embeddings(tokens))
    }

    /// The token embeddings alone, in the positional embeddings' dtype (the
    /// table may be stored in bf16, [`super::Precision::Bf16`]).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - output: `[batch, seq, width]`
    pub fn token_embeddings(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let dtype = self.embeddings.position_embedding.weight.val().dtype();
        self.embeddings.token_embedding.forward(tokens).cast(dtype)
    }

    /// Adds the positional embeddings to already embedded tokens (methods
    /// that replace some token embeddings, such as CoOp's context).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, width]` with `seq <= context`
    /// - output: `[batch, seq, width]`
    pub fn add_positions(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, seq, _] = x.dims();
        let pos = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .narrow(0, 0, seq);
        x + pos.unsqueeze_dim(0)
    }

    /// Embedded prompts through every block with a hook, pooled at `eot`
    /// and normalised by `final_layer_norm`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - `eot`: `[batch]`, the end-token position in the sequence as the last
    ///   block sees it
    /// - output: `[batch, width]`
    pub fn forward_embedded_with(
        &self,
        x: Tensor<B, 3>,
        eot: Tensor<B, 1, Int>,
        hook: &mut impl BlockHook<B>,
    ) -> Tensor<B, 2> {
        let h = self
            .encoder
            .forward_range(x, 0..self.encoder.depth(), true, hook);
        self.pool(h, eot)
    }

    /// `final_layer_norm` at the given position of each sequence.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, width]`
    /// - `eot`: `[batch]`
    /// - output: `[batch, width]`
    pub fn pool(&self, hidden: Tensor<B, 3>, eot: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.final_layer_norm.forward(gather_rows(hidden, eot))
    }

    /// Pooled, unprojected text features.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - `eot`: `[batch]`
    /// - output: `[batch, width]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, eot: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.forward_embedded_with(self.embed(tokens), eot, &mut NoHook)
    }
}

/// Picks one token per sequence, on the device.
///
/// # Shapes
/// - `hidden`: `[batch, seq, width]`
/// - `index`: `[batch]`, each in `0..seq`
/// - output: `[batch, width]`
pub fn gather_rows<B: ClipBackend>(hidden: Tensor<B, 3>, index: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let [batch, _, width] = hidden.dims();
    let index = index.reshape([batch, 1, 1]).expand([batch, 1, width]);
    hidden.gather(1, index).reshape([batch, width])
}
