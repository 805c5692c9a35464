//! The methods the trainer, evaluator and checkpoints share.
//!
//! A method is one module plus one loss: a *trainee* (a Burn module holding
//! the method's trainable parameters, the frozen CLIP behind
//! [`Frozen`](mmrl_model::Frozen), and the class prompts of the training
//! classes) implementing Burn's `TrainStep` / `InferenceStep`, and an
//! evaluator that scores a class set with the method's test-time logits.
//! Zero-shot CLIP has no trainee; it only evaluates.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use mmrl_data::loader::{ImageBatch, ImageLoader};
use mmrl_data::{ClipTokenizer, TokenBatch};
use mmrl_model::clip::Clip;
use mmrl_model::methods::coop::{coop_class_name, Coop, CoopConfig, CoopPrompts};
use mmrl_model::methods::mmrl::Mmrl;
use mmrl_model::Frozen;

use crate::mmrl_loss::{mmrl_loss, MmrlLossWeights};
use crate::zeroshot::{encode_prompts, token_tensors};
use crate::Result;

/// The adaptation methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// CLIP with hand-written prompts; nothing is trained.
    Zeroshot,
    /// CoOp (IJCV 2022): learned context vectors in the text prompt.
    Coop,
    /// MMRL (CVPR 2025).
    Mmrl,
}

impl MethodKind {
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Zeroshot => "zeroshot",
            MethodKind::Coop => "coop",
            MethodKind::Mmrl => "mmrl",
        }
    }
}

/// Which logits a class set is scored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// MMRL's fused `α·class + (1−α)·rep` (base classes, few-shot, ImageNet).
    Fused,
    /// The class-token head alone (novel classes, other datasets).
    Class,
}

/// The class prompts of a class set, tokenised, with what stays fixed
/// during training: CLIP's zero-shot text features (MMRL's regulariser
/// target) and the frozen lower text layers' output.
#[derive(Module, Debug)]
pub struct ClassText<B: Backend> {
    /// `[classes, seq]`
    pub tokens: Tensor<B, 2, Int>,
    /// `[classes]`
    pub eot: Tensor<B, 1, Int>,
    /// `[classes, projection_dim]`
    pub zs_text: Tensor<B, 2>,
    /// `[classes, seq, text width]`: the layers below MMRL's first injected one.
    pub lower: Tensor<B, 3>,
}

/// Tokenises the prompts and computes the frozen parts once.
pub fn class_text<B: Backend>(
    model: &Mmrl<B>,
    tokenizer: &ClipTokenizer,
    classes: &[String],
    template: &str,
    device: &B::Device,
) -> Result<ClassText<B>> {
    let batch: TokenBatch = encode_prompts(tokenizer, &model.clip, classes, template)?;
    let (tokens, eot) = token_tensors::<B>(&batch, device);
    let zs_text = model.clip.encode_text(tokens.clone(), eot.clone());
    let lower = model.text_lower(tokens.clone());
    Ok(ClassText {
        tokens,
        eot,
        zs_text,
        lower,
    })
}

/// Running means of a method's loss terms over an epoch, shared between
/// the training step (which adds) and the epoch display (which reads and
/// resets).
#[derive(Debug, Clone, Default)]
pub struct TermLog(std::sync::Arc<std::sync::Mutex<TermSums>>);

/// Per term: name, sum, count.
type TermSums = Vec<(&'static str, f64, usize)>;

impl TermLog {
    /// Adds one batch's value of `name`.
    pub fn add(&self, name: &'static str, value: f64) {
        let mut v = self.0.lock().unwrap();
        match v.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => {
                e.1 += value;
                e.2 += 1;
            }
            None => v.push((name, value, 1)),
        }
    }

    /// The means since the last call, in insertion order, and a reset.
    pub fn take_means(&self) -> Vec<(&'static str, f64)> {
        let mut v = self.0.lock().unwrap();
        let out = v
            .iter()
            .map(|(n, s, c)| (*n, s / (*c).max(1) as f64))
            .collect();
        v.clear();
        out
    }
}

/// MMRL ready to train on one class set.
#[derive(Module, Debug)]
pub struct MmrlTrainee<B: Backend> {
    pub model: Mmrl<B>,
    pub text: Frozen<ClassText<B>>,
    /// λ of both regularisers.
    pub reg_weight: f64,
    /// Each loss term, per batch, for the epoch line.
    #[module(skip)]
    pub terms: TermLog,
}

impl<B: Backend> MmrlTrainee<B> {
    fn weights(&self) -> MmrlLossWeights {
        MmrlLossWeights {
            alpha: self.model.alpha,
            reg_weight: self.reg_weight,
        }
    }
}

impl<B: AutodiffBackend> TrainStep for MmrlTrainee<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        // Frozen work on the inner backend: no graph is kept for it.
        let clip: Clip<B::InnerBackend> = self.model.clip.0.valid();
        let images_inner = batch.images.clone().inner();
        let zs_image = Tensor::<B, 2>::from_inner(clip.encode_image(images_inner));
        let lower = self.model.image_lower_frozen(batch.images);
        let image = self.model.image_features(lower);
        let text = self
            .model
            .text_features(self.text.lower.clone(), self.text.eot.clone());
        let logits = self.model.logits(&image, text.clone());
        let loss = mmrl_loss(
            &logits,
            batch.labels.clone(),
            &image,
            text,
            zs_image,
            self.text.zs_text.clone(),
            self.weights(),
        );
        let fused = logits.fused(self.model.alpha);
        for (name, t) in [
            ("ce_class", &loss.ce_class),
            ("ce_rep", &loss.ce_rep),
            ("reg_image", &loss.reg_image),
            ("reg_text", &loss.reg_text),
        ] {
            self.terms
                .add(name, t.clone().inner().into_scalar().elem::<f64>());
        }
        let grads = loss.total.backward();
        TrainOutput::new(
            self,
            grads,
            ClassificationOutput::new(loss.total, fused, batch.labels),
        )
    }
}

impl<B: Backend> InferenceStep for MmrlTrainee<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        let image = self
            .model
            .image_features(self.model.image_lower(batch.images));
        let text = self
            .model
            .text_features(self.text.lower.clone(), self.text.eot.clone());
        let fused = self.model.logits(&image, text).fused(self.model.alpha);
        let loss = CrossEntropyLossConfig::new()
            .init(&fused.device())
            .forward(fused.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, fused, batch.labels)
    }
}

/// Correct predictions and total over a loader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub correct: usize,
    pub total: usize,
}

impl Tally {
    /// Micro accuracy in percent (Dassl's `Classification` evaluator).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }
}

fn count_correct<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> usize {
    let pred = logits.argmax(1).squeeze_dim::<1>(1);
    pred.equal(labels).int().sum().into_scalar().elem::<i64>() as usize
}

/// Scores every batch of `loader` with `logits_of` (text features are
/// computed once by the caller). Stops with the loader's error, if any.
pub fn evaluate<B: Backend>(
    loader: &ImageLoader<B>,
    mut logits_of: impl FnMut(Tensor<B, 4>) -> Tensor<B, 2>,
) -> Result<Tally> {
    use burn::data::dataloader::DataLoader;
    let mut t = Tally::default();
    for batch in loader.iter() {
        t.total += batch.indices.len();
        t.correct += count_correct(logits_of(batch.images), batch.labels);
    }
    if let Some(e) = loader.take_error() {
        return Err(e.into());
    }
    Ok(t)
}

/// MMRL's accuracy on a class set with the given head.
pub fn evaluate_mmrl<B: Backend>(
    model: &Mmrl<B>,
    text: &ClassText<B>,
    head: Head,
    loader: &ImageLoader<B>,
) -> Result<Tally> {
    let features = model.text_features(text.lower.clone(), text.eot.clone());
    evaluate(loader, |images| {
        let image = model.image_features(model.image_lower(images));
        let logits = model.logits(&image, features.clone());
        match head {
            Head::Fused => logits.fused(model.alpha),
            Head::Class => logits.class,
        }
    })
}

/// Zero-shot CLIP's accuracy on a class set.
pub fn evaluate_zeroshot<B: Backend>(
    clip: &Clip<B>,
    text_features: Tensor<B, 2>,
    loader: &ImageLoader<B>,
) -> Result<Tally> {
    evaluate(loader, |images| {
        clip.logits(clip.encode_image(images), text_features.clone())
    })
}

/// CoOp's class prompts as host data (`"X X … X name."` tokenised, trimmed
/// after the longest end token, with each name's token count).
#[derive(Debug, Clone)]
pub struct PromptIds {
    pub ids: Vec<i64>,
    pub rows: usize,
    pub seq: usize,
    pub eot: Vec<i64>,
    pub name_lens: Vec<usize>,
}

impl PromptIds {
    /// Tokenises CoOp's prompts for `classes`.
    pub fn new(cfg: &CoopConfig, tokenizer: &ClipTokenizer, classes: &[String]) -> Result<Self> {
        crate::zeroshot::check_classes("{}", classes)?;
        let batch = tokenizer.encode_batch(&cfg.prompts(classes))?.trimmed();
        let name_lens = classes
            .iter()
            .map(|c| Ok(tokenizer.encode(&coop_class_name(c))?.len() - 2))
            .collect::<Result<Vec<usize>>>()?;
        Ok(PromptIds {
            ids: batch.ids,
            rows: batch.rows,
            seq: batch.context,
            eot: batch.eot,
            name_lens,
        })
    }

    /// As tensors on `device`.
    pub fn tensors<B: Backend>(&self, device: &B::Device) -> CoopPrompts<B> {
        CoopPrompts::new(
            &self.ids,
            self.rows,
            self.seq,
            &self.eot,
            self.name_lens.clone(),
            device,
        )
        .expect("prompt ids are consistent by construction")
    }
}

/// CoOp ready to train on one class set.
#[derive(Module, Debug)]
pub struct CoopTrainee<B: Backend> {
    pub model: Coop<B>,
    #[module(skip)]
    pub prompts: PromptIds,
}

fn coop_device<B: Backend>(model: &Coop<B>) -> B::Device {
    model.devices()[0].clone()
}

impl<B: AutodiffBackend> TrainStep for CoopTrainee<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let prompts = self.prompts.tensors::<B>(&coop_device(&self.model));
        let image = self.model.image_features_frozen(batch.images);
        let text = self.model.text_features(&prompts);
        let logits = self.model.logits_from_features(image, text);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        let grads = loss.backward();
        TrainOutput::new(
            self,
            grads,
            ClassificationOutput::new(loss, logits, batch.labels),
        )
    }
}

impl<B: Backend> InferenceStep for CoopTrainee<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        let prompts = self.prompts.tensors::<B>(&coop_device(&self.model));
        let text = self.model.text_features(&prompts);
        let logits = self.model.logits(batch.images, text);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

/// CoOp's accuracy on a class set (a class-specific context must have been
/// trained on this class set).
pub fn evaluate_coop<B: Backend>(
    model: &Coop<B>,
    prompts: &PromptIds,
    loader: &ImageLoader<B>,
) -> Result<Tally> {
    let text = model.text_features(&prompts.tensors::<B>(&coop_device(model)));
    evaluate(loader, |images| model.logits(images, text.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamWConfig, Optimizer};
    use mmrl_model::clip::ClipConfig;
    use mmrl_model::methods::mmrl::MmrlConfig;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn tiny_clip(device: &burn::tensor::Device<B>) -> Clip<B> {
        let mut c = ClipConfig::small(8, 2, 1, 8, 4);
        c.text_config.vocab_size = 20;
        c.text_config.max_position_embeddings = 8;
        c.projection_dim = 4;
        c.init(device)
    }

    #[test]
    fn training_steps_lower_the_loss_and_leave_clip_bit_identical() {
        let device = Default::default();
        B::seed(&device, 3);
        let cfg = MmrlConfig {
            rep_dim: 6,
            n_rep_tokens: 2,
            ..MmrlConfig::default()
        };
        let model = cfg.init(tiny_clip(&device), &device);
        let before = model.clip.0.clone().valid();
        // Three classes, prompts [SOS, a, b, EOT, pad…].
        let ids: Vec<i64> = vec![18, 2, 3, 19, 0, 18, 4, 5, 19, 0, 18, 6, 7, 19, 0];
        let tokens =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [15]), &device).reshape([3, 5]);
        let eot = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![3i64, 3, 3], [3]), &device);
        let inner = model.valid();
        let zs_text = inner
            .clip
            .encode_text(tokens.clone().inner(), eot.clone().inner());
        let lower = inner.text_lower(tokens.clone().inner());
        let text = ClassText {
            tokens,
            eot,
            zs_text: Tensor::from_inner(zs_text),
            lower: Tensor::from_inner(lower),
        };
        let terms = TermLog::default();
        let mut trainee = MmrlTrainee {
            model,
            text: Frozen::new(text),
            reg_weight: 1.0,
            terms: terms.clone(),
        };
        let images = Tensor::<B, 4>::random(
            [6, 3, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [6]),
            &device,
        );
        let batch = ImageBatch {
            images,
            labels,
            indices: (0..6).collect(),
        };
        let mut optim = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(5e-4)
            .init();
        let r0 = trainee
            .model
            .representation_learner
            .compound_rep_tokens
            .val()
            .into_data();
        let mut losses = Vec::new();
        for _ in 0..30 {
            let out = TrainStep::step(&trainee, batch.clone());
            losses.push(out.item.loss.clone().into_scalar().elem::<f32>());
            trainee = optim.step(1e-2, trainee, out.grads);
        }
        assert!(losses[29] < losses[0] * 0.8, "loss falls: {losses:?}");
        let means = terms.take_means();
        assert_eq!(
            means.iter().map(|m| m.0).collect::<Vec<_>>(),
            ["ce_class", "ce_rep", "reg_image", "reg_text"]
        );
        assert!(terms.take_means().is_empty());
        let r1 = trainee
            .model
            .representation_learner
            .compound_rep_tokens
            .val()
            .into_data();
        assert_ne!(r0, r1, "R is trained");
        let after = trainee.model.clip.0.valid();
        // The frozen CLIP is bit-identical: compare every weight through its record.
        let a = burn::record::Record::<<B as AutodiffBackend>::InnerBackend>::into_item::<
            burn::record::FullPrecisionSettings,
        >(before.into_record());
        let b = burn::record::Record::<<B as AutodiffBackend>::InnerBackend>::into_item::<
            burn::record::FullPrecisionSettings,
        >(after.into_record());
        let ja = serde_json::to_string(&a).unwrap();
        let jb = serde_json::to_string(&b).unwrap();
        assert_eq!(ja, jb, "CLIP unchanged");
        assert_eq!(
            Module::num_params(&trainee),
            trainee.model.num_trainable_params()
        );
    }
}
