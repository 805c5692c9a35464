//! Zero-shot CLIP as a method with nothing to train: hand-written prompts
//! (`template` filled with each class name), text features once per class
//! set, logits `exp(logit_scale) · cos(image, text)` (CoOp's
//! `trainers/zsclip.py`, `ZeroshotCLIP`).

use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clip::Clip;
use crate::methods::{fill_template, ClassPrompts, Classes, Method, MethodConfig, Prediction};
use crate::{ClipAutodiffBackend, ClipBackend};
use crate::{Frozen, Result};

/// Zero-shot CLIP has no settings besides the run's template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroShotConfig {}

impl MethodConfig for ZeroShotConfig {}

/// CLIP with hand-written prompts.
#[derive(Module, Debug)]
pub struct ZeroShot<B: Backend> {
    /// Frozen, and outside the module's parameters and records.
    pub clip: Frozen<Clip<B>>,
    /// Text features of the current class set, `[classes, projection_dim]`.
    pub text_features: Frozen<Option<Tensor<B, 2>>>,
}

impl<B: ClipBackend> ZeroShot<B> {
    /// Zero-shot CLIP around `clip`, which it freezes.
    pub fn new(clip: Clip<B>) -> Self {
        ZeroShot {
            clip: Frozen::new(clip.no_grad()),
            text_features: Frozen::new(None),
        }
    }
}

impl<B: ClipBackend> Method<B> for ZeroShot<B> {
    const NAME: &'static str = "zeroshot";
    const SUMMARY: &'static str = "zero-shot CLIP with hand-written prompts; nothing is trained";
    type Config = ZeroShotConfig;
    type Output = Tensor<B, 2>;
    type Text = Tensor<B, 2>;

    fn prompt_texts(_: &ZeroShotConfig, classes: &[String], template: &str) -> Vec<String> {
        classes.iter().map(|c| fill_template(template, c)).collect()
    }

    fn init(
        _: &ZeroShotConfig,
        clip: Clip<B>,
        prompts: &ClassPrompts,
        _: &B::Device,
    ) -> Result<Self> {
        ZeroShot::new(clip).set_classes(prompts)
    }

    /// Zero-shot CLIP has no checkpoint: the CLIP weights are all it needs.
    fn load(_: &ZeroShotConfig, clip: Clip<B>, _: &std::path::Path, _: &B::Device) -> Result<Self> {
        Ok(ZeroShot::new(clip))
    }

    fn config(&self) -> ZeroShotConfig {
        ZeroShotConfig {}
    }

    fn set_classes(mut self, prompts: &ClassPrompts) -> Result<Self> {
        let device = self.clip.visual_projection.weight.device();
        let (tokens, eot) = prompts.tensors::<B>(&device);
        self.text_features = Frozen::new(Some(self.clip.encode_text(tokens, eot)));
        Ok(self)
    }

    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: ClipAutodiffBackend,
    {
        self.predict(images, &self.text(), Classes::Seen).logits
    }

    fn text(&self) -> Tensor<B, 2> {
        self.text_features
            .0
            .clone()
            .expect("Method::set_classes is called before scoring")
    }

    fn predict(&self, images: Tensor<B, 4>, text: &Tensor<B, 2>, _: Classes) -> Prediction<B> {
        Prediction {
            logits: self
                .clip
                .logits(self.clip.encode_image(images), text.clone()),
            heads: Vec::new(),
        }
    }

    fn state(&self) -> Vec<crate::methods::NamedTensor> {
        Vec::new()
    }

    fn num_trainable_params(&self) -> usize {
        0
    }
}
