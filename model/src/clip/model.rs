//! The whole CLIP: both towers, their projections and `logit_scale`.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use super::config::ClipConfig;
use super::text::ClipTextTransformer;
use super::transformer::normal_linear;
use super::vision::ClipVisionTransformer;
use crate::ClipBackend;

/// CLIP with Hugging Face's module names (`text_model`, `vision_model`,
/// `visual_projection`, `text_projection`, `logit_scale`).
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    pub text_model: ClipTextTransformer<B>,
    pub vision_model: ClipVisionTransformer<B>,
    /// `[vision width, projection_dim]`, no bias.
    pub visual_projection: Linear<B>,
    /// `[text width, projection_dim]`, no bias.
    pub text_projection: Linear<B>,
    /// `[1]`, the log of the inverse softmax temperature.
    pub logit_scale: Param<Tensor<B, 1>>,
}

impl ClipConfig {
    /// Builds CLIP with random weights, initialised as transformers' `CLIPModel`.
    pub fn init<B: ClipBackend>(&self, device: &B::Device) -> Clip<B> {
        // `N(0, width^-0.5)`, as transformers' `_init_weights`.
        let proj = |d_in: usize| {
            normal_linear(
                d_in,
                self.projection_dim,
                (d_in as f64).powf(-0.5),
                false,
                device,
            )
        };
        Clip {
            text_model: self.text_config.init(device),
            vision_model: self.vision_config.init(device),
            visual_projection: proj(self.vision_config.hidden_size),
            text_projection: proj(self.text_config.hidden_size),
            logit_scale: Param::from_tensor(Tensor::from_floats(
                [self.logit_scale_init_value as f32],
                device,
            )),
        }
    }
}

impl<B: ClipBackend> Clip<B> {
    /// Projected (unnormalised) image features.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`, preprocessed
    /// - output: `[batch, projection_dim]`
    pub fn encode_image(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.visual_projection
            .forward(self.vision_model.forward(images))
    }

    /// Projected (unnormalised) text features.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - `eot`: `[batch]`, position of each sequence's end-of-text token
    /// - output: `[batch, projection_dim]`
    pub fn encode_text(&self, tokens: Tensor<B, 2, Int>, eot: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.text_projection
            .forward(self.text_model.forward(tokens, eot))
    }

    /// `exp(logit_scale)`.
    pub fn scale(&self) -> Tensor<B, 1> {
        self.logit_scale.val().exp()
    }

    /// `exp(logit_scale) × cos(image, text)`.
    ///
    /// # Shapes
    /// - `image_features`: `[batch, projection_dim]`
    /// - `text_features`: `[classes, projection_dim]`
    /// - output: `[batch, classes]`
    pub fn logits(
        &self,
        image_features: Tensor<B, 2>,
        text_features: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let sim = l2_normalize(image_features).matmul(l2_normalize(text_features).transpose());
        sim * self.scale().unsqueeze_dim(0)
    }
}

/// Divides each row by its L2 norm.
///
/// # Shapes
/// - `x`: `[rows, dim]`
/// - output: `[rows, dim]`
pub fn l2_normalize<B: ClipBackend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}
