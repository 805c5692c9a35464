//! The Multi-Modal Adapter (Seputis, Mihailov, Chatterjee, Xiao; arXiv
//! 2409.02958): one masked multi-head attention block over CLIP's *final*
//! features, adapting the image and the class text features together.
//! Written from the authors' code, `dqmis/clip-mma`
//! (`fomo/models/clip/clip_transformer_adapter_text.py`,
//! `fomo/models/clip/modules/masked_multi_head_attention_downsampled.py`).
//!
//! Per image, the frozen, L2-normalised class text features `t_1 … t_C` and
//! the image feature `f` form one sequence of C + 1 tokens (the image last).
//! The adapter maps it down (`projection_dim → width`), runs PyTorch's
//! `nn.MultiheadAttention` (4 heads, with biases) over it with an additive
//! float mask, and maps it back up. Each output is normalised, blended with
//! its input as `0.8·input + 0.2·output` and renormalised; the logits are
//! `exp(logit_scale)·⟨f', t'_c⟩`, so every image sees its own adapted class
//! features.
//!
//! The reference has two versions, told apart by the checkpoint's keys:
//!
//! | | `master` (2024-07) | `cross-only` (branch `feat/evaluate_overfitting_on_noise`) |
//! |---|---|---|
//! | downsampler | `Linear(P, 32)`, `Linear(32, 128)`, no activation | `Linear(P, 128)` |
//! | upsampler | `Linear(128, 32)`, GELU, `Linear(32, P)` | `Linear(128, P)` |
//! | float `attn_mask` | `+1` on text↔image pairs, `0` elsewhere: a bias that blocks nothing | `0` on text↔image pairs, `-inf` elsewhere: text attends only to the image, the image only to text |
//! | trained parameters at P = 512 | 107,712 | 197,760 |
//!
//! **Memory.** The reference builds a (C+1)×(C+1) attention per image:
//! `batch × heads × (C+1)²` scores, 4 GB at ImageNet's 1,000 classes and its
//! batch of 256. The text-to-text block of that matrix is the same for every
//! image (the text tokens do not depend on the image), so it is computed
//! once per batch here, and only the image's row and column per image: a
//! softmax split into a shared and a per-image part, merged exactly
//! (`heads × C²` + `batch × heads × C` scores). ImageNet-size class sets
//! need no chunking beyond the evaluation batch.
//!
//! **Scale.** The reference clamps CLIP's `logit_scale` at 4.6052 after
//! every optimiser step (`pipelines/train.py`), so from the first step on the
//! scale is `exp(min(logit_scale, 4.6052))`; that is used throughout here
//! (an fp16 OpenAI checkpoint stores 4.60546875: the reference's very first
//! batch uses 100.03 instead of 100.003).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use serde::{Deserialize, Serialize};

use crate::clip::Clip;
use crate::methods::{
    fill_template, ClassPrompts, Classes, Method, MethodConfig, NamedTensor, Prediction,
};
use crate::{ClipAutodiffBackend, ClipBackend};
use crate::{Error, Frozen, Result};

/// The method's name on the command line, in configs and in checkpoints.
pub const NAME: &str = "mm-adapter";

/// The largest `logit_scale` the reference lets CLIP keep (its clamp,
/// `pipelines/train.py`).
pub const LOGIT_SCALE_MAX: f64 = 4.6052;

/// Which version of the reference adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// `dqmis/clip-mma` master: two-layer samplers, `+1` cross-modal bias.
    #[default]
    Master,
    /// The ablation branch: single-Linear samplers, true cross-only mask.
    CrossOnly,
}

impl Variant {
    /// The name in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Master => "master",
            Variant::CrossOnly => "cross-only",
        }
    }
}

/// The Multi-Modal Adapter's settings (`[mm-adapter]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmAdapterConfig {
    /// `master` or `cross-only` (read from a checkpoint's keys on load).
    pub variant: Variant,
    /// Attention width (the reference's `downsamling_dim`, 128).
    pub width: usize,
    /// Bottleneck of the master variant's samplers (32).
    pub bottleneck: usize,
    /// Attention heads (4).
    pub heads: usize,
    /// Weight of the adapted image feature in the blend (0.2).
    pub image_ratio: f64,
    /// Weight of the adapted text features in the blend (0.2).
    pub text_ratio: f64,
}

impl Default for MmAdapterConfig {
    fn default() -> Self {
        MmAdapterConfig {
            variant: Variant::Master,
            width: 128,
            bottleneck: 32,
            heads: 4,
            image_ratio: 0.2,
            text_ratio: 0.2,
        }
    }
}

impl MethodConfig for MmAdapterConfig {}

impl MmAdapterConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, msg: String| Error::MethodConfig {
            method: NAME,
            key,
            msg,
        };
        if self.heads == 0 || self.width == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(bad(
                "heads",
                format!(
                    "width {} must be a positive multiple of heads {} (the reference: 128 and 4)",
                    self.width, self.heads
                ),
            ));
        }
        if self.variant == Variant::Master && self.bottleneck == 0 {
            return Err(bad(
                "bottleneck",
                "must be positive (the reference: 32)".into(),
            ));
        }
        for (key, r) in [
            ("image_ratio", self.image_ratio),
            ("text_ratio", self.text_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(bad(
                    key,
                    format!("{r} is not in [0, 1] (the reference: 0.2)"),
                ));
            }
        }
        Ok(())
    }

    /// A fresh adapter for features of size `dim` (PyTorch's
    /// initialisation: Linear layers kaiming-uniform, the attention's input
    /// projection xavier-uniform, the attention's biases zero).
    pub fn init_adapter<B: ClipBackend>(
        &self,
        dim: usize,
        device: &B::Device,
    ) -> AttentionAdapter<B> {
        let linear = |i, o| crate::init::linear(i, o, device);
        let (down, up) = match self.variant {
            Variant::Master => (
                vec![
                    linear(dim, self.bottleneck),
                    linear(self.bottleneck, self.width),
                ],
                vec![
                    linear(self.width, self.bottleneck),
                    linear(self.bottleneck, dim),
                ],
            ),
            Variant::CrossOnly => (vec![linear(dim, self.width)], vec![linear(self.width, dim)]),
        };
        let zero_bias = |l: Linear<B>| Linear {
            bias: l
                .bias
                .map(|b| Param::from_tensor(Tensor::zeros(b.val().dims(), device))),
            ..l
        };
        let in_proj = crate::init::linear_xavier_zero_bias(self.width, 3 * self.width, device);
        AttentionAdapter {
            downsampler: down,
            mha: AdapterAttention {
                in_proj,
                out_proj: zero_bias(linear(self.width, self.width)),
                heads: self.heads,
            },
            upsampler: up,
        }
    }
}

/// PyTorch's `nn.MultiheadAttention` (sequence-first, one packed input
/// projection) with the adapter's mask, computed without the per-image
/// text-to-text block (see the module docs).
#[derive(Module, Debug)]
pub struct AdapterAttention<B: Backend> {
    /// `in_proj_weight` / `in_proj_bias`: `width → 3·width` (q, k, v).
    pub in_proj: Linear<B>,
    /// `out_proj`.
    pub out_proj: Linear<B>,
    pub heads: usize,
}

/// The additive mask of one variant, as (text→text, text↔image,
/// image→image) logit biases; `None` is PyTorch's `-inf` (blocked).
#[derive(Debug, Clone, Copy)]
struct MaskBias {
    text_text: Option<f64>,
    cross: f64,
    image_image: Option<f64>,
}

impl Variant {
    fn mask(self) -> MaskBias {
        match self {
            Variant::Master => MaskBias {
                text_text: Some(0.0),
                cross: 1.0,
                image_image: Some(0.0),
            },
            Variant::CrossOnly => MaskBias {
                text_text: None,
                cross: 0.0,
                image_image: None,
            },
        }
    }
}

impl<B: ClipBackend> AdapterAttention<B> {
    fn width(&self) -> usize {
        self.out_proj.weight.dims()[0]
    }

    /// q (scaled by 1/√head_dim, as PyTorch does before the product), k and
    /// v of `n` tokens, each `[heads, n, head_dim]`.
    fn qkv(&self, x: Tensor<B, 2>) -> [Tensor<B, 3>; 3] {
        let [n, _] = x.dims();
        let (w, h) = (self.width(), self.heads);
        let d = w / h;
        let p = self.in_proj.forward(x);
        let part = |i: usize| {
            p.clone()
                .narrow(1, i * w, w)
                .reshape([n, h, d])
                .swap_dims(0, 1)
        };
        [part(0) * (d as f64).powf(-0.5), part(1), part(2)]
    }

    /// Attention over, per image `b`, the sequence `[text_1 … text_C, image_b]`.
    ///
    /// # Shapes
    /// - `text`: `[classes, width]`, `image`: `[batch, width]`
    /// - output: text tokens `[classes, batch, width]`, image tokens `[batch, width]`
    fn forward(
        &self,
        text: Tensor<B, 2>,
        image: Tensor<B, 2>,
        mask: MaskBias,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [c, w] = text.dims();
        let [b, _] = image.dims();
        let (h, d) = (self.heads, w / self.heads);
        let [qt, kt, vt] = self.qkv(text);
        let [qi, ki, vi] = self.qkv(image);

        // Text rows: scores against the other text tokens (shared by every
        // image) and against each image, `[h, C, B]`.
        let s_ti = qt.clone().matmul(ki.clone().swap_dims(1, 2)) + mask.cross;
        let vi_rows = vi.clone().unsqueeze_dim::<4>(1); // [h, 1, B, d]
        let out_t = match mask.text_text {
            // Only the image is visible: softmax over one entry.
            None => vi_rows.expand([h, c, b, d]),
            Some(bias) => {
                let s_tt = qt.matmul(kt.clone().swap_dims(1, 2)) + bias; // [h, C, C]
                                                                         // Shifts for a stable exp; the result does not depend on them.
                let m = s_tt.clone().max_dim(2).detach(); // [h, C, 1]
                let e_tt = (s_tt - m.clone()).exp();
                let z = e_tt.clone().sum_dim(2); // [h, C, 1]
                let a = e_tt.matmul(vt.clone()); // [h, C, d]
                let m2 = m.clone().expand([h, c, b]).max_pair(s_ti.clone().detach());
                let alpha = (m - m2.clone()).exp(); // [h, C, B]
                let beta = (s_ti - m2).exp();
                let den = alpha.clone() * z + beta.clone();
                let num = alpha.unsqueeze_dim::<4>(3) * a.unsqueeze_dim::<4>(2)
                    + beta.unsqueeze_dim::<4>(3) * vi_rows;
                num / den.unsqueeze_dim::<4>(3)
            }
        };
        let out_t = out_t.permute([1, 2, 0, 3]).reshape([c, b, w]);

        // Image rows: the C text tokens and (master) the image itself.
        let s_it = qi.clone().matmul(kt.swap_dims(1, 2)) + mask.cross; // [h, B, C]
        let out_i = match mask.image_image {
            None => softmax(s_it, 2).matmul(vt),
            Some(bias) => {
                let s_ii = (qi * ki).sum_dim(2) + bias; // [h, B, 1]
                let p = softmax(Tensor::cat(vec![s_it, s_ii], 2), 2);
                p.clone().narrow(2, 0, c).matmul(vt) + p.narrow(2, c, 1) * vi
            }
        };
        let out_i = out_i.swap_dims(0, 1).reshape([b, w]);
        (self.out_proj.forward(out_t), self.out_proj.forward(out_i))
    }
}

/// The trained part: downsampler, attention, upsampler.
#[derive(Module, Debug)]
pub struct AttentionAdapter<B: Backend> {
    /// Applied in turn, no activation between (master: 2 layers).
    pub downsampler: Vec<Linear<B>>,
    pub mha: AdapterAttention<B>,
    /// Applied in turn with GELU (exact) between (master: 2 layers).
    pub upsampler: Vec<Linear<B>>,
}

impl<B: ClipBackend> AttentionAdapter<B> {
    fn down<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.downsampler.iter().fold(x, |x, l| l.forward(x))
    }

    fn up<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut layers = self.upsampler.iter();
        let first = layers.next().expect("the upsampler has a layer");
        layers.fold(first.forward(x), |x, l| l.forward(gelu(x)))
    }

    /// The variant, from the samplers' depth.
    pub fn variant(&self) -> Variant {
        if self.downsampler.len() == 1 {
            Variant::CrossOnly
        } else {
            Variant::Master
        }
    }

    /// The adapter's outputs for the text tokens `[classes, batch, dim]`
    /// and the image tokens `[batch, dim]`, from the frozen features
    /// `text` `[classes, dim]` and `image` `[batch, dim]`.
    pub fn forward(&self, text: Tensor<B, 2>, image: Tensor<B, 2>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let mask = self.variant().mask();
        let (t, i) = self.mha.forward(self.down(text), self.down(image), mask);
        (self.up(t), self.up(i))
    }
}

/// Divides by the L2 norm over the last dimension.
fn normalize<B: ClipBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt();
    x / norm
}

/// The Multi-Modal Adapter around a frozen CLIP.
#[derive(Module, Debug)]
pub struct MmAdapter<B: Backend> {
    /// The trained adapter (reference names `adapter.*`).
    pub adapter: AttentionAdapter<B>,
    /// Frozen, and outside the module's parameters and records.
    pub clip: Frozen<Clip<B>>,
    pub image_ratio: f64,
    pub text_ratio: f64,
    /// Frozen, normalised text features of the current class set,
    /// `[classes, projection_dim]`.
    pub text_features: Frozen<Option<Tensor<B, 2>>>,
    /// CLIP's normalised image features of the training images, by
    /// position, when they are the same every epoch ([`Method::forward_fixed`]).
    #[module(skip)]
    pub image_cache: ImageCache,
}

/// Frozen image features by training-set position (host memory: one row of
/// `projection_dim` floats per image, 32 MB for 16-shot ImageNet at 512).
#[derive(Clone, Debug, Default)]
pub struct ImageCache(Arc<Mutex<HashMap<usize, Vec<f32>>>>);

impl ImageCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Vec<f32>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of cached images.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: ClipBackend> MmAdapter<B> {
    /// A fresh adapter around `clip`, which it freezes.
    pub fn new(config: &MmAdapterConfig, clip: Clip<B>, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let dim = clip.visual_projection.weight.dims()[1];
        Ok(MmAdapter {
            adapter: config.init_adapter(dim, device),
            clip: Frozen::new(clip.no_grad()),
            image_ratio: config.image_ratio,
            text_ratio: config.text_ratio,
            text_features: Frozen::new(None),
            image_cache: ImageCache::default(),
        })
    }

    /// `exp(min(logit_scale, 4.6052))`, `[1, 1]`.
    fn scale(&self) -> Tensor<B, 2> {
        self.clip
            .logit_scale
            .val()
            .clamp_max(LOGIT_SCALE_MAX)
            .exp()
            .unsqueeze_dim(0)
    }

    /// Normalised frozen image features, `[batch, projection_dim]`.
    pub fn image_features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        normalize(self.clip.encode_image(images))
    }

    /// Logits from normalised frozen features: the adapter, the blend and
    /// the per-image dot products.
    ///
    /// # Shapes
    /// - `image`: `[batch, dim]`, `text`: `[classes, dim]`, both normalised
    /// - output: `[batch, classes]`
    pub fn logits_from_features(&self, image: Tensor<B, 2>, text: Tensor<B, 2>) -> Tensor<B, 2> {
        let [c, dim] = text.dims();
        let [b, _] = image.dims();
        let (a_txt, a_img) = self.adapter.forward(text.clone(), image.clone());
        let (ri, rt) = (self.image_ratio, self.text_ratio);
        let img = normalize(normalize(a_img) * ri + image * (1.0 - ri));
        let txt = normalize(
            normalize(a_txt) * rt + text.unsqueeze_dim::<3>(1).expand([c, b, dim]) * (1.0 - rt),
        );
        let sim = (txt * img.unsqueeze_dim::<3>(0)).sum_dim(2).reshape([c, b]);
        sim.transpose() * self.scale()
    }

    fn current_text(&self) -> Tensor<B, 2> {
        self.text_features
            .0
            .clone()
            .expect("Method::set_classes is called before scoring or training")
    }

    /// The settings this adapter runs with.
    pub fn settings(&self) -> MmAdapterConfig {
        let variant = self.adapter.variant();
        MmAdapterConfig {
            variant,
            width: self.adapter.mha.width(),
            bottleneck: match variant {
                Variant::Master => self.adapter.downsampler[0].weight.dims()[1],
                Variant::CrossOnly => MmAdapterConfig::default().bottleneck,
            },
            heads: self.adapter.mha.heads,
            image_ratio: self.image_ratio,
            text_ratio: self.text_ratio,
        }
    }
}

impl<B: ClipBackend> Method<B> for MmAdapter<B> {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str =
        "Multi-Modal Adapter (arXiv 2409.02958): masked attention over CLIP's final image and class features";
    type Config = MmAdapterConfig;
    type Output = Tensor<B, 2>;
    type Text = Tensor<B, 2>;

    /// The dataset's hand-written template, the name filled in.
    fn prompt_texts(_: &MmAdapterConfig, classes: &[String], template: &str) -> Vec<String> {
        classes.iter().map(|c| fill_template(template, c)).collect()
    }

    fn init(
        config: &MmAdapterConfig,
        clip: Clip<B>,
        prompts: &ClassPrompts,
        device: &B::Device,
    ) -> Result<Self> {
        MmAdapter::new(config, clip, device)?.set_classes(prompts)
    }

    fn load(
        config: &MmAdapterConfig,
        clip: Clip<B>,
        path: &Path,
        device: &B::Device,
    ) -> Result<Self> {
        crate::methods::mm_adapter_io::load_mm_adapter(path, config, clip, device)
    }

    fn config(&self) -> MmAdapterConfig {
        self.settings()
    }

    fn set_classes(mut self, prompts: &ClassPrompts) -> Result<Self> {
        let device = self.clip.visual_projection.weight.device();
        let (tokens, eot) = prompts.tensors::<B>(&device);
        self.text_features = Frozen::new(Some(normalize(self.clip.encode_text(tokens, eot))));
        Ok(self)
    }

    /// CLIP runs on the inner backend; only the adapter records a graph.
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: ClipAutodiffBackend,
    {
        let clip: Clip<B::InnerBackend> = self.clip.0.valid();
        let image = Tensor::from_inner(normalize(clip.encode_image(images.inner())));
        self.logits_from_features(image, self.current_text())
    }

    /// CLIP runs on an image the first time it is seen; later epochs take
    /// its features from the cache (one upload of `batch × dim` floats).
    fn forward_fixed(&self, images: Tensor<B, 4>, ids: &[usize]) -> Tensor<B, 2>
    where
        B: ClipAutodiffBackend,
    {
        let cached: Option<Vec<f32>> = {
            let cache = self.image_cache.lock();
            ids.iter()
                .map(|i| cache.get(i).map(|row| row.as_slice()))
                .collect::<Option<Vec<&[f32]>>>()
                .map(|rows| rows.concat())
        };
        let image = match cached {
            Some(values) => {
                let dim = self.clip.visual_projection.weight.dims()[1];
                Tensor::from_data(TensorData::new(values, [ids.len(), dim]), &images.device())
            }
            None => {
                let clip: Clip<B::InnerBackend> = self.clip.0.valid();
                let features = normalize(clip.encode_image(images.inner()));
                let [n, dim] = features.dims();
                if let Ok(values) = features.clone().into_data().to_vec::<f32>() {
                    let mut cache = self.image_cache.lock();
                    for (k, &i) in ids.iter().enumerate().take(n) {
                        cache.insert(i, values[k * dim..(k + 1) * dim].to_vec());
                    }
                }
                Tensor::from_inner(features)
            }
        };
        self.logits_from_features(image, self.current_text())
    }

    fn text(&self) -> Tensor<B, 2> {
        self.current_text()
    }

    fn predict(&self, images: Tensor<B, 4>, text: &Tensor<B, 2>, _: Classes) -> Prediction<B> {
        Prediction {
            logits: self.logits_from_features(self.image_features(images), text.clone()),
            heads: Vec::new(),
        }
    }

    fn state(&self) -> Vec<NamedTensor> {
        crate::methods::mm_adapter_io::mm_adapter_state(self)
    }

    fn num_trainable_params(&self) -> usize {
        self.adapter.num_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipConfig;

    type B = burn::backend::Flex;

    fn clip(dim: usize) -> Clip<B> {
        let mut c = ClipConfig::small(8, 1, 1, 8, 4);
        c.projection_dim = dim;
        c.init(&Default::default())
    }

    #[test]
    fn parameter_counts_are_the_references_at_vit_b16() {
        let device = Default::default();
        for (variant, n) in [(Variant::Master, 107_712), (Variant::CrossOnly, 197_760)] {
            let config = MmAdapterConfig {
                variant,
                ..MmAdapterConfig::default()
            };
            let m = MmAdapter::new(&config, clip(512), &device).unwrap();
            assert_eq!(m.num_trainable_params(), n, "{variant:?}");
            assert_eq!(m.settings(), config);
        }
    }

    /// The reference's way, written out: the (C+1)×(C+1) attention per
    /// image with the additive float mask.
    fn naive(m: &MmAdapter<B>, text: Tensor<B, 2>, image: Tensor<B, 2>) -> Tensor<B, 2> {
        let [c, dim] = text.dims();
        let [b, _] = image.dims();
        let a = &m.adapter;
        let seq = Tensor::cat(
            vec![
                text.clone().unsqueeze_dim::<3>(1).expand([c, b, dim]),
                image.clone().unsqueeze_dim(0),
            ],
            0,
        ); // [C+1, B, dim]
        let x = a.down(seq.swap_dims(0, 1)); // [B, S, w]
        let [_, s, w] = x.dims();
        let (h, d) = (a.mha.heads, w / a.mha.heads);
        let p = a.mha.in_proj.forward(x);
        let part = |i: usize| {
            p.clone()
                .narrow(2, i * w, w)
                .reshape([b, s, h, d])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (part(0) / (d as f64).sqrt(), part(1), part(2));
        let mut mask = vec![0f32; s * s];
        for i in 0..s {
            for j in 0..s {
                let cross = (i < c) != (j < c);
                mask[i * s + j] = match (a.variant(), cross) {
                    (Variant::Master, true) => 1.0,
                    (Variant::Master, false) => 0.0,
                    (Variant::CrossOnly, true) => 0.0,
                    (Variant::CrossOnly, false) => f32::NEG_INFINITY,
                };
            }
        }
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [s, s]), &Default::default());
        let att = softmax(q.matmul(k.swap_dims(2, 3)) + mask.unsqueeze::<4>(), 3).matmul(v);
        let out = a.up(a
            .mha
            .out_proj
            .forward(att.swap_dims(1, 2).reshape([b, s, w])));
        let a_txt = out.clone().narrow(1, 0, c).swap_dims(0, 1); // [C, B, dim]
        let a_img = out.narrow(1, c, 1).reshape([b, dim]);
        let img = normalize(normalize(a_img) * 0.2 + image * 0.8);
        let txt = normalize(
            normalize(a_txt) * 0.2 + text.unsqueeze_dim::<3>(1).expand([c, b, dim]) * 0.8,
        );
        (txt * img.unsqueeze_dim::<3>(0))
            .sum_dim(2)
            .reshape([c, b])
            .transpose()
            * m.scale()
    }

    #[test]
    fn shared_text_block_equals_the_per_image_attention() {
        let device = Default::default();
        for variant in [Variant::Master, Variant::CrossOnly] {
            let config = MmAdapterConfig {
                variant,
                width: 16,
                bottleneck: 8,
                ..MmAdapterConfig::default()
            };
            let m = MmAdapter::new(&config, clip(12), &device).unwrap();
            let text = normalize(Tensor::<B, 2>::random(
                [7, 12],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            ));
            let image = normalize(Tensor::<B, 2>::random(
                [3, 12],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            ));
            let ours = m.logits_from_features(image.clone(), text.clone());
            let want = naive(&m, text, image);
            let diff = (ours - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{variant:?}: {diff}");
        }
    }

    /// Fixed training images: CLIP runs on an image once; afterwards its
    /// features come from the cache (other pixels under the same positions
    /// give the first call's logits) and the adapter still gets gradients.
    #[test]
    fn fixed_images_are_encoded_once() {
        type AB = burn::backend::Autodiff<B>;
        let device = Default::default();
        let mut c = ClipConfig::small(8, 1, 1, 8, 4);
        c.projection_dim = 12;
        let clip: Clip<AB> = c.init(&device);
        let mut m = MmAdapter::new(&MmAdapterConfig::default(), clip, &device).unwrap();
        m.text_features = Frozen::new(Some(normalize(Tensor::<AB, 2>::random(
            [5, 12],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        ))));
        let size = c.vision_config.image_size;
        let images = |v: f32| Tensor::<AB, 4>::full([3, 3, size, size], v, &device);
        let first = m.forward_fixed(images(0.5), &[4, 9, 2]);
        assert_eq!(m.image_cache.len(), 3);
        let again = m.forward_fixed(images(-1.0), &[4, 9, 2]);
        let d = (first.clone() - again.clone()).abs().max().into_scalar();
        assert_eq!(d, 0.0);
        let other = m.forward(images(-1.0));
        assert!((first - other).abs().max().into_scalar() > 0.0);
        let grads = again.sum().backward();
        assert!(m.adapter.mha.in_proj.weight.val().grad(&grads).is_some());
    }

    #[test]
    fn bad_settings_are_named() {
        let e = MmAdapterConfig {
            width: 10,
            heads: 4,
            ..MmAdapterConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("[mm-adapter] heads"), "{e}");
        let c: MmAdapterConfig = serde_json::from_str(r#"{"variant": "cross-only"}"#).unwrap();
        assert_eq!(c.variant, Variant::CrossOnly);
        assert!(serde_json::from_str::<MmAdapterConfig>(r#"{"variant": "branch"}"#).is_err());
    }
}
