//! Contrastive pretraining of CLIP (symmetric InfoNCE with a learned
//! temperature, as Radford et al. 2021) on the generated world of
//! [`mmrl_data::world`], with Burn's Learner and CLIP's own tokenizer. The
//! offline demo pretrains a small CLIP this way and saves it as a Hugging
//! Face folder that every command loads like a published CLIP.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::lr_scheduler::LrScheduler;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use mmrl_data::preprocess::{normalize_chw, PreprocessConfig};
use mmrl_data::world;
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::config::ClipConfig;
use mmrl_model::clip::model::l2_normalize;
use mmrl_model::clip::Clip;

use crate::durable::{MetricFiles, WriteFailure};
use crate::renderer::EpochLines;
use crate::zeroshot::token_tensors;
use crate::{Error, Result};
use mmrl_model::{ClipAutodiffBackend, ClipBackend};

/// Everything that decides the pretrained weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// The architecture (vocabulary: CLIP's 49 408 tokens).
    pub clip: ClipConfig,
    /// Seed of the world's pictures and of the initial weights.
    pub seed: u64,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// Pairs per step: each picture's caption is its positive, the
    /// batch's other captions its negatives (and the other way round).
    pub batch_size: usize,
    /// AdamW's peak rate, reached after `warmup_steps` linear steps, then
    /// cosine decay to zero.
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Held-out batches scored after each epoch (same every epoch).
    pub valid_batches: usize,
}

/// Pictures and their tokenised captions.
#[derive(Debug, Clone)]
pub struct PairBatch<B: Backend> {
    /// `[batch, 3, side, side]`, normalised as CLIP expects.
    pub images: Tensor<B, 4>,
    /// `[batch, seq]`.
    pub tokens: Tensor<B, 2, Int>,
    /// `[batch]`: position of each caption's end token.
    pub eot: Tensor<B, 1, Int>,
}

/// Generates `batches` batches of world pairs per epoch, each picture a pure
/// function of `(seed, epoch, index)`. Validation loaders draw from a fixed
/// epoch of their own.
pub struct PairLoader<B: Backend> {
    seed: u64,
    side: usize,
    batch_size: usize,
    batches: usize,
    /// Next training epoch; `None`: validation.
    epoch: Option<Arc<AtomicU64>>,
    tokenizer: Arc<ClipTokenizer>,
    pre: Arc<PreprocessConfig>,
    device: B::Device,
}

impl<B: Backend> Clone for PairLoader<B> {
    fn clone(&self) -> Self {
        Self {
            seed: self.seed,
            side: self.side,
            batch_size: self.batch_size,
            batches: self.batches,
            epoch: self.epoch.clone(),
            tokenizer: self.tokenizer.clone(),
            pre: self.pre.clone(),
            device: self.device.clone(),
        }
    }
}

/// The epoch number of the held-out pictures.
const VALID_EPOCH: u64 = u64::MAX;

impl<B: Backend> PairLoader<B> {
    pub fn new(
        cfg: &PretrainConfig,
        tokenizer: Arc<ClipTokenizer>,
        batches: usize,
        train: bool,
        device: B::Device,
    ) -> Self {
        let side = cfg.clip.vision_config.image_size;
        PairLoader {
            seed: cfg.seed,
            side,
            batch_size: cfg.batch_size,
            batches,
            epoch: train.then(|| Arc::new(AtomicU64::new(0))),
            tokenizer,
            pre: Arc::new(PreprocessConfig::for_image_size(side)),
            device,
        }
    }

    /// Batch `b` of epoch `epoch`.
    pub fn batch(&self, epoch: u64, b: usize) -> Result<PairBatch<B>> {
        let n = self.batch_size;
        let pairs: Vec<(Vec<f32>, String)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let index = (b * n + i) as u64;
                let (img, caption) = world::pretrain_pair(self.seed, epoch, index, self.side);
                (normalize_chw(&img, &self.pre), caption)
            })
            .collect();
        let captions: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
        let tokens = self.tokenizer.encode_batch(&captions)?.trimmed();
        let (tokens, eot) = token_tensors::<B>(&tokens, &self.device);
        let pixels: Vec<f32> = pairs.into_iter().flat_map(|(p, _)| p).collect();
        let images = Tensor::<B, 1>::from_data(
            TensorData::new(pixels, [n * 3 * self.side * self.side]),
            &self.device,
        )
        .reshape([n, 3, self.side, self.side]);
        Ok(PairBatch {
            images,
            tokens,
            eot,
        })
    }
}

struct PairIter<'a, B: Backend> {
    loader: &'a PairLoader<B>,
    epoch: u64,
    next: usize,
}

impl<B: Backend> Iterator for PairIter<'_, B> {
    type Item = PairBatch<B>;

    fn next(&mut self) -> Option<PairBatch<B>> {
        if self.next >= self.loader.batches {
            return None;
        }
        self.next += 1;
        // Captions are generated text of known words: tokenising cannot fail.
        Some(
            self.loader
                .batch(self.epoch, self.next - 1)
                .expect("generated captions tokenise"),
        )
    }
}

impl<B: Backend> DataLoaderIterator<PairBatch<B>> for PairIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(
            self.next * self.loader.batch_size,
            self.loader.batches * self.loader.batch_size,
        )
    }
}

impl<B: Backend> DataLoader<B, PairBatch<B>> for PairLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<PairBatch<B>> + 'a> {
        let epoch = match &self.epoch {
            Some(e) => e.fetch_add(1, Ordering::SeqCst),
            None => VALID_EPOCH,
        };
        Box::new(PairIter {
            loader: self,
            epoch,
            next: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.batches * self.batch_size
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, PairBatch<B>>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, PairBatch<B>>> {
        let per = self.batch_size.max(1);
        Arc::new(Self {
            batches: end.min(self.num_items()).saturating_sub(start) / per,
            ..self.clone()
        })
    }
}

/// CLIP under contrastive training.
#[derive(Module, Debug)]
pub struct ClipPretrainee<B: Backend> {
    pub clip: Clip<B>,
}

/// CLIP's bound on the learned temperature: `logit_scale ≤ ln 100`.
const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// Symmetric InfoNCE: the mean of the image→text and text→image
/// cross-entropies of `scale · cos(image_i, text_j)`, the diagonal being
/// the positives.
///
/// # Shapes
/// - `image`, `text`: `[batch, dim]` (unnormalised)
/// - `logit_scale`: `[1]`, the log inverse temperature
/// - returns the loss `[1]` and the image→text logits `[batch, batch]`
pub fn clip_loss<B: ClipBackend>(
    image: Tensor<B, 2>,
    text: Tensor<B, 2>,
    logit_scale: Tensor<B, 1>,
) -> (Tensor<B, 1>, Tensor<B, 2>, Tensor<B, 1, Int>) {
    let n = image.dims()[0];
    let device = image.device();
    let scale = logit_scale
        .clamp_max(MAX_LOGIT_SCALE)
        .exp()
        .unsqueeze_dim(0);
    let logits = l2_normalize(image).matmul(l2_normalize(text).transpose()) * scale;
    let targets = Tensor::<B, 1, Int>::arange(0..n as i64, &device);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let loss = (ce.forward(logits.clone(), targets.clone())
        + ce.forward(logits.clone().transpose(), targets.clone()))
        / 2.0;
    (loss, logits, targets)
}

impl<B: ClipBackend> ClipPretrainee<B> {
    fn forward(&self, batch: PairBatch<B>) -> ClassificationOutput<B> {
        let image = self.clip.encode_image(batch.images);
        let text = self.clip.encode_text(batch.tokens, batch.eot);
        let (loss, logits, targets) = clip_loss(image, text, self.clip.logit_scale.val());
        // "Accuracy" is in-batch retrieval: the right caption ranked first.
        ClassificationOutput::new(loss, logits, targets)
    }
}

impl<B: ClipAutodiffBackend> TrainStep for ClipPretrainee<B> {
    type Input = PairBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: PairBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let out = self.forward(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl<B: ClipBackend> InferenceStep for ClipPretrainee<B> {
    type Input = PairBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: PairBatch<B>) -> ClassificationOutput<B> {
        self.forward(batch)
    }
}

/// Linear warm-up to `peak`, then cosine decay to 0, per step.
#[derive(Debug, Clone)]
pub struct WarmupCosine {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub step: usize,
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        self.step += 1;
        let s = self.step as f64;
        if self.step <= self.warmup {
            return self.peak * s / self.warmup as f64;
        }
        let t = (s - self.warmup as f64) / (self.total - self.warmup).max(1) as f64;
        0.5 * self.peak * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

/// Pretrains CLIP from random weights (seeded by `cfg.seed`); Burn's
/// Learner logs into `dir`. Returns the trained model on the inner backend.
pub fn pretrain<B: ClipAutodiffBackend>(
    cfg: &PretrainConfig,
    tokenizer: &ClipTokenizer,
    dir: &Path,
    device: &B::Device,
) -> Result<Clip<B::InnerBackend>> {
    cfg.clip
        .validate()
        .map_err(|msg| Error::PretrainConfig { msg })?;
    if tokenizer.vocab_size() > cfg.clip.text_config.vocab_size {
        return Err(Error::PretrainConfig {
            msg: format!(
                "the tokenizer has {} tokens, more than the model's vocab_size {}",
                tokenizer.vocab_size(),
                cfg.clip.text_config.vocab_size
            ),
        });
    }
    B::seed(device, cfg.seed);
    let model = ClipPretrainee {
        clip: cfg.clip.init::<B>(device),
    };
    let tokenizer = Arc::new(tokenizer.clone());
    let train = PairLoader::<B>::new(
        cfg,
        tokenizer.clone(),
        cfg.steps_per_epoch,
        true,
        device.clone(),
    );
    let valid = PairLoader::<B::InnerBackend>::new(
        cfg,
        tokenizer,
        cfg.valid_batches,
        false,
        device.clone(),
    );
    let optim = AdamWConfig::new()
        .with_beta_2(0.98)
        .with_epsilon(1e-6)
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    let sched = WarmupCosine {
        peak: cfg.lr,
        warmup: cfg.warmup_steps,
        total: cfg.epochs * cfg.steps_per_epoch,
        step: 0,
    };
    // Ctrl-C stops at the next batch, as in training runs.
    let interrupter = burn::train::Interrupter::new();
    let _watch = crate::fit::SignalWatch::start(interrupter.clone());
    let failure = WriteFailure::new(interrupter.clone());
    let (logger, logger_closed) = MetricFiles::new(dir, failure.clone());
    let result = SupervisedTraining::new(dir, Arc::new(train), Arc::new(valid))
        .with_interrupter(interrupter.clone())
        .with_metric_logger(logger)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .num_epochs(cfg.epochs)
        .with_application_logger(None)
        .renderer(EpochLines::new("pretrain"))
        .launch(Learner::new(model, optim, sched));
    MetricFiles::closed(&logger_closed);
    if let Some(f) = failure.take() {
        return Err(Error::WriteFailed {
            path: f.path,
            source: f.source,
        });
    }
    if interrupter.should_stop() {
        return Err(Error::Interrupted { path: dir.into() });
    }
    Ok(result.model.clip)
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn symmetric_infonce_matches_pytorch() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/pretrain/clip_loss.json"
        );
        let f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let (n, d) = (
            f["shape"][0].as_u64().unwrap() as usize,
            f["shape"][1].as_u64().unwrap() as usize,
        );
        let device = Default::default();
        let mat = |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), &device).reshape([n, d]);
        for case in f["cases"].as_array().unwrap() {
            let scale = case["logit_scale"].as_f64().unwrap() as f32;
            let (loss, logits, _) = clip_loss(
                mat(floats(&f["image"])),
                mat(floats(&f["text"])),
                Tensor::from_floats([scale], &device),
            );
            let want = case["loss"].as_f64().unwrap() as f32;
            let got = loss.into_scalar();
            assert!((got - want).abs() < 1e-4, "loss {got} vs {want}");
            let got: Vec<f32> = logits.into_data().to_vec().unwrap();
            for (g, w) in got.iter().zip(floats(&case["logits"])) {
                assert!((g - w).abs() < 1e-3, "logit {g} vs {w}");
            }
        }
    }

    #[test]
    fn warmup_then_cosine() {
        let mut s = WarmupCosine {
            peak: 1.0,
            warmup: 2,
            total: 6,
            step: 0,
        };
        let got: Vec<f64> = (0..6).map(|_| s.step()).collect();
        let want = [0.5, 1.0, 0.853_553, 0.5, 0.146_447, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?}");
        }
        assert_eq!(LrScheduler::to_record::<B>(&s), 6);
    }
}
