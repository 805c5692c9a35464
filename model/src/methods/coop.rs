//! CoOp: Context Optimization (Zhou et al., "Learning to Prompt for
//! Vision-Language Models", IJCV 2022).
//!
//! The class prompts are `"X X … X <class name>."`: the `n_ctx` placeholder
//! words are replaced, after the token embedding, by learned context vectors
//! `ctx` (one set shared by every class, or one per class with `csc`); the
//! rest of the prompt keeps CLIP's frozen token embeddings. The embedded
//! prompts get CLIP's positional embeddings and go through the frozen causal
//! text transformer, `ln_final` at the end token and the text projection.
//! Logits are `exp(logit_scale) · cos(image, text)`; the loss is plain cross
//! entropy. Only `ctx` is trained.
//!
//! Reference: `KaiyangZhou/CoOp` `trainers/coop.py` (`PromptLearner`,
//! `TextEncoder`, `CustomCLIP`, `CoOp.load_model`); parity test
//! `tests/coop_parity.rs` against `tests/scripts/gen_coop_fixtures.py`, which
//! also runs that file's own code.
//!
//! # Reference training settings (for the trainer; ViT-B/16)
//!
//! From `configs/trainers/CoOp/vit_b16{,_ep50,_ep100}{,_ctxv1}.yaml`, the
//! `TRAINER.COOP` defaults in `train.py::extend_cfg`, Dassl's
//! `dassl/config/defaults.py`, `scripts/coop/main.sh` / `eval.sh` and `COOP.md`:
//!
//! | setting | value | source |
//! |---|---|---|
//! | optimizer | SGD, lr 0.002, momentum 0.9, weight decay 5e-4, dampening 0, no Nesterov; only `prompt_learner` (= `ctx`) | yaml `OPTIM.NAME/LR`; Dassl `OPTIM.MOMENTUM/WEIGHT_DECAY/SGD_*` defaults; `CoOp.build_model` |
//! | schedule | cosine over `MAX_EPOCH` epochs, stepped once per epoch (after the epoch's last batch) | yaml `LR_SCHEDULER: cosine`; `CoOp.forward_backward` calls `update_lr` at the last batch |
//! | warm-up | epoch 0 at a constant lr 1e-5 (`WARMUP_EPOCH 1`, `WARMUP_TYPE constant`, `WARMUP_CONS_LR 1e-5`); then the cosine restarts from its beginning (`WARMUP_RECOUNT` True): epoch e ≥ 1 (0-based) uses 0.001 · (1 + cos(π (e − 1) / MAX_EPOCH)) | yaml `WARMUP_*`; Dassl `optim/lr_scheduler.py` |
//! | epochs | 1 shot: 50 (`vit_b16_ep50`); 2 and 4 shots: 100 (`vit_b16_ep100`); 8 and 16 shots: 200 (`vit_b16`); ImageNet: 50 for every shot count (`*_ep50`) | `COOP.md` (written for rn50; the vit_b16 files have the same three epoch variants) |
//! | train batch size | 32 (RandomSampler; `drop_last` when the set has ≥ 32 images) | yaml `DATALOADER.TRAIN_X.BATCH_SIZE`; Dassl `data_manager.py` |
//! | test batch size | 100 | yaml `DATALOADER.TEST.BATCH_SIZE` |
//! | N_CTX | 16 (`main.sh` argument; the paper's M = 16; also 4, 8 in ablations) | `train.py` default, `main.sh` |
//! | CTX_INIT | `""` (random, N(0, 0.02²)); `"a photo of a"` in the `*_ctxv1.yaml` configs (then n_ctx = 4) | `train.py`, `vit_b16_ctxv1.yaml` |
//! | CSC | `False` (`main.sh` argument; `True` for the class-specific runs) | `train.py`, `main.sh` |
//! | CLASS_TOKEN_POSITION | `end` (`main.sh` argument; `middle` also reported) | `train.py`, `main.sh` |
//! | PREC | `fp16` by default (the whole CLIP and `ctx` in half precision); `fp32` and `amp` are options | `train.py` (`TRAINER.COOP.PREC`), not set in the yaml files |
//! | train transform | `random_resized_crop` (scale (0.08, 1.0), Dassl's `INPUT.RRCROP_SCALE` default; bicubic; 224), `random_flip`, `normalize` (CLIP mean/std) | yaml `INPUT.TRANSFORMS`; Dassl `transforms.py` |
//! | test transform | resize the shorter side to 224 (bicubic), center crop 224, normalize | Dassl `build_transform(is_train=False)` |
//! | seeds | 1, 2, 3 | `main.sh` |
//! | evaluated model | the last epoch's (`TEST.FINAL_MODEL last_step`); checkpoint `prompt_learner/model.pth.tar-<MAX_EPOCH>` | Dassl defaults, `save_model` |
//! | distribution shift | the ImageNet model (16 shots, `vit_b16_ep50`) evaluated on ImageNetV2/-Sketch/-A/-R, `--load-epoch 50` | `eval.sh`, `COOP.md` |

use burn::module::{AutodiffModule, Module, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use crate::clip::{Clip, NoHook};
use crate::methods::{ClassPrompts, Classes, Method, Prediction};
use crate::Frozen;
use crate::{ClipAutodiffBackend, ClipBackend};

/// Where the class-name tokens go relative to the context
/// (`TRAINER.COOP.CLASS_TOKEN_POSITION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassTokenPosition {
    /// `[SOS] ctx… name… . [EOT]` (the default).
    #[default]
    End,
    /// `[SOS] ctx[..n_ctx/2] name… ctx[n_ctx/2..] . [EOT]`.
    Middle,
    /// `[SOS] name… ctx… . [EOT]`.
    Front,
}

impl ClassTokenPosition {
    /// The reference's spelling: `end`, `middle` or `front`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::End => "end",
            Self::Middle => "middle",
            Self::Front => "front",
        }
    }
}

impl std::str::FromStr for ClassTokenPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "end" => Ok(Self::End),
            "middle" => Ok(Self::Middle),
            "front" => Ok(Self::Front),
            other => Err(format!(
                "class token position `{other}` is not one of end, middle, front"
            )),
        }
    }
}

/// CoOp's hyper-parameters (`TRAINER.COOP.*` in the reference configs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoopConfig {
    /// Number of context tokens M (`N_CTX`). Default 16. Ignored when
    /// `ctx_init` is set.
    pub n_ctx: usize,
    /// Words whose token embeddings initialise the context (`CTX_INIT`), e.g.
    /// `"a photo of a"`; `_` counts as a space and the number of words sets
    /// the number of context tokens. Default `""`: random initialisation.
    pub ctx_init: String,
    /// Class-specific context (`CSC`): one context per class. Default false.
    /// As in the reference, ignored when `ctx_init` is set.
    pub csc: bool,
    /// Where the class tokens go (`CLASS_TOKEN_POSITION`). Default `end`.
    pub class_token_position: ClassTokenPosition,
    /// Standard deviation of the random initialisation. Default 0.02.
    pub init_std: f64,
}

impl Default for CoopConfig {
    fn default() -> Self {
        Self {
            n_ctx: 16,
            ctx_init: String::new(),
            csc: false,
            class_token_position: ClassTokenPosition::End,
            init_std: 0.02,
        }
    }
}

impl crate::methods::MethodConfig for CoopConfig {}

impl CoopConfig {
    /// `ctx_init` with `_` read as a space, if set.
    fn init_words(&self) -> Option<String> {
        (!self.ctx_init.is_empty()).then(|| self.ctx_init.replace('_', " "))
    }

    /// The number of context tokens: the number of words of `ctx_init`
    /// (split on single spaces, as the reference does) if set, else `n_ctx`.
    pub fn context_len(&self) -> usize {
        match self.init_words() {
            Some(words) => words.split(' ').count(),
            None => self.n_ctx,
        }
    }

    /// Whether the context is class-specific (never with `ctx_init`).
    pub fn class_specific(&self) -> bool {
        self.csc && self.ctx_init.is_empty()
    }

    /// The words every prompt starts with: `ctx_init`, or `"X X … X"`.
    pub fn prompt_prefix(&self) -> String {
        self.init_words()
            .unwrap_or_else(|| vec!["X"; self.n_ctx].join(" "))
    }

    /// The class prompts to tokenise (see [`coop_prompts`]).
    pub fn prompts<S: AsRef<str>>(&self, classnames: &[S]) -> Vec<String> {
        coop_prompts(&self.prompt_prefix(), classnames)
    }

    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |key, msg| crate::Error::MethodConfig {
            method: "coop",
            key,
            msg,
        };
        if self.context_len() == 0 {
            return Err(bad(
                "n_ctx",
                "must be at least 1 (or give ctx_init words)".into(),
            ));
        }
        if !(self.init_std >= 0.0 && self.init_std.is_finite()) {
            return Err(bad(
                "init_std",
                format!("{} must be a finite number >= 0", self.init_std),
            ));
        }
        Ok(())
    }

    /// Builds CoOp around a CLIP, which it freezes. The context is random
    /// (N(0, init_std²), `[n_ctx, width]`, or `[classes, n_ctx, width]` with
    /// `csc`) or, with `ctx_init`, the token embeddings of its words, read
    /// from the prompts (row 0, positions `1..=n_ctx`), which
    /// [`CoopConfig::prompts`] starts with those words: the reference embeds
    /// `clip.tokenize(ctx_init)` and takes the same positions.
    pub fn init<B: ClipBackend>(
        &self,
        clip: Clip<B>,
        prompts: &CoopPrompts<B>,
        device: &B::Device,
    ) -> crate::Result<Coop<B>> {
        self.validate()?;
        let bad_prompts = |msg| crate::Error::Prompts {
            method: "coop",
            msg,
        };
        let n_ctx = self.context_len();
        let width = clip.text_model.final_layer_norm.gamma.dims()[0];
        let ctx = if self.init_words().is_some() {
            if prompts.seq() < 1 + n_ctx {
                return Err(bad_prompts(format!(
                    "the prompts have {} tokens, fewer than 1 + {n_ctx} context tokens",
                    prompts.seq()
                )));
            }
            let ids = prompts.tokens.clone().narrow(0, 0, 1).narrow(1, 1, n_ctx);
            let emb = clip.text_model.token_embeddings(ids);
            CoopContext::Generic(Param::from_tensor(emb.reshape([n_ctx, width]).detach()))
        } else if self.csc {
            CoopContext::ClassSpecific(Param::from_tensor(crate::init::random(
                [prompts.classes(), n_ctx, width],
                Distribution::Normal(0.0, self.init_std),
                device,
            )))
        } else {
            CoopContext::Generic(Param::from_tensor(crate::init::random(
                [n_ctx, width],
                Distribution::Normal(0.0, self.init_std),
                device,
            )))
        };
        let model = Coop::new(clip, ctx, self.class_token_position);
        model.check_prompts(prompts).map_err(bad_prompts)?;
        Ok(model)
    }
}

/// CoOp's prompt strings: `prefix + " " + name + "."`, with every `_` in
/// the class name replaced by a space. `prefix` is `"X X … X"` (`n_ctx`
/// times) or the `ctx_init` words ([`CoopConfig::prompt_prefix`]).
pub fn coop_prompts<S: AsRef<str>>(prefix: &str, classnames: &[S]) -> Vec<String> {
    classnames
        .iter()
        .map(|name| format!("{prefix} {}.", coop_class_name(name.as_ref())))
        .collect()
}

/// A class name as it appears in the prompt (`_` → space). Its token count
/// (CLIP's BPE, no start/end tokens) is the name length that
/// [`CoopPrompts::new`] needs for the `middle` and `front` positions.
pub fn coop_class_name(name: &str) -> String {
    name.replace('_', " ")
}

/// The learned context (`prompt_learner.ctx`).
#[derive(Module, Debug)]
pub enum CoopContext<B: Backend> {
    /// `[n_ctx, width]`, shared by every class.
    Generic(Param<Tensor<B, 2>>),
    /// `[classes, n_ctx, width]`, one per class (`csc`).
    ClassSpecific(Param<Tensor<B, 3>>),
}

impl<B: ClipBackend> CoopContext<B> {
    /// The context from values in the reference layout: rank 2 is generic,
    /// rank 3 class-specific. Trainable.
    pub fn from_data(data: TensorData, device: &B::Device) -> Result<Self, String> {
        match data.shape.len() {
            2 => Ok(Self::Generic(Param::from_tensor(Tensor::from_data(
                data, device,
            )))),
            3 => Ok(Self::ClassSpecific(Param::from_tensor(Tensor::from_data(
                data, device,
            )))),
            _ => Err(format!(
                "a CoOp context has shape [n_ctx, width] or [classes, n_ctx, width], not {:?}",
                data.shape
            )),
        }
    }

    /// The shape in the reference layout.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Generic(p) => p.dims().to_vec(),
            Self::ClassSpecific(p) => p.dims().to_vec(),
        }
    }

    /// Number of context tokens.
    pub fn n_ctx(&self) -> usize {
        let s = self.shape();
        s[s.len() - 2]
    }

    /// Token width.
    pub fn width(&self) -> usize {
        let s = self.shape();
        s[s.len() - 1]
    }

    /// The number of classes of a class-specific context.
    pub fn classes(&self) -> Option<usize> {
        match self {
            Self::Generic(_) => None,
            Self::ClassSpecific(p) => Some(p.dims()[0]),
        }
    }

    /// The values, in the reference layout.
    pub fn to_data(&self) -> TensorData {
        match self {
            Self::Generic(p) => p.val().into_data(),
            Self::ClassSpecific(p) => p.val().into_data(),
        }
    }

    /// The context of every class.
    ///
    /// # Shapes
    /// - output: `[classes, n_ctx, width]`
    pub fn per_class(&self, classes: usize) -> Tensor<B, 3> {
        match self {
            Self::Generic(p) => {
                let [n_ctx, width] = p.dims();
                p.val()
                    .unsqueeze_dim::<3>(0)
                    .expand([classes, n_ctx, width])
            }
            Self::ClassSpecific(p) => p.val(),
        }
    }
}

/// The tokenised class prompts with what CoOp derives from them.
#[derive(Debug, Clone)]
pub struct CoopPrompts<B: Backend> {
    /// Token ids of [`CoopConfig::prompts`], `[classes, seq]`. May be cut
    /// after the longest prompt's end token (`TokenBatch::trimmed`): under
    /// the causal mask this gives the same features.
    pub tokens: Tensor<B, 2, Int>,
    /// End-token position of each prompt, `[classes]`.
    pub eot: Tensor<B, 1, Int>,
    eot_host: Vec<usize>,
    name_lens: Vec<usize>,
}

impl<B: ClipBackend> CoopPrompts<B> {
    /// From row-major token ids `[rows, seq]`, the end-token positions and
    /// each class name's token count (BPE tokens of [`coop_class_name`],
    /// without start/end tokens: the reference's `name_lens`).
    pub fn new(
        ids: &[i64],
        rows: usize,
        seq: usize,
        eot: &[i64],
        name_lens: Vec<usize>,
        device: &B::Device,
    ) -> Result<Self, String> {
        if rows == 0 {
            return Err("no class prompts".into());
        }
        if ids.len() != rows * seq || eot.len() != rows || name_lens.len() != rows {
            return Err(format!(
                "{rows} prompts of {seq} tokens need {} ids, {rows} end positions and {rows} \
                 name lengths; got {}, {} and {}",
                rows * seq,
                ids.len(),
                eot.len(),
                name_lens.len()
            ));
        }
        let eot_host = eot
            .iter()
            .map(|&e| usize::try_from(e).ok().filter(|&e| e < seq))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("end-token positions {eot:?} must lie in 0..{seq}"))?;
        let tokens =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids.to_vec(), [rows * seq]), device)
                .reshape([rows, seq]);
        let eot = Tensor::from_data(TensorData::new(eot.to_vec(), [rows]), device);
        Ok(Self {
            tokens,
            eot,
            eot_host,
            name_lens,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.name_lens.len()
    }

    /// Tokens per prompt.
    pub fn seq(&self) -> usize {
        self.tokens.dims()[1]
    }

    /// Each class name's token count.
    pub fn name_lens(&self) -> &[usize] {
        &self.name_lens
    }

    /// Each prompt's end-token position.
    pub fn eot_positions(&self) -> &[usize] {
        &self.eot_host
    }
}

/// CoOp around a frozen CLIP.
#[derive(Module, Debug)]
pub struct Coop<B: Backend> {
    /// The learned context, the only trainable tensor.
    pub ctx: CoopContext<B>,
    /// Frozen, and outside the module's parameters and records.
    pub clip: Frozen<Clip<B>>,
    /// Where the class tokens go.
    #[module(skip)]
    pub class_token_position: ClassTokenPosition,
    /// The current class set's prompts (host data).
    #[module(skip)]
    pub class_prompts: Option<ClassPrompts>,
}

impl<B: ClipBackend> Coop<B> {
    /// CoOp from a context, freezing `clip`.
    pub fn new(
        clip: Clip<B>,
        ctx: CoopContext<B>,
        class_token_position: ClassTokenPosition,
    ) -> Self {
        Self {
            ctx,
            clip: Frozen::new(clip.no_grad()),
            class_token_position,
            class_prompts: None,
        }
    }

    /// Number of context tokens.
    pub fn n_ctx(&self) -> usize {
        self.ctx.n_ctx()
    }

    /// Number of trainable parameters (the context).
    pub fn num_trainable_params(&self) -> usize {
        self.ctx.num_params()
    }

    /// Checks that prompts fit this model: the context width is the text
    /// tower's, a class-specific context has one row per prompt, and every
    /// prompt has its `n_ctx` context tokens and class tokens before its end
    /// token. Call once before [`Coop::text_features`], which does not check.
    pub fn check_prompts(&self, prompts: &CoopPrompts<B>) -> Result<(), String> {
        let width = self.clip.text_model.final_layer_norm.gamma.dims()[0];
        if self.ctx.width() != width {
            return Err(format!(
                "the context has width {} but the text tower {width}",
                self.ctx.width()
            ));
        }
        let context = self
            .clip
            .text_model
            .embeddings
            .position_embedding
            .weight
            .dims()[0];
        if prompts.seq() > context {
            return Err(format!(
                "the prompts have {} tokens, more than the text tower's {context}",
                prompts.seq()
            ));
        }
        if let Some(n) = self.ctx.classes() {
            if n != prompts.classes() {
                return Err(format!(
                    "the class-specific context has {n} classes but there are {} prompts",
                    prompts.classes()
                ));
            }
        }
        let n_ctx = self.n_ctx();
        for (i, (&eot, &len)) in prompts.eot_host.iter().zip(&prompts.name_lens).enumerate() {
            if 1 + n_ctx + len >= eot {
                return Err(format!(
                    "prompt {i} ends at token {eot}, too early for its start token, {n_ctx} \
                     context tokens, {len} class-name tokens and the final '.'; were the \
                     prompts built with CoopConfig::prompts for this n_ctx?"
                ));
            }
        }
        Ok(())
    }

    /// Where each position of the `end` arrangement `[SOS, ctx…, name…,
    /// rest…]` moves for `middle` and `front` (`None` for `end`).
    ///
    /// # Shapes
    /// - output: `[classes, seq]`, source positions
    fn arrangement(&self, prompts: &CoopPrompts<B>) -> Option<Tensor<B, 2, Int>> {
        let n = self.n_ctx();
        let seq = prompts.seq();
        let rows = prompts.classes();
        let mut index = Vec::with_capacity(rows * seq);
        for &len in &prompts.name_lens {
            let ctx = |k: usize| 1 + k; // context token k in the `end` layout
            let name = |k: usize| 1 + n + k; // class token k
            let mut row = vec![0];
            match self.class_token_position {
                ClassTokenPosition::End => return None,
                ClassTokenPosition::Middle => {
                    let half = n / 2;
                    row.extend((0..half).map(ctx));
                    row.extend((0..len).map(name));
                    row.extend((half..n).map(ctx));
                }
                ClassTokenPosition::Front => {
                    row.extend((0..len).map(name));
                    row.extend((0..n).map(ctx));
                }
            }
            row.extend(1 + n + len..seq);
            index.extend(row.into_iter().map(|p| p as i64));
        }
        let device = prompts.tokens.device();
        Some(
            Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows * seq]), &device)
                .reshape([rows, seq]),
        )
    }

    /// The embedded prompts (`PromptLearner.forward`), before positional
    /// embeddings.
    ///
    /// # Shapes
    /// - output: `[classes, seq, width]`
    pub fn prompt_embeddings(&self, prompts: &CoopPrompts<B>) -> Tensor<B, 3> {
        let [classes, seq] = prompts.tokens.dims();
        let n = self.n_ctx();
        let emb = self
            .clip
            .text_model
            .token_embeddings(prompts.tokens.clone()); // [classes, seq, width]
        let width = emb.dims()[2];
        let prefix = emb.clone().narrow(1, 0, 1); // SOS
        let suffix = emb.narrow(1, 1 + n, seq - 1 - n); // name, '.', EOT, padding
        let x = Tensor::cat(vec![prefix, self.ctx.per_class(classes), suffix], 1);
        match self.arrangement(prompts) {
            None => x,
            Some(index) => {
                let index = index
                    .reshape([classes, seq, 1])
                    .expand([classes, seq, width]);
                x.gather(1, index)
            }
        }
    }

    /// Text features of the class prompts, unnormalised (`TextEncoder`).
    ///
    /// # Shapes
    /// - output: `[classes, projection_dim]`
    pub fn text_features(&self, prompts: &CoopPrompts<B>) -> Tensor<B, 2> {
        let text = &self.clip.text_model;
        let x = text.add_positions(self.prompt_embeddings(prompts));
        let pooled = text.forward_embedded_with(x, prompts.eot.clone(), &mut NoHook);
        self.clip.text_projection.forward(pooled)
    }

    /// Image features, unnormalised (CLIP's frozen image tower).
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - output: `[batch, projection_dim]`
    pub fn image_features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.clip.encode_image(images)
    }

    /// `exp(logit_scale) · cos(image, text)`.
    ///
    /// # Shapes
    /// - `image_features`: `[batch, projection_dim]`
    /// - `text_features`: `[classes, projection_dim]`
    /// - output: `[batch, classes]`
    pub fn logits_from_features(
        &self,
        image_features: Tensor<B, 2>,
        text_features: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        self.clip.logits(image_features, text_features)
    }

    /// Logits of images against text features from [`Coop::text_features`].
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - `text_features`: `[classes, projection_dim]`
    /// - output: `[batch, classes]`
    pub fn logits(&self, images: Tensor<B, 4>, text_features: Tensor<B, 2>) -> Tensor<B, 2> {
        self.logits_from_features(self.image_features(images), text_features)
    }

    /// The whole forward pass (`CustomCLIP.forward`).
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - output: `[batch, classes]`
    pub fn forward(&self, images: Tensor<B, 4>, prompts: &CoopPrompts<B>) -> Tensor<B, 2> {
        self.logits(images, self.text_features(prompts))
    }
}

impl<B: ClipAutodiffBackend> Coop<B> {
    /// [`Coop::image_features`] on the inner (non-autodiff) backend, brought
    /// back as a constant: the frozen image tower records no graph.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - output: `[batch, projection_dim]`
    pub fn image_features_frozen(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let clip: Clip<B::InnerBackend> = self.clip.0.valid();
        Tensor::from_inner(clip.encode_image(images.inner()))
    }
}

/// CoOp's prompt tensors for a tokenised class set.
fn coop_prompts_of<B: ClipBackend>(
    prompts: &ClassPrompts,
    device: &B::Device,
) -> crate::Result<CoopPrompts<B>> {
    CoopPrompts::new(
        &prompts.ids,
        prompts.rows(),
        prompts.seq,
        &prompts.eot,
        prompts.name_lens.clone(),
        device,
    )
    .map_err(|msg| crate::Error::Prompts {
        method: "coop",
        msg,
    })
}

impl<B: ClipBackend> Coop<B> {
    /// The current class set's prompts as tensors.
    fn current_prompts(&self) -> CoopPrompts<B> {
        let prompts = self
            .class_prompts
            .as_ref()
            .expect("Method::set_classes is called before scoring or training");
        coop_prompts_of(prompts, &self.clip.visual_projection.weight.device())
            .expect("prompts were checked by set_classes")
    }
}

impl<B: ClipBackend> Method<B> for Coop<B> {
    const NAME: &'static str = "coop";
    const SUMMARY: &'static str = "CoOp (IJCV 2022): learned context vectors in the text prompt";
    type Config = CoopConfig;
    type Output = Tensor<B, 2>;
    type Text = Tensor<B, 2>;

    /// `ctx_init` or `"X X … X"`, then the name and a full stop; CoOp has no
    /// hand-written template.
    fn prompt_texts(config: &CoopConfig, classes: &[String], _template: &str) -> Vec<String> {
        config.prompts(classes)
    }

    fn init(
        config: &CoopConfig,
        clip: Clip<B>,
        prompts: &ClassPrompts,
        device: &B::Device,
    ) -> crate::Result<Self> {
        let tensors = coop_prompts_of(prompts, device)?;
        config.init(clip, &tensors, device)?.set_classes(prompts)
    }

    fn load(
        config: &CoopConfig,
        clip: Clip<B>,
        path: &std::path::Path,
        device: &B::Device,
    ) -> crate::Result<Self> {
        crate::methods::coop_io::load_coop(path, clip, config.class_token_position, device)
    }

    fn config(&self) -> CoopConfig {
        CoopConfig {
            n_ctx: self.n_ctx(),
            ctx_init: String::new(),
            csc: self.ctx.classes().is_some(),
            class_token_position: self.class_token_position,
            ..CoopConfig::default()
        }
    }

    fn set_classes(mut self, prompts: &ClassPrompts) -> crate::Result<Self> {
        let tensors = coop_prompts_of::<B>(prompts, &self.clip.visual_projection.weight.device())?;
        self.check_prompts(&tensors)
            .map_err(|msg| crate::Error::Prompts {
                method: "coop",
                msg: format!(
                    "{msg}{}",
                    if self.ctx.classes().is_some() {
                        " (a class-specific context, csc = true, scores only the classes it was trained on)"
                    } else {
                        ""
                    }
                ),
            })?;
        self.class_prompts = Some(prompts.clone());
        Ok(self)
    }

    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: ClipAutodiffBackend,
    {
        let image = self.image_features_frozen(images);
        let text = self.text_features(&self.current_prompts());
        self.logits_from_features(image, text)
    }

    fn text(&self) -> Tensor<B, 2> {
        self.text_features(&self.current_prompts())
    }

    fn predict(&self, images: Tensor<B, 4>, text: &Tensor<B, 2>, _: Classes) -> Prediction<B> {
        Prediction {
            logits: self.logits(images, text.clone()),
            heads: Vec::new(),
        }
    }

    fn state(&self) -> Vec<crate::methods::NamedTensor> {
        crate::methods::coop_io::coop_state(self)
    }

    fn num_trainable_params(&self) -> usize {
        Coop::num_trainable_params(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipConfig;

    type B = burn::backend::Flex;

    #[test]
    fn prompt_strings_are_the_references() {
        let c = CoopConfig {
            n_ctx: 4,
            ..CoopConfig::default()
        };
        assert_eq!(
            c.prompts(&["red_car", "cat"]),
            vec!["X X X X red car.", "X X X X cat."]
        );
        let c = CoopConfig {
            ctx_init: "a_photo of a".into(),
            csc: true,
            ..CoopConfig::default()
        };
        assert_eq!(c.context_len(), 4);
        assert!(!c.class_specific());
        assert_eq!(c.prompts(&["dog"]), vec!["a photo of a dog."]);
        assert_eq!(CoopConfig::default().context_len(), 16);
    }

    #[test]
    fn positions_parse_and_serialise_as_the_reference_spells_them() {
        assert_eq!(
            "middle".parse::<ClassTokenPosition>(),
            Ok(ClassTokenPosition::Middle)
        );
        assert!("start".parse::<ClassTokenPosition>().is_err());
        let c: CoopConfig =
            serde_json::from_str(r#"{"n_ctx": 8, "class_token_position": "front"}"#).unwrap();
        assert_eq!(c.class_token_position, ClassTokenPosition::Front);
        assert_eq!(c.init_std, 0.02);
        let json = serde_json::to_string(&CoopConfig::default()).unwrap();
        assert!(json.contains(r#""class_token_position":"end""#), "{json}");
    }

    fn tiny_clip() -> Clip<B> {
        let mut c = ClipConfig::small(8, 1, 1, 8, 4);
        c.text_config.vocab_size = 20;
        c.text_config.max_position_embeddings = 12;
        c.projection_dim = 4;
        c.init(&Default::default())
    }

    /// Prompts `[SOS, X×n, name…, '.', EOT, pad…]` with distinct name ids.
    fn prompts(n_ctx: usize, name_lens: &[usize], seq: usize) -> CoopPrompts<B> {
        let mut ids = Vec::new();
        let mut eot = Vec::new();
        for (c, &len) in name_lens.iter().enumerate() {
            let mut row = vec![18];
            row.extend(std::iter::repeat_n(1, n_ctx));
            row.extend((0..len).map(|k| 2 + (c * 4 + k) as i64 % 14));
            row.push(16);
            eot.push(row.len() as i64);
            row.push(19);
            row.resize(seq, 0);
            ids.extend(row);
        }
        CoopPrompts::new(
            &ids,
            name_lens.len(),
            seq,
            &eot,
            name_lens.to_vec(),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn middle_and_front_move_the_class_tokens() {
        let device = Default::default();
        let p = prompts(3, &[1, 2], 10);
        let clip = tiny_clip();
        let emb = clip.text_model.token_embeddings(p.tokens.clone());
        let row = |t: &Tensor<B, 3>, c: usize, k: usize| -> Vec<f32> {
            t.clone()
                .narrow(0, c, 1)
                .narrow(1, k, 1)
                .into_data()
                .to_vec()
                .unwrap()
        };
        let ctx = CoopContext::from_data(
            TensorData::new((0..3 * 8).map(|v| v as f32).collect::<Vec<_>>(), [3, 8]),
            &device,
        )
        .unwrap();
        let ctx_row = |k: usize| ((k * 8)..(k * 8 + 8)).map(|v| v as f32).collect::<Vec<_>>();
        for (pos, layout) in [
            // Source of each position for class 1 (name length 2), n_ctx 3:
            // 'C' = context token k, 'N' = name token k, 'T' = token position k.
            (
                ClassTokenPosition::End,
                vec![
                    ('T', 0),
                    ('C', 0),
                    ('C', 1),
                    ('C', 2),
                    ('N', 0),
                    ('N', 1),
                    ('T', 6),
                    ('T', 7),
                ],
            ),
            (
                ClassTokenPosition::Middle,
                vec![
                    ('T', 0),
                    ('C', 0),
                    ('N', 0),
                    ('N', 1),
                    ('C', 1),
                    ('C', 2),
                    ('T', 6),
                    ('T', 7),
                ],
            ),
            (
                ClassTokenPosition::Front,
                vec![
                    ('T', 0),
                    ('N', 0),
                    ('N', 1),
                    ('C', 0),
                    ('C', 1),
                    ('C', 2),
                    ('T', 6),
                    ('T', 7),
                ],
            ),
        ] {
            let model = Coop::new(clip.clone(), ctx.clone(), pos);
            model.check_prompts(&p).unwrap();
            let x = model.prompt_embeddings(&p);
            assert_eq!(x.dims(), [2, 10, 8]);
            for (i, (kind, k)) in layout.into_iter().enumerate() {
                let expected = match kind {
                    'C' => ctx_row(k),
                    'N' => row(&emb, 1, 4 + k),
                    _ => row(&emb, 1, k),
                };
                assert_eq!(row(&x, 1, i), expected, "{pos:?} position {i}");
            }
        }
    }

    #[test]
    fn mismatched_prompts_are_refused() {
        let device = Default::default();
        let clip = tiny_clip();
        let csc = CoopConfig {
            n_ctx: 3,
            csc: true,
            ..CoopConfig::default()
        };
        let model = csc
            .init(tiny_clip(), &prompts(3, &[1, 2], 10), &device)
            .unwrap();
        assert_eq!(model.ctx.shape(), vec![2, 3, 8]);
        assert_eq!(model.num_trainable_params(), 2 * 3 * 8);
        let err = model
            .check_prompts(&prompts(3, &[1, 2, 1], 10))
            .unwrap_err();
        assert!(err.contains("2 classes"), "{err}");
        // Prompts built for 2 context tokens cannot hold 3.
        let err = CoopConfig {
            n_ctx: 3,
            ..CoopConfig::default()
        }
        .init(clip, &prompts(2, &[1, 1], 10), &device)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("n_ctx"), "{err}");
        assert!(CoopPrompts::<B>::new(&[1, 2], 1, 2, &[2], vec![0], &device).is_err());
    }
}
