//! MMRL: Multi-Modal Representation Learning (Guo & Gu, CVPR 2025).
//!
//! A shared, learnable space `R` `[K, d_r]` is projected, per injected layer,
//! into K tokens of each tower's width. The tokens enter the vision tower
//! after the class token and the text tower after the start token at the
//! input of the first injected layer, and replace the previous layer's
//! representation tokens at each later injected layer. They get no
//! positional embedding and no `pre_layrnorm`. Class features are CLIP's
//! (class token, `post_layernorm`, frozen projection); representation
//! features are `post_layernorm` of each representation token, averaged, then
//! the new trainable `proj_rep`. Logits use a constant scale of 100.
//!
//! Reference: `yunncheng/MMRL` @ 27d8821 (`trainers/mmrl.py`,
//! `clip/model_mmrl.py`).

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use crate::clip::{l2_normalize, BlockHook, Clip, NoHook};
use crate::methods::{fill_template, ClassPrompts, Classes, Method, MethodConfig, Prediction};
use crate::{ClipAutodiffBackend, ClipBackend};
use crate::{Error, Result};

/// The logit scale MMRL uses for both heads (a constant, not `logit_scale`).
pub const MMRL_LOGIT_SCALE: f64 = 100.0;

/// MMRL's hyper-parameters (`TRAINER.MMRL.*` in the reference configs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmrlConfig {
    /// Representation tokens K (`N_REP_TOKENS`). Default 5.
    pub n_rep_tokens: usize,
    /// Width of the shared space d_r (`REP_DIM`). Default 512 (EuroSAT 2048).
    pub rep_dim: usize,
    /// Injected layers, 1-based (`REP_LAYERS`). Default (`None`): from
    /// max(1, L/2) to L, L the shallower tower's depth (6..=12 for ViT-B/16).
    pub rep_layers: Option<Vec<usize>>,
    /// Weight of the class logits in the loss and in fused inference (`ALPHA`). Default 0.7.
    pub alpha: f64,
    /// λ of both regularisers (`REG_WEIGHT`). Default 1.0; per-dataset values in [`MmrlConfig::for_dataset`].
    pub reg_weight: f64,
}

impl Default for MmrlConfig {
    fn default() -> Self {
        Self {
            n_rep_tokens: 5,
            rep_dim: 512,
            rep_layers: None,
            alpha: 0.7,
            reg_weight: 1.0,
        }
    }
}

impl MethodConfig for MmrlConfig {
    /// The reference's per-dataset overrides (`trainers/config.py`): λ, and
    /// d_r = 2048 for EuroSAT. Dataset names as Dassl spells them
    /// (`ImageNet`, `Caltech101`, `OxfordPets`, `StanfordCars`,
    /// `OxfordFlowers`, `Food101`, `FGVCAircraft`, `SUN397`,
    /// `DescribableTextures`, `EuroSAT`, `UCF101`); others keep the defaults.
    fn for_dataset(dataset: &str) -> Self {
        let mut c = Self::default();
        let reg = match dataset {
            "ImageNet" => Some(0.5),
            "Caltech101" => Some(0.5),
            "OxfordPets" => Some(0.2),
            "StanfordCars" => Some(7.0),
            "OxfordFlowers" => Some(4.0),
            "Food101" => Some(5.0),
            "FGVCAircraft" => Some(6.0),
            "SUN397" => Some(6.0),
            "DescribableTextures" => Some(6.0),
            "EuroSAT" => Some(0.01),
            "UCF101" => Some(3.0),
            _ => None,
        };
        if let Some(r) = reg {
            c.reg_weight = r;
        }
        if dataset == "EuroSAT" {
            c.rep_dim = 2048;
        }
        c
    }
}

impl MmrlConfig {
    /// The injected layers, 1-based, ascending, for towers of these depths.
    pub fn layers(&self, text_depth: usize, vision_depth: usize) -> Vec<usize> {
        match &self.rep_layers {
            Some(l) => l.clone(),
            None => {
                let depth = text_depth.min(vision_depth);
                ((depth / 2).max(1)..=depth).collect()
            }
        }
    }

    /// Checks the settings against the towers' depths.
    pub fn validate(&self, text_depth: usize, vision_depth: usize) -> Result<()> {
        let bad = |key, msg| Error::MethodConfig {
            method: "mmrl",
            key,
            msg,
        };
        let layers = self.layers(text_depth, vision_depth);
        let depth = text_depth.min(vision_depth);
        if self.n_rep_tokens == 0 {
            return Err(bad("n_rep_tokens", "must be at least 1".into()));
        }
        if self.rep_dim == 0 {
            return Err(bad("rep_dim", "must be at least 1".into()));
        }
        if layers.is_empty() {
            return Err(bad("rep_layers", "is empty; give e.g. [6, 7, 8]".into()));
        }
        if layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                "rep_layers",
                format!("{layers:?} must be strictly ascending"),
            ));
        }
        if layers[0] == 0 || *layers.last().unwrap_or(&0) > depth {
            return Err(bad(
                "rep_layers",
                format!(
                    "{layers:?} must lie in 1..={depth} (1-based; the shallower tower has {depth} layers)"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(bad("alpha", format!("{} must be in [0, 1]", self.alpha)));
        }
        if !(self.reg_weight >= 0.0 && self.reg_weight.is_finite()) {
            return Err(bad(
                "reg_weight",
                format!("{} must be a finite number >= 0", self.reg_weight),
            ));
        }
        Ok(())
    }

    /// Builds MMRL around a CLIP, which it freezes, with the reference's
    /// initialisation (see [`MmrlConfig::init_trainable`]).
    pub fn init<B: ClipBackend>(&self, clip: Clip<B>, device: &B::Device) -> Mmrl<B> {
        let text_width = clip.text_model.final_layer_norm.gamma.dims()[0];
        let vision_width = clip.vision_model.post_layernorm.gamma.dims()[0];
        let embed = clip.visual_projection.weight.dims()[1];
        let layers = self.layers(
            clip.text_model.encoder.depth(),
            clip.vision_model.encoder.depth(),
        );
        let (representation_learner, proj_rep) =
            self.init_trainable(text_width, vision_width, embed, layers.len(), device);
        Mmrl {
            representation_learner,
            proj_rep,
            clip: crate::Frozen::new(clip.no_grad()),
            rep_layers: layers.iter().map(|l| l - 1).collect(),
            alpha: self.alpha,
            reg_weight: self.reg_weight,
            classes: crate::Frozen::new(None),
        }
    }

    /// The trainable part alone: `R` ~ N(0, 0.02²); every layer's aligners
    /// start as copies of one PyTorch-default `Linear(d_r, width)` (weight
    /// and bias ~ U(±1/√d_r)); `proj_rep` ~ N(0, 1) · width^-½.
    pub fn init_trainable<B: ClipBackend>(
        &self,
        text_width: usize,
        vision_width: usize,
        projection_dim: usize,
        n_layers: usize,
        device: &B::Device,
    ) -> (RepresentationLearner<B>, Param<Tensor<B, 2>>) {
        let bound = 1.0 / (self.rep_dim as f64).sqrt();
        let aligner = |width| {
            let weight = crate::init::random(
                [self.rep_dim, width],
                Distribution::Uniform(-bound, bound),
                device,
            );
            let bias = crate::init::random([width], Distribution::Uniform(-bound, bound), device);
            (0..n_layers)
                .map(|_| Linear {
                    weight: Param::from_tensor(weight.clone()),
                    bias: Some(Param::from_tensor(bias.clone())),
                })
                .collect::<Vec<_>>()
        };
        let learner = RepresentationLearner {
            compound_rep_tokens: Param::from_tensor(crate::init::random(
                [self.n_rep_tokens, self.rep_dim],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            compound_rep_tokens_r2vproj: aligner(vision_width),
            compound_rep_tokens_r2tproj: aligner(text_width),
        };
        let proj_rep = Param::from_tensor(crate::init::random(
            [vision_width, projection_dim],
            Distribution::Normal(0.0, 1.0 / (vision_width as f64).sqrt()),
            device,
        ));
        (learner, proj_rep)
    }
}

/// The shared space `R` and its per-layer aligners (names as the reference's
/// `representation_learner`).
#[derive(Module, Debug)]
pub struct RepresentationLearner<B: Backend> {
    /// `R`: `[K, d_r]`.
    pub compound_rep_tokens: Param<Tensor<B, 2>>,
    /// One `Linear(d_r → vision width)` per injected layer.
    pub compound_rep_tokens_r2vproj: Vec<Linear<B>>,
    /// One `Linear(d_r → text width)` per injected layer.
    pub compound_rep_tokens_r2tproj: Vec<Linear<B>>,
}

impl<B: ClipBackend> RepresentationLearner<B> {
    /// Per injected layer, the K tokens for each tower.
    ///
    /// # Shapes
    /// - output: (`layers × [K, text width]`, `layers × [K, vision width]`)
    pub fn tokens(&self) -> (Vec<Tensor<B, 2>>, Vec<Tensor<B, 2>>) {
        let r = self.compound_rep_tokens.val();
        let text = self
            .compound_rep_tokens_r2tproj
            .iter()
            .map(|l| l.forward(r.clone()))
            .collect();
        let vision = self
            .compound_rep_tokens_r2vproj
            .iter()
            .map(|l| l.forward(r.clone()))
            .collect();
        (text, vision)
    }

    /// K, the number of representation tokens.
    pub fn n_tokens(&self) -> usize {
        self.compound_rep_tokens.dims()[0]
    }
}

/// Inserts the representation tokens after position 0 at the first injected
/// layer and replaces them at each later one.
pub struct RepTokenHook<'a, B: Backend> {
    /// Injected layers, 0-based, ascending.
    pub layers: &'a [usize],
    /// One `[K, width]` per injected layer.
    pub tokens: &'a [Tensor<B, 2>],
}

impl<B: ClipBackend> BlockHook<B> for RepTokenHook<'_, B> {
    fn before_block(&mut self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let Some(i) = self.layers.iter().position(|&l| l == layer) else {
            return x;
        };
        let [batch, seq, width] = x.dims();
        let k = self.tokens[i].dims()[0];
        let rep = self.tokens[i]
            .clone()
            .unsqueeze_dim::<3>(0)
            .expand([batch, k, width]);
        let head = x.clone().narrow(1, 0, 1);
        // First injected layer: the sequence grows by K; later: the old K go.
        let skip = if i == 0 { 1 } else { 1 + k };
        let tail = x.narrow(1, skip, seq - skip);
        Tensor::cat(vec![head, rep, tail], 1)
    }
}

/// MMRL around a frozen CLIP.
#[derive(Module, Debug)]
pub struct Mmrl<B: Backend> {
    pub representation_learner: RepresentationLearner<B>,
    /// `[vision width, projection_dim]`, trainable.
    pub proj_rep: Param<Tensor<B, 2>>,
    /// Frozen, and outside the module's parameters and records.
    pub clip: crate::Frozen<Clip<B>>,
    /// Injected layers, 0-based.
    pub rep_layers: Vec<usize>,
    /// Weight of the class logits in fused inference and in the loss.
    pub alpha: f64,
    /// λ of both regularisers (the loss's; kept with the model so that a
    /// checkpoint records it).
    pub reg_weight: f64,
    /// The current class set (frozen, outside parameters and records).
    pub classes: crate::Frozen<Option<MmrlClasses<B>>>,
}

/// What stays fixed for a class set: the prompts' end positions, CLIP's
/// zero-shot text features (the text regulariser's target) and the frozen
/// lower text layers' output.
#[derive(Module, Debug)]
pub struct MmrlClasses<B: Backend> {
    /// `[classes]`, end-token positions in the prompts (before the +K shift).
    pub eot: Tensor<B, 1, Int>,
    /// `[classes, projection_dim]`
    pub zs_text: Tensor<B, 2>,
    /// `[classes, seq, text width]`: the layers below the first injected one.
    pub lower: Tensor<B, 3>,
}

/// Everything MMRL's loss needs from one batch.
pub struct MmrlOutput<B: Backend> {
    /// Both heads' logits, `[batch, classes]`.
    pub logits: MmrlLogits<B>,
    /// Both heads' image features, `[batch, projection_dim]`.
    pub image: MmrlImageFeatures<B>,
    /// Text features of the class set, `[classes, projection_dim]`.
    pub text: Tensor<B, 2>,
    /// Frozen CLIP's image features (the image regulariser's target), `[batch, projection_dim]`.
    pub zs_image: Tensor<B, 2>,
    /// Frozen CLIP's text features (the text regulariser's target), `[classes, projection_dim]`.
    pub zs_text: Tensor<B, 2>,
}

/// Image features of both heads, unnormalised.
pub struct MmrlImageFeatures<B: Backend> {
    /// Class token through `post_layernorm` and CLIP's frozen projection: `[batch, projection_dim]`.
    pub class: Tensor<B, 2>,
    /// Representation tokens through `post_layernorm`, averaged, then `proj_rep`: `[batch, projection_dim]`.
    pub rep: Tensor<B, 2>,
}

/// Logits of both heads.
pub struct MmrlLogits<B: Backend> {
    /// `[batch, classes]`
    pub class: Tensor<B, 2>,
    /// `[batch, classes]`
    pub rep: Tensor<B, 2>,
}

impl<B: ClipBackend> MmrlLogits<B> {
    /// Decoupled inference for base classes: `alpha · class + (1 − alpha) · rep`.
    pub fn fused(&self, alpha: f64) -> Tensor<B, 2> {
        self.class.clone().mul_scalar(alpha) + self.rep.clone().mul_scalar(1.0 - alpha)
    }
}

impl<B: ClipBackend> Mmrl<B> {
    /// The first injected layer, 0-based: layers below it never see the
    /// representation tokens, so their output can be computed once and cached.
    pub fn first_layer(&self) -> usize {
        self.rep_layers[0]
    }

    /// Number of trainable parameters (`R`, the aligners and `proj_rep`).
    pub fn num_trainable_params(&self) -> usize {
        self.representation_learner.num_params() + self.proj_rep.num_params()
    }

    /// Text hidden states at the input of the first injected layer. Frozen:
    /// run it once per class set, on the inner backend when training.
    ///
    /// # Shapes
    /// - `tokens`: `[classes, seq]`
    /// - output: `[classes, seq, text width]`
    pub fn text_lower(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let text = &self.clip.text_model;
        text.encoder
            .forward_range(text.embed(tokens), 0..self.first_layer(), true, &mut NoHook)
    }

    /// Image hidden states at the input of the first injected layer. Frozen:
    /// run it on the inner backend when training.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - output: `[batch, 1 + patches, vision width]`
    pub fn image_lower(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let vision = &self.clip.vision_model;
        vision.encoder.forward_range(
            vision.embed(images),
            0..self.first_layer(),
            false,
            &mut NoHook,
        )
    }

    /// Frozen CLIP's image features from [`Mmrl::image_lower`]'s output: the
    /// rest of the layers without representation tokens, `post_layernorm` of
    /// the class token, the projection. Equal to `clip.encode_image`, with
    /// the lower layers shared with the injected path.
    ///
    /// # Shapes
    /// - `lower`: `[batch, 1 + patches, vision width]`
    /// - output: `[batch, projection_dim]`
    pub fn zero_shot_image(&self, lower: Tensor<B, 3>) -> Tensor<B, 2> {
        let vision = &self.clip.vision_model;
        let hidden = vision.encoder.forward_range(
            lower,
            self.first_layer()..vision.encoder.depth(),
            false,
            &mut NoHook,
        );
        self.clip.visual_projection.forward(vision.pool(hidden))
    }

    /// The current class set; set one with [`Method::set_classes`] first.
    fn class_set(&self) -> &MmrlClasses<B> {
        self.classes
            .0
            .as_ref()
            .expect("Method::set_classes is called before scoring or training")
    }

    /// MMRL's settings as they are in this model.
    pub fn settings(&self) -> MmrlConfig {
        MmrlConfig {
            n_rep_tokens: self.representation_learner.n_tokens(),
            rep_dim: self.representation_learner.compound_rep_tokens.dims()[1],
            rep_layers: Some(self.rep_layers.iter().map(|l| l + 1).collect()),
            alpha: self.alpha,
            reg_weight: self.reg_weight,
        }
    }

    /// Text features from the cached lower layers, unnormalised.
    ///
    /// # Shapes
    /// - `lower`: `[classes, seq, text width]` from [`Mmrl::text_lower`]
    /// - `eot`: `[classes]`, end-token positions in the prompts (before the +K shift)
    /// - output: `[classes, projection_dim]`
    pub fn text_features(&self, lower: Tensor<B, 3>, eot: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let (tokens, _) = self.representation_learner.tokens();
        self.text_features_with(lower, eot, &tokens)
    }

    fn text_features_with(
        &self,
        lower: Tensor<B, 3>,
        eot: Tensor<B, 1, Int>,
        tokens: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        let text = &self.clip.text_model;
        let mut hook = RepTokenHook {
            layers: &self.rep_layers,
            tokens,
        };
        let hidden = text.encoder.forward_range(
            lower,
            self.first_layer()..text.encoder.depth(),
            true,
            &mut hook,
        );
        let k = self.representation_learner.n_tokens() as i64;
        let pooled = text.pool(hidden, eot.add_scalar(k));
        self.clip.text_projection.forward(pooled)
    }

    /// Image features of both heads from the cached lower layers, unnormalised.
    ///
    /// # Shapes
    /// - `lower`: `[batch, 1 + patches, vision width]` from [`Mmrl::image_lower`]
    pub fn image_features(&self, lower: Tensor<B, 3>) -> MmrlImageFeatures<B> {
        let (_, tokens) = self.representation_learner.tokens();
        self.image_features_with(lower, &tokens)
    }

    fn image_features_with(
        &self,
        lower: Tensor<B, 3>,
        tokens: &[Tensor<B, 2>],
    ) -> MmrlImageFeatures<B> {
        let vision = &self.clip.vision_model;
        let mut hook = RepTokenHook {
            layers: &self.rep_layers,
            tokens,
        };
        let hidden = vision.encoder.forward_range(
            lower,
            self.first_layer()..vision.encoder.depth(),
            false,
            &mut hook,
        );
        let [batch, _, width] = hidden.dims();
        let k = self.representation_learner.n_tokens();
        let class = self.clip.visual_projection.forward(
            vision
                .post_layernorm
                .forward(hidden.clone().narrow(1, 0, 1).reshape([batch, width])),
        );
        // post_layernorm per representation token, then the mean over K.
        let rep = vision
            .post_layernorm
            .forward(hidden.narrow(1, 1, k))
            .mean_dim(1)
            .reshape([batch, width]);
        let rep = rep.matmul(self.proj_rep.val());
        MmrlImageFeatures { class, rep }
    }

    /// Logits of both heads: `100 · cos`.
    ///
    /// # Shapes
    /// - `image.class`, `image.rep`: `[batch, projection_dim]`
    /// - `text`: `[classes, projection_dim]`
    pub fn logits(&self, image: &MmrlImageFeatures<B>, text: Tensor<B, 2>) -> MmrlLogits<B> {
        let text = l2_normalize(text).transpose();
        MmrlLogits {
            class: l2_normalize(image.class.clone())
                .matmul(text.clone())
                .mul_scalar(MMRL_LOGIT_SCALE),
            rep: l2_normalize(image.rep.clone())
                .matmul(text)
                .mul_scalar(MMRL_LOGIT_SCALE),
        }
    }

    /// The whole forward pass from images and prompts (no caching).
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - `tokens`: `[classes, seq]`, `eot`: `[classes]`
    pub fn forward(
        &self,
        images: Tensor<B, 4>,
        tokens: Tensor<B, 2, Int>,
        eot: Tensor<B, 1, Int>,
    ) -> (MmrlImageFeatures<B>, Tensor<B, 2>, MmrlLogits<B>) {
        let (text_tokens, vision_tokens) = self.representation_learner.tokens();
        let text = self.text_features_with(self.text_lower(tokens), eot, &text_tokens);
        let image = self.image_features_with(self.image_lower(images), &vision_tokens);
        let logits = self.logits(&image, text.clone());
        (image, text, logits)
    }
}

impl<B: ClipAutodiffBackend> Mmrl<B> {
    /// [`Mmrl::image_lower`] on the inner (non-autodiff) backend, brought
    /// back as a constant: the frozen lower layers record no graph.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - output: `[batch, 1 + patches, vision width]`
    pub fn image_lower_frozen(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let inner: Mmrl<B::InnerBackend> = self.valid();
        Tensor::from_inner(inner.image_lower(images.inner()))
    }

    /// [`Mmrl::text_lower`] on the inner backend, as a constant.
    ///
    /// # Shapes
    /// - `tokens`: `[classes, seq]`
    /// - output: `[classes, seq, text width]`
    pub fn text_lower_frozen(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let inner: Mmrl<B::InnerBackend> = self.valid();
        Tensor::from_inner(inner.text_lower(tokens.inner()))
    }
}

impl<B: ClipBackend> Method<B> for Mmrl<B> {
    const NAME: &'static str = "mmrl";
    const SUMMARY: &'static str =
        "MMRL (CVPR 2025): a shared representation space injected into both towers' higher layers";
    type Config = MmrlConfig;
    type Output = MmrlOutput<B>;
    type Text = Tensor<B, 2>;

    fn prompt_texts(_: &MmrlConfig, classes: &[String], template: &str) -> Vec<String> {
        classes.iter().map(|c| fill_template(template, c)).collect()
    }

    fn init(
        config: &MmrlConfig,
        clip: Clip<B>,
        prompts: &ClassPrompts,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate(
            clip.text_model.encoder.depth(),
            clip.vision_model.encoder.depth(),
        )?;
        config.init(clip, device).set_classes(prompts)
    }

    fn load(
        config: &MmrlConfig,
        clip: Clip<B>,
        path: &std::path::Path,
        device: &B::Device,
    ) -> Result<Self> {
        let mut model = crate::methods::mmrl_io::load_mmrl(
            path,
            clip,
            config.rep_layers.clone(),
            config.alpha,
            device,
        )?;
        model.reg_weight = config.reg_weight;
        Ok(model)
    }

    fn config(&self) -> MmrlConfig {
        self.settings()
    }

    fn set_classes(mut self, prompts: &ClassPrompts) -> Result<Self> {
        let device = self.clip.visual_projection.weight.device();
        let (tokens, eot) = prompts.tensors::<B>(&device);
        let zs_text = self.clip.encode_text(tokens.clone(), eot.clone());
        let lower = self.text_lower(tokens);
        self.classes = crate::Frozen::new(Some(MmrlClasses {
            eot,
            zs_text,
            lower,
        }));
        Ok(self)
    }

    /// The lower image layers run once, on the inner backend, and feed both
    /// the zero-shot target and the injected path.
    fn forward(&self, images: Tensor<B, 4>) -> MmrlOutput<B>
    where
        B: ClipAutodiffBackend,
    {
        let inner: Mmrl<B::InnerBackend> = Mmrl {
            representation_learner: self.representation_learner.valid(),
            proj_rep: self.proj_rep.valid(),
            clip: self.clip.valid(),
            rep_layers: self.rep_layers.clone(),
            alpha: self.alpha,
            reg_weight: self.reg_weight,
            classes: crate::Frozen::new(None),
        };
        let lower = inner.image_lower(images.inner());
        let zs_image = Tensor::from_inner(inner.zero_shot_image(lower.clone()));
        let lower = Tensor::from_inner(lower);
        let set = self.class_set();
        let text = self.text_features(set.lower.clone(), set.eot.clone());
        let image = self.image_features(lower);
        let logits = self.logits(&image, text.clone());
        MmrlOutput {
            logits,
            image,
            text,
            zs_image,
            zs_text: set.zs_text.clone(),
        }
    }

    fn text(&self) -> Tensor<B, 2> {
        let set = self.class_set();
        self.text_features(set.lower.clone(), set.eot.clone())
    }

    /// Seen classes: fused `α·class + (1−α)·rep`; unseen: the class head.
    fn predict(
        &self,
        images: Tensor<B, 4>,
        text: &Tensor<B, 2>,
        classes: Classes,
    ) -> Prediction<B> {
        let image = self.image_features(self.image_lower(images));
        let logits = self.logits(&image, text.clone());
        let chosen = match classes {
            Classes::Seen => logits.fused(self.alpha),
            Classes::Unseen => logits.class.clone(),
        };
        Prediction {
            logits: chosen,
            heads: vec![("class", logits.class), ("rep", logits.rep)],
        }
    }

    fn state(&self) -> Vec<crate::methods::NamedTensor> {
        crate::methods::mmrl_io::mmrl_state(self)
    }

    fn num_trainable_params(&self) -> usize {
        Mmrl::num_trainable_params(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    use crate::methods::MethodConfig;

    #[test]
    fn default_layers_follow_the_depth_rule() {
        let c = MmrlConfig::default();
        assert_eq!(c.layers(12, 12), (6..=12).collect::<Vec<_>>());
        assert_eq!(c.layers(12, 24), (6..=12).collect::<Vec<_>>());
        assert_eq!(c.layers(4, 4), vec![2, 3, 4]);
        assert_eq!(c.layers(1, 1), vec![1]);
        assert!(c.validate(12, 12).is_ok());
        let bad = MmrlConfig {
            rep_layers: Some(vec![6, 13]),
            ..MmrlConfig::default()
        };
        let e = bad.validate(12, 12).unwrap_err().to_string();
        assert!(
            e.contains("1..=12") && e.contains("[mmrl] rep_layers"),
            "{e}"
        );
    }

    #[test]
    fn vit_b16_trainable_count_is_the_papers() {
        // Spec §10: 4,992,256 with K = 5, d_r = 512, layers 6..12.
        let c = MmrlConfig::default();
        let (learner, proj_rep) = c.init_trainable::<B>(512, 768, 512, 7, &Default::default());
        assert_eq!(learner.num_params() + proj_rep.num_params(), 4_992_256);
    }

    #[test]
    fn aligners_start_identical_across_layers() {
        let (learner, _) =
            MmrlConfig::default().init_trainable::<B>(16, 24, 8, 3, &Default::default());
        let w: Vec<Vec<f32>> = learner
            .compound_rep_tokens_r2vproj
            .iter()
            .map(|l| l.weight.val().into_data().to_vec().unwrap())
            .collect();
        assert_eq!(w[0], w[1]);
        assert_eq!(w[1], w[2]);
    }

    #[test]
    fn dataset_overrides_match_the_reference() {
        assert_eq!(MmrlConfig::for_dataset("EuroSAT").rep_dim, 2048);
        assert_eq!(MmrlConfig::for_dataset("EuroSAT").reg_weight, 0.01);
        assert_eq!(MmrlConfig::for_dataset("StanfordCars").reg_weight, 7.0);
        assert_eq!(MmrlConfig::for_dataset("Custom").reg_weight, 1.0);
    }
}
