//! COMMA: Co-Articulated Multi-Modal Learning (Hu et al., AAAI 2024).
//!
//! A MaPLe-style deep prompt learner in both towers, with two changes:
//! - the vision prompts of each deeper layer are *generated* from the
//!   previous layer's vision prompts and text prompts by a small attention
//!   block (`attention_transform`): `T' = fc(T)`,
//!   `A = softmax(V·T'ᵀ/√vision_width)` over the text tokens,
//!   `out = mlp(LayerNorm(A·T'))` with `mlp = Linear(w→w/4) → ReLU →
//!   Linear(w/4→w)`, no residual;
//! - a knowledge-preservation (KP) loss: `1 − mean cos` between the prompted
//!   text tower's last block output and a frozen CLIP's for the dataset's
//!   hand-written template, per token, over all context positions (padding
//!   included), each token L2-normalised.
//!
//! Text: `[SOS] + ctx (n_ctx) + the rest of "<ctx_init> <name>."` — the
//! context replaces only the first `n_ctx` words of `ctx_init`, so with the
//! defaults the prompt reads "⟨c1⟩ ⟨c2⟩ of a {name}.". Blocks 1..depth−1
//! (0-based) replace tokens `1..1+n_ctx` with the next deep text prompt.
//! Vision: `proj(ctx)` (text width → vision width) is appended after the
//! class and patch tokens and the positional embeddings, *before*
//! `pre_layrnorm`; blocks 1..depth−1 replace the last `n_ctx` tokens with
//! the next generated vision prompt. Past the prompt depth the prompt tokens
//! flow through. Logits: `exp(logit_scale)·cos`.
//!
//! Faithful to the code (`hulianyuyy/COMMA` @ 3584f31, `trainers/comma.py`,
//! `clip/model.py`), with the paper's behaviour as options:
//! - **Generators get no gradient** (`train_generators = false`, default):
//!   the reference writes the generated prompts through `.data`, so the
//!   generators stay at their initialisation and no gradient flows from the
//!   deep vision prompts back to `ctx`, `proj` or the text prompts. What
//!   trains is `ctx`, `proj` and the deep text prompts.
//!   `train_generators = true` lets the gradient flow, as the paper
//!   describes.
//! - **fp16 roundings** (`fp16 = true`, default): the reference runs in half
//!   precision, and its prompt learner rounds in these places, which this
//!   implementation reproduces (rounding to the nearest fp16 value, the
//!   gradient passing through unchanged, as PyTorch's casts do): `ctx`, the
//!   prompt's token embeddings (its `token_prefix`/`token_suffix` buffers),
//!   `proj`'s weights and output, the first ("base") generator (weights and
//!   each op's output), and every deep prompt where a block inserts it
//!   (`.half()`). CLIP itself runs in f32 here, as for every method.
//! - Only `LAST_LAYER = 1` (the reference's setting) is supported: the
//!   reference's loop for more layers runs one block repeatedly.
//!
//! Trainable parameters at ViT-B/16, depth 9: 403,200 (`ctx` 1,024, `proj`
//! 393,984, deep text prompts 8,192); the reference declares 5,946,624
//! trainable (adding its 8 generators of 691,392 and the overwritten
//! `compound_prompts_image`), which never receive a gradient. Depth 3:
//! 397,056.

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use crate::clip::{l2_normalize, BlockHook, Clip};
use crate::methods::{fill_template, ClassPrompts, Classes, Method, MethodConfig, Prediction};
use crate::{ClipAutodiffBackend, ClipBackend};
use crate::{Error, Result};

/// COMMA's hyper-parameters (`TRAINER.COMMA.*` in the reference configs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommaConfig {
    /// Prompt tokens per layer and tower (`N_CTX`). Default 2.
    pub n_ctx: usize,
    /// Words whose embeddings initialise the context (`CTX_INIT`); the
    /// context replaces the first `n_ctx` of them. Default "a photo of a".
    pub ctx_init: String,
    /// Layers that get prompts, counting the input (`PROMPT_DEPTH`).
    /// Default 9 (base-to-novel; 3 for cross-dataset and domain
    /// generalisation). Clamped to a smaller CLIP's depth with a notice.
    pub prompt_depth: usize,
    /// Weight of the knowledge-preservation loss (`WEIGHT`). Default 1.0.
    pub kp_weight: f64,
    /// The reference's fp16 roundings in the prompt learner (see the module
    /// docs). Default true.
    pub fp16: bool,
    /// Train the vision-prompt generators (the paper's description); the
    /// reference's code never does. Default false.
    pub train_generators: bool,
}

impl Default for CommaConfig {
    fn default() -> Self {
        Self {
            n_ctx: 2,
            ctx_init: "a photo of a".into(),
            prompt_depth: 9,
            kp_weight: 1.0,
            fp16: true,
            train_generators: false,
        }
    }
}

impl MethodConfig for CommaConfig {}

impl CommaConfig {
    /// Checks the settings; returns the prompt depth to use on towers of
    /// these depths (clamped, with a notice, when it exceeds them).
    pub fn validate(&self, text_depth: usize, vision_depth: usize) -> Result<usize> {
        let bad = |key, msg: String| Error::MethodConfig {
            method: "comma",
            key,
            msg,
        };
        if self.n_ctx == 0 {
            return Err(bad("n_ctx", "must be at least 1".into()));
        }
        let words = self.ctx_init.split_whitespace().count();
        if words < self.n_ctx {
            return Err(bad(
                "ctx_init",
                format!(
                    "\"{}\" has {words} words; the context replaces the first n_ctx = {} of them: \
                     give at least that many words",
                    self.ctx_init, self.n_ctx
                ),
            ));
        }
        if self.prompt_depth == 0 {
            return Err(bad("prompt_depth", "must be at least 1".into()));
        }
        let depth = text_depth.min(vision_depth);
        if self.prompt_depth > depth {
            eprintln!(
                "comma: prompt_depth {} exceeds this CLIP's {depth} layers; using {depth}",
                self.prompt_depth
            );
            return Ok(depth);
        }
        Ok(self.prompt_depth)
    }

    /// The prompt of each class: `ctx_init`, the name (`_` as spaces), a
    /// full stop (`trainers/comma.py`).
    pub fn prompt(&self, class: &str) -> String {
        format!(
            "{} {}.",
            self.ctx_init.replace('_', " "),
            class.replace('_', " ")
        )
    }

    /// A fresh COMMA around `clip` (the reference's initialisation) with
    /// `prompt_depth` as set (validate it first):
    /// `ctx` from the embeddings of `ctx_init`'s first `n_ctx` tokens (their
    /// ids `ctx_ids`), deep text prompts N(0, 0.02), `proj` and the
    /// generators as PyTorch initialises them.
    pub fn init<B: ClipBackend>(
        &self,
        clip: Clip<B>,
        ctx_ids: Tensor<B, 1, Int>,
        device: &B::Device,
    ) -> Comma<B> {
        let clip = clip.no_grad();
        let tw = text_width(&clip);
        let vw = vision_width(&clip);
        let ctx = clip
            .text_model
            .token_embeddings(ctx_ids.unsqueeze_dim::<2>(0))
            .reshape([self.n_ctx, tw])
            .detach();
        let ctx = round_if(ctx, self.fp16);
        let deep = self.prompt_depth - 1;
        let text_prompts = crate::init::random(
            [deep, self.n_ctx, tw],
            Distribution::Normal(0.0, 0.02),
            device,
        );
        let base = Generator::init(tw, vw, device);
        let generators = (0..deep.saturating_sub(1))
            .map(|_| Generator::init(tw, vw, device))
            .collect();
        Comma {
            prompt_learner: PromptLearner {
                ctx: Param::from_tensor(ctx),
                proj: crate::init::linear(tw, vw, device),
                compound_prompts_text: Param::from_tensor(text_prompts),
                compound_prompt_projections_image_base: base,
                compound_prompt_projections_image: generators,
            },
            clip: crate::Frozen::new(clip),
            kp_weight: self.kp_weight,
            fp16: self.fp16,
            train_generators: self.train_generators,
            ctx_init: self.ctx_init.clone(),
            classes: crate::Frozen::new(None),
        }
    }
}

fn text_width<B: ClipBackend>(clip: &Clip<B>) -> usize {
    clip.text_model.embeddings.token_embedding.weight.dims()[1]
}

fn vision_width<B: ClipBackend>(clip: &Clip<B>) -> usize {
    clip.vision_model.embeddings.class_embedding.dims()[0]
}

/// Rounds every value to the nearest fp16 value (ties to even; subnormals
/// included), computed in f32 on the device; the gradient passes through
/// unchanged, as through PyTorch's `.half()`.
pub fn round_f16<B: ClipBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let v = x.clone().detach();
    // Normal range: Veltkamp's split keeps 24 − 13 = 11 significant bits.
    let t = v.clone().mul_scalar(8193.0);
    let normal = t.clone() - (t - v.clone());
    // Below fp16's smallest normal (2⁻¹⁴) the step is 2⁻²⁴: adding 0.75
    // (whose f32 ulp is 2⁻²⁴) rounds to it.
    let sub = v.clone().add_scalar(0.75).sub_scalar(0.75);
    let small = v.clone().abs().lower_elem(2f32.powi(-14));
    let r = normal.mask_where(small, sub);
    x + (r - v)
}

/// [`round_f16`] when `half`, else `x`.
fn round_if<B: ClipBackend, const D: usize>(x: Tensor<B, D>, half: bool) -> Tensor<B, D> {
    if half {
        round_f16(x)
    } else {
        x
    }
}

/// A `Linear` on `[rows, in]`; with `half`, as PyTorch's fp16 `Linear`
/// runs: weights, bias and output rounded to fp16.
fn linear<B: ClipBackend>(l: &Linear<B>, x: Tensor<B, 2>, half: bool) -> Tensor<B, 2> {
    let y = x.matmul(round_if(l.weight.val(), half));
    let y = match &l.bias {
        Some(b) => y + round_if(b.val(), half).unsqueeze_dim(0),
        None => y,
    };
    round_if(y, half)
}

/// PyTorch's `nn.LayerNorm` default.
const LN_EPS: f64 = 1e-5;

/// `attention_transform`: the next layer's vision prompts from this
/// layer's vision prompts `V` `[n, vw]` and text prompts `T` `[m, tw]`.
#[derive(Module, Debug)]
pub struct Generator<B: Backend> {
    /// `fc`: text width → vision width.
    pub fc: Linear<B>,
    /// `ln` (PyTorch's `nn.LayerNorm`, eps 1e-5).
    pub ln: LayerNorm<B>,
    /// `mlp.0`: vision width → vision width / 4.
    pub mlp_0: Linear<B>,
    /// `mlp.2`: vision width / 4 → vision width.
    pub mlp_2: Linear<B>,
}

impl<B: ClipBackend> Generator<B> {
    fn init(tw: usize, vw: usize, device: &B::Device) -> Self {
        Self {
            fc: crate::init::linear(tw, vw, device),
            ln: LayerNormConfig::new(vw).with_epsilon(LN_EPS).init(device),
            mlp_0: crate::init::linear(vw, vw / 4, device),
            mlp_2: crate::init::linear(vw / 4, vw, device),
        }
    }

    /// # Shapes
    /// - `v`: `[n, vw]`, `t`: `[m, tw]`, output `[n, vw]`
    ///
    /// `half`: every weight and every op's output rounded to fp16, as the
    /// reference's base generator runs.
    pub fn forward(&self, v: Tensor<B, 2>, t: Tensor<B, 2>, half: bool) -> Tensor<B, 2> {
        let r = |x: Tensor<B, 2>| round_if(x, half);
        let vw = self.fc.weight.dims()[1];
        let t = linear(&self.fc, t, half); // [m, vw]
        let scores = r(r(v.matmul(t.clone().transpose())).div_scalar((vw as f64).sqrt()));
        let a = r(softmax(scores, 1)); // over the text tokens
        let x = r(a.matmul(t));
        let x = if half {
            // PyTorch's half LayerNorm: statistics in f32, fp16 weights and output.
            let mean = x.clone().mean_dim(1);
            let centred = x - mean;
            let var = centred.clone().powi_scalar(2).mean_dim(1);
            let normed = centred / var.add_scalar(LN_EPS).sqrt();
            let gamma = round_f16(self.ln.gamma.val()).unsqueeze_dim(0);
            let y = normed * gamma;
            r(match &self.ln.beta {
                Some(b) => y + round_f16(b.val()).unsqueeze_dim(0),
                None => y,
            })
        } else {
            self.ln.forward(x)
        };
        let x = r(relu(linear(&self.mlp_0, x, half)));
        linear(&self.mlp_2, x, half)
    }
}

/// COMMA's trained tensors under the reference's names
/// (`MultiModalPromptLearner`).
#[derive(Module, Debug)]
pub struct PromptLearner<B: Backend> {
    /// `[n_ctx, text width]`
    pub ctx: Param<Tensor<B, 2>>,
    /// Text width → vision width: the vision prompts of the input layer.
    pub proj: Linear<B>,
    /// `[depth − 1, n_ctx, text width]`: blocks 1..depth−1's text prompts.
    pub compound_prompts_text: Param<Tensor<B, 3>>,
    /// Generates block 1's vision prompts from `proj(ctx)` and `ctx`.
    pub compound_prompt_projections_image_base: Generator<B>,
    /// Generator k generates block k+2's vision prompts from block k+1's
    /// vision prompts and text prompts.
    pub compound_prompt_projections_image: Vec<Generator<B>>,
}

/// COMMA around a frozen CLIP.
#[derive(Module, Debug)]
pub struct Comma<B: Backend> {
    pub prompt_learner: PromptLearner<B>,
    /// Frozen, and outside the module's parameters and records.
    pub clip: crate::Frozen<Clip<B>>,
    pub kp_weight: f64,
    pub fp16: bool,
    pub train_generators: bool,
    pub ctx_init: String,
    /// The current class set (frozen, outside parameters and records).
    pub classes: crate::Frozen<Option<CommaClasses<B>>>,
}

/// What stays fixed for a class set.
#[derive(Module, Debug)]
pub struct CommaClasses<B: Backend> {
    /// The prompts' token ids padded to CLIP's context, `[classes, context]`.
    pub tokens: Tensor<B, 2, Int>,
    /// End-token positions, `[classes]`.
    pub eot: Tensor<B, 1, Int>,
    /// The KP target: frozen CLIP's last block output for the template
    /// prompts, each token L2-normalised, `[classes, context, text width]`.
    pub kp_target: Tensor<B, 3>,
}

/// Everything COMMA's loss needs from one batch.
pub struct CommaOutput<B: Backend> {
    /// `[batch, classes]`
    pub logits: Tensor<B, 2>,
    /// `1 − mean cos` between the prompted and the frozen text tower's last
    /// block outputs, `[1]`.
    pub kp: Tensor<B, 1>,
    /// The KP weight.
    pub kp_weight: f64,
}

/// The prompts of every layer for one forward.
struct Prompts<B: Backend> {
    /// `[n_ctx, tw]` (rounded where the reference rounds).
    ctx: Tensor<B, 2>,
    /// The input layer's vision prompts `[n_ctx, vw]`.
    shared: Tensor<B, 2>,
    /// Blocks 1..depth−1's text prompts, each `[n_ctx, tw]`.
    text: Vec<Tensor<B, 2>>,
    /// Blocks 1..depth−1's vision prompts, each `[n_ctx, vw]`.
    vision: Vec<Tensor<B, 2>>,
}

/// Replaces the prompt tokens at the input of blocks 1..=`prompts.len()`:
/// text at positions `1..1+n`, vision the last `n`.
struct ReplaceHook<'a, B: Backend> {
    prompts: &'a [Tensor<B, 2>],
    text: bool,
    half: bool,
}

impl<B: ClipBackend> BlockHook<B> for ReplaceHook<'_, B> {
    fn before_block(&mut self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if layer == 0 || layer > self.prompts.len() {
            return x;
        }
        let p = self.prompts[layer - 1].clone();
        let p = round_if(p, self.half);
        let [batch, seq, width] = x.dims();
        let n = p.dims()[0];
        let p = p.unsqueeze_dim::<3>(0).expand([batch, n, width]);
        if self.text {
            let head = x.clone().narrow(1, 0, 1);
            let tail = x.narrow(1, 1 + n, seq - 1 - n);
            Tensor::cat(vec![head, p, tail], 1)
        } else {
            Tensor::cat(vec![x.narrow(1, 0, seq - n), p], 1)
        }
    }
}

impl<B: ClipBackend> Comma<B> {
    /// Prompt depth (layers with prompts, the input included).
    pub fn depth(&self) -> usize {
        self.prompt_learner.compound_prompts_text.dims()[0] + 1
    }

    /// Prompt tokens per layer.
    pub fn n_ctx(&self) -> usize {
        self.prompt_learner.ctx.dims()[0]
    }

    /// What is trained: `ctx`, `proj`, the deep text prompts, and the
    /// generators when `train_generators`.
    pub fn num_trainable_params(&self) -> usize {
        self.prompt_params()
            + if self.train_generators {
                self.generator_params()
            } else {
                0
            }
    }

    /// The parameter count as the reference declares it (`requires_grad`),
    /// generators and the overwritten `compound_prompts_image` included.
    pub fn num_declared_params(&self) -> usize {
        let image = (self.depth() - 1) * self.n_ctx() * vision_width(&self.clip);
        self.prompt_params() + self.generator_params() + image
    }

    /// `ctx`, `proj` and the deep text prompts.
    fn prompt_params(&self) -> usize {
        let pl = &self.prompt_learner;
        pl.ctx.num_params() + pl.proj.num_params() + pl.compound_prompts_text.num_params()
    }

    /// The vision-prompt generators.
    fn generator_params(&self) -> usize {
        let pl = &self.prompt_learner;
        pl.compound_prompt_projections_image_base.num_params()
            + pl.compound_prompt_projections_image
                .iter()
                .map(Module::num_params)
                .sum::<usize>()
    }

    /// The prompts of every layer (`MultiModalPromptLearner.forward`).
    fn prompts(&self) -> Prompts<B> {
        let mut p = self.prompts_without_vision();
        p.vision = self.generate(&p);
        p
    }

    /// `ctx`, the input layer's vision prompts and the deep text prompts.
    fn prompts_without_vision(&self) -> Prompts<B> {
        let pl = &self.prompt_learner;
        let ctx = round_if(pl.ctx.val(), self.fp16);
        let shared = linear(&pl.proj, ctx.clone(), self.fp16);
        let all_text = pl.compound_prompts_text.val();
        let [deep, n, tw] = all_text.dims();
        let text = (0..deep)
            .map(|i| all_text.clone().narrow(0, i, 1).reshape([n, tw]))
            .collect();
        Prompts {
            ctx,
            shared,
            text,
            vision: Vec::new(),
        }
    }

    /// The deep vision prompts, each generated from the previous layer's
    /// vision and text prompts.
    fn generate(&self, p: &Prompts<B>) -> Vec<Tensor<B, 2>> {
        let pl = &self.prompt_learner;
        let cut = |x: Tensor<B, 2>| if self.train_generators { x } else { x.detach() };
        let mut vision = Vec::with_capacity(p.text.len());
        if !p.text.is_empty() {
            let base = &pl.compound_prompt_projections_image_base;
            vision.push(cut(base.forward(
                cut(p.shared.clone()),
                cut(p.ctx.clone()),
                self.fp16,
            )));
            for (k, g) in pl.compound_prompt_projections_image.iter().enumerate() {
                let v = g.forward(vision[k].clone(), cut(p.text[k].clone()), false);
                vision.push(cut(v));
            }
        }
        vision
    }

    /// The prompted text tower: the last block's output for every position
    /// `[classes, context, tw]` and the projected, unnormalised text features
    /// `[classes, projection_dim]`.
    fn text_side(&self, p: &Prompts<B>, set: &CommaClasses<B>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let text = &self.clip.text_model;
        let emb = round_if(text.token_embeddings(set.tokens.clone()), self.fp16);
        let [classes, seq, tw] = emb.dims();
        let n = self.n_ctx();
        let ctx = p.ctx.clone().unsqueeze_dim::<3>(0).expand([classes, n, tw]);
        let x = Tensor::cat(
            vec![
                emb.clone().narrow(1, 0, 1),
                ctx,
                emb.narrow(1, 1 + n, seq - 1 - n),
            ],
            1,
        );
        let x = text.add_positions(x);
        let mut hook = ReplaceHook {
            prompts: &p.text,
            text: true,
            half: self.fp16,
        };
        let hidden = text
            .encoder
            .forward_range(x, 0..text.encoder.depth(), true, &mut hook);
        let pooled = text.pool(hidden.clone(), set.eot.clone());
        (hidden, self.clip.text_projection.forward(pooled))
    }

    /// The prompted image features, unnormalised `[batch, projection_dim]`.
    fn image_side(&self, p: &Prompts<B>, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let vision = &self.clip.vision_model;
        let x = vision.embeddings.forward(images);
        let [batch, _, vw] = x.dims();
        let n = self.n_ctx();
        let shared = p
            .shared
            .clone()
            .unsqueeze_dim::<3>(0)
            .expand([batch, n, vw]);
        let x = vision.pre_layrnorm.forward(Tensor::cat(vec![x, shared], 1));
        let mut hook = ReplaceHook {
            prompts: &p.vision,
            text: false,
            half: self.fp16,
        };
        let hidden = vision.forward_embedded_with(x, &mut hook);
        self.clip.visual_projection.forward(vision.pool(hidden))
    }

    fn logits(&self, image: Tensor<B, 2>, text: Tensor<B, 2>) -> Tensor<B, 2> {
        let scale = self.clip.scale().reshape([1, 1]);
        l2_normalize(image).matmul(l2_normalize(text).transpose()) * scale
    }

    fn class_set(&self) -> &CommaClasses<B> {
        self.classes
            .0
            .as_ref()
            .expect("Method::set_classes is called before scoring or training")
    }

    /// Logits and the KP term for a batch against the current class set.
    pub fn forward_with_kp(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        self.forward_with(&self.prompts(), images)
    }

    fn forward_with(&self, p: &Prompts<B>, images: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let set = self.class_set();
        let (hidden, text) = self.text_side(p, set);
        let image = self.image_side(p, images);
        let [c, l, w] = hidden.dims();
        let pred = hidden.reshape([c * l, w]);
        let target = set.kp_target.clone().reshape([c * l, w]);
        // PyTorch's cosine similarity (eps 1e-7) of the normalised tokens.
        let pred = l2_normalize(pred);
        let dot = (pred.clone() * target.clone()).sum_dim(1);
        let norms = (pred.powi_scalar(2).sum_dim(1) * target.powi_scalar(2).sum_dim(1))
            .sqrt()
            .clamp_min(1e-7);
        let kp = (dot / norms).mean().neg().add_scalar(1.0);
        (self.logits(image, text), kp)
    }
}

/// `ids` padded with zeros to `context` per row.
fn pad_rows(ids: &[i64], rows: usize, seq: usize, context: usize) -> Vec<i64> {
    let mut out = vec![0i64; rows * context];
    for r in 0..rows {
        out[r * context..r * context + seq].copy_from_slice(&ids[r * seq..(r + 1) * seq]);
    }
    out
}

impl<B: ClipBackend> Method<B> for Comma<B> {
    const NAME: &'static str = "comma";
    const SUMMARY: &'static str = "COMMA (AAAI 2024): deep prompts in both towers, vision prompts \
         generated from both towers' previous prompts, knowledge-preservation loss";
    type Config = CommaConfig;
    type Output = CommaOutput<B>;
    type Text = Tensor<B, 2>;

    /// The learned prompts ("a photo of a {name}.": the context replaces
    /// the first words), then the KP target's prompts (the template).
    fn prompt_texts(config: &CommaConfig, classes: &[String], template: &str) -> Vec<String> {
        let mut texts: Vec<String> = classes.iter().map(|c| config.prompt(c)).collect();
        texts.extend(classes.iter().map(|c| fill_template(template, c)));
        texts
    }

    fn init(
        config: &CommaConfig,
        clip: Clip<B>,
        prompts: &ClassPrompts,
        device: &B::Device,
    ) -> Result<Self> {
        let config = CommaConfig {
            prompt_depth: config.validate(
                clip.text_model.encoder.depth(),
                clip.vision_model.encoder.depth(),
            )?,
            ..config.clone()
        };
        // The context's words are the first prompt's tokens after SOS.
        let ids: Vec<i64> = prompts.ids[1..1 + config.n_ctx].to_vec();
        let ids = Tensor::from_data(TensorData::new(ids, [config.n_ctx]), device);
        config.init(clip, ids, device).set_classes(prompts)
    }

    fn load(
        config: &CommaConfig,
        clip: Clip<B>,
        path: &std::path::Path,
        device: &B::Device,
    ) -> Result<Self> {
        crate::methods::comma_io::load_comma(path, clip, config, device)
    }

    fn config(&self) -> CommaConfig {
        CommaConfig {
            n_ctx: self.n_ctx(),
            ctx_init: self.ctx_init.clone(),
            prompt_depth: self.depth(),
            kp_weight: self.kp_weight,
            fp16: self.fp16,
            train_generators: self.train_generators,
        }
    }

    /// `prompts` holds 2·C rows ([`Method::prompt_texts`]): the learned
    /// prompts, then the template prompts of the KP target.
    fn set_classes(mut self, prompts: &ClassPrompts) -> Result<Self> {
        let device = self.clip.visual_projection.weight.device();
        let classes = prompts.classes.len();
        if prompts.rows() != 2 * classes {
            return Err(Error::MethodConfig {
                method: "comma",
                key: "prompts",
                msg: format!(
                    "needs 2 prompts per class (learned, template); got {} for {classes} classes",
                    prompts.rows()
                ),
            });
        }
        let context = self
            .clip
            .text_model
            .embeddings
            .position_embedding
            .weight
            .dims()[0];
        let padded = pad_rows(&prompts.ids, 2 * classes, prompts.seq, context);
        let (learned, template) = padded.split_at(classes * context);
        let rows = |ids: &[i64]| {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids.to_vec(), [classes, context]),
                &device,
            )
        };
        let (tokens, template) = (rows(learned), rows(template));
        let eot = Tensor::from_data(
            TensorData::new(prompts.eot[..classes].to_vec(), [classes]),
            &device,
        );
        // The KP target: frozen CLIP's last block output for the template.
        let text = &self.clip.text_model;
        let hidden = text.encoder.forward(text.embed(template), true);
        let [c, l, w] = hidden.dims();
        let kp_target = l2_normalize(hidden.reshape([c * l, w])).reshape([c, l, w]);
        self.classes = crate::Frozen::new(Some(CommaClasses {
            tokens,
            eot,
            kp_target,
        }));
        Ok(self)
    }

    /// Without `train_generators` the generators run on the inner backend
    /// (their output is a constant to the loss, and a graph built for it
    /// would never be freed).
    fn forward(&self, images: Tensor<B, 4>) -> CommaOutput<B>
    where
        B: ClipAutodiffBackend,
    {
        let mut p = self.prompts_without_vision();
        p.vision = if self.train_generators {
            self.generate(&p)
        } else {
            let inner: Comma<B::InnerBackend> = self.valid();
            let q = inner.prompts();
            q.vision.into_iter().map(Tensor::from_inner).collect()
        };
        let (logits, kp) = self.forward_with(&p, images);
        CommaOutput {
            logits,
            kp,
            kp_weight: self.kp_weight,
        }
    }

    fn text(&self) -> Tensor<B, 2> {
        let p = self.prompts();
        self.text_side(&p, self.class_set()).1
    }

    fn predict(&self, images: Tensor<B, 4>, text: &Tensor<B, 2>, _: Classes) -> Prediction<B> {
        let p = self.prompts();
        let image = self.image_side(&p, images);
        Prediction {
            logits: self.logits(image, text.clone()),
            heads: Vec::new(),
        }
    }

    fn state(&self) -> Vec<crate::methods::NamedTensor> {
        crate::methods::comma_io::comma_state(self)
    }

    fn num_trainable_params(&self) -> usize {
        Comma::num_trainable_params(self)
    }
}

impl<B: ClipBackend> Comma<B> {
    /// The generated vision prompts of blocks 1..depth−1, `[depth − 1,
    /// n_ctx, vw]` (`None` at depth 1).
    pub fn vision_prompts(&self) -> Option<Tensor<B, 3>> {
        let p = self.prompts();
        if p.vision.is_empty() {
            return None;
        }
        Some(Tensor::stack(p.vision, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    /// Every f32 rounded as `half` rounds it (nearest, ties to even),
    /// normal and subnormal fp16 values and ties included.
    #[test]
    fn round_f16_is_the_nearest_fp16_value() {
        let mut xs: Vec<f32> = Vec::new();
        let mut s = 0x2545_f491_u32;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // magnitudes from 1e-9 to 1e4, both signs
            let m = (s % 10_000) as f32 / 10_000.0;
            let e = ((s >> 16) % 30) as i32 - 30 + 14;
            let x = (1.0 + m) * 2f32.powi(e);
            xs.push(if s & 1 == 0 { x } else { -x });
        }
        // exact ties between two fp16 values, normal and subnormal
        for k in 0..64 {
            xs.push((1024.0 + k as f32 + 0.5) * 2f32.powi(-10));
            xs.push((k as f32 + 0.5) * 2f32.powi(-24));
        }
        xs.extend([0.0, 2f32.powi(-14), 2f32.powi(-15), 65504.0, 1.0 / 3.0]);
        let n = xs.len();
        let t = Tensor::<B, 1>::from_floats(xs.as_slice(), &Default::default());
        let got: Vec<f32> = round_f16(t).into_data().to_vec().unwrap();
        for i in 0..n {
            let want = half::f16::from_f32(xs[i]).to_f32();
            assert_eq!(got[i], want, "{:e}", xs[i]);
        }
        assert_eq!(got.len(), n);
    }

    #[test]
    fn the_gradient_passes_round_f16_unchanged() {
        type A = burn::backend::Autodiff<B>;
        let x =
            Tensor::<A, 1>::from_floats([0.1f32, -3.3, 1e-6], &Default::default()).require_grad();
        let y = round_f16(x.clone()).mul_scalar(2.0).sum();
        let g: Vec<f32> = x.grad(&y.backward()).unwrap().into_data().to_vec().unwrap();
        assert_eq!(g, vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn depth_is_clamped_to_a_small_clip_and_settings_are_checked() {
        let c = CommaConfig::default();
        assert_eq!(c.validate(12, 12).unwrap(), 9);
        assert_eq!(c.validate(3, 4).unwrap(), 3);
        let bad = CommaConfig {
            n_ctx: 5,
            ..CommaConfig::default()
        };
        let e = bad.validate(12, 12).unwrap_err().to_string();
        assert!(e.contains("ctx_init") && e.contains("n_ctx = 5"), "{e}");
        assert!(CommaConfig {
            prompt_depth: 0,
            ..CommaConfig::default()
        }
        .validate(12, 12)
        .is_err());
        assert_eq!(c.prompt("red_car"), "a photo of a red car.");
    }

    /// The reference's count at ViT-B/16 (text 512, vision 768), depth 9
    /// and 3: trained 403,200 / 397,056; declared 5,946,624 / 1,782,912.
    #[test]
    fn parameter_counts_at_vit_b16() {
        let device = Default::default();
        let tw = 512;
        let vw = 768;
        let per_gen = Generator::<B>::init(tw, vw, &device).num_params();
        assert_eq!(per_gen, 691_392);
        for (depth, trained, declared) in [(9, 403_200, 5_946_624), (3, 397_056, 1_782_912)] {
            let ctx = 2 * tw;
            let proj = tw * vw + vw;
            let text = (depth - 1) * 2 * tw;
            let image = (depth - 1) * 2 * vw;
            assert_eq!(ctx + proj + text, trained);
            assert_eq!(ctx + proj + text + image + (depth - 1) * per_gen, declared);
        }
    }
}
