//! Fitting one seed on Burn's Learner: loaders, the optimiser and the
//! schedule from the config, the method's loss terms as metrics,
//! checkpoints and resume, optional validation, the per-epoch display.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::backend::Flex;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{Adam, AdamConfig, AdamWConfig, SgdConfig};
use burn::prelude::*;
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy, KeepLastNCheckpoints};
use burn::train::metric::store::{Aggregate, EventStoreClient, Split};
use burn::train::metric::Metric;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::EarlyStoppingStrategy;
use burn::train::{InferenceStep, Learner, SupervisedTraining, TrainStep};

use mmrl_data::augment::TrainTransform;
use mmrl_data::dataset::Prepared;
use mmrl_data::loader::{ImageBatch, ImageLoader, LoaderMode};
use mmrl_data::preprocess::PreprocessConfig;

use crate::config::{LrScheduler, OptimizerKind, TrainConfig};
use crate::durable::{AtomicMpkRecorder, MetricFiles, WriteFailure};
use crate::loss::MethodLoss;
use crate::protocol::samples;
use crate::renderer::EpochLines;
use crate::schedule::DasslSchedule;
use crate::step::{LossTermMetric, StepOutput, Trainee};
use crate::{Error, Result};
use mmrl_model::{ClipAutodiffBackend, ClipBackend};

/// What Burn's Learner needs for one seed.
pub struct Fit<'a> {
    pub cfg: &'a TrainConfig,
    /// Continue from the last complete epoch's checkpoint in `dir`.
    pub resume: bool,
    /// Testing aid: stop during the epoch after this one, as a kill would.
    pub interrupt_after_epoch: Option<usize>,
    /// The seed's folder (`train/` inside it holds Burn's logs and checkpoints).
    pub dir: &'a Path,
    pub seed: u64,
    pub pre: &'a PreprocessConfig,
    /// The seed's few-shot draw (train and val lists).
    pub data: &'a Prepared,
}

/// The last epoch whose model, optimizer and scheduler checkpoints all
/// exist and decode to their end. Checkpoints are written atomically
/// ([`crate::durable::AtomicMpkRecorder`]), but a run of an older version
/// (Burn's recorder writes in place) or a copied folder can hold a file cut
/// short: such an epoch is skipped with a notice, and the run resumes from
/// the one before (the last two are kept).
pub fn last_checkpoint(dir: &Path, logs_complete: impl Fn(usize) -> bool) -> Option<usize> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut epochs: Vec<usize> = rd
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?
                .strip_suffix(".mpk")?
                .parse()
                .ok()
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    epochs.into_iter().find(|n| {
        let broken: Vec<String> = ["model", "optim", "scheduler"]
            .iter()
            .map(|k| dir.join(format!("{k}-{n}.mpk")))
            .filter(|p| !decodes(p))
            .map(|p| p.display().to_string())
            .collect();
        if !broken.is_empty() {
            println!(
                "epoch {n}'s checkpoint is incomplete or missing ({}): trying the one before",
                broken.join(", ")
            );
            return false;
        }
        // Burn logs metrics on its event thread, which can trail the
        // checkpoint: a run killed in between has a complete checkpoint and
        // a cut log, from which the results would be computed.
        if !logs_complete(*n) {
            println!("epoch {n}'s metric logs are incomplete: resuming from the epoch before");
            return false;
        }
        true
    })
}

/// Whether every metric log of an epoch (`<learner dir>/<split>/epoch-N/
/// <metric>.log`, the loss at least) holds one line per batch.
fn logs_complete(dir: &Path, batches: usize) -> bool {
    let lines = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
            .ok()
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    lines(&dir.join("Loss.log")) == Some(batches)
        && entries.filter_map(|e| e.ok()).all(|e| {
            e.path().extension().is_none_or(|x| x != "log") || lines(&e.path()) == Some(batches)
        })
}

/// Whether a MessagePack file holds one complete value.
fn decodes(path: &Path) -> bool {
    std::fs::read(path)
        .is_ok_and(|bytes| rmp_serde::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok())
}

/// The last epoch's mean training accuracy from Burn's metric log, for the
/// run of seed folder `dir` (Burn writes `<learner dir>/train/epoch-N/`, and
/// the learner dir is `dir/train`).
pub fn last_train_accuracy(dir: &Path, epoch: usize) -> Option<f64> {
    log_mean(&dir.join(format!("train/train/epoch-{epoch}/Accuracy.log")))
}

/// An epoch's value of one of Burn's metric logs (one `value,count` line
/// per batch), computed as Burn's metric store computes it: each batch
/// weighted by its count.
fn log_mean(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (sum, n) = text
        .lines()
        .filter_map(|l| {
            let (v, n) = l.split_once(',')?;
            Some((v.trim().parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
        })
        .fold((0.0, 0.0), |(s, t), (v, n)| (s + v * n, t + n));
    (n > 0.0).then(|| sum / n)
}

/// PyTorch's Adam (`torch.optim.Adam`): betas 0.9/0.999, the config's eps,
/// `weight_decay` as an L2 term added to the gradient.
pub fn adam<B: ClipAutodiffBackend, M: AutodiffModule<B>>(
    cfg: &TrainConfig,
) -> OptimizerAdaptor<Adam, M, B> {
    AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(cfg.eps as f32)
        .with_weight_decay(
            (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)),
        )
        .init()
}

impl Fit<'_> {
    /// Trains `model` (set to its training classes) with the config's
    /// optimiser and schedule; returns the last epoch's model on the inner
    /// backend.
    pub fn train<B, M>(&self, model: M, device: &B::Device) -> Result<M::InnerModule>
    where
        B: ClipAutodiffBackend,
        M: MethodLoss<B> + AutodiffModule<B>,
        M::InnerModule: MethodLoss<B::InnerBackend>,
    {
        let cfg = self.cfg;
        let trainee = Trainee::<B, M>::new(model).fixed_images(!cfg.augment);
        let trained = match cfg.optimizer {
            // Dassl's AdamW: PyTorch's betas, the config's eps and decoupled decay.
            OptimizerKind::Adamw => {
                let optim = AdamWConfig::new()
                    .with_beta_1(0.9)
                    .with_beta_2(0.999)
                    .with_epsilon(cfg.eps as f32)
                    .with_weight_decay(cfg.weight_decay as f32)
                    .init();
                self.run::<B, _, _>(trainee, optim, M::TERMS, device)?
            }
            OptimizerKind::Adam => self.run::<B, _, _>(trainee, adam(cfg), M::TERMS, device)?,
            // PyTorch's SGD: dampening 0 (Burn's default is 0.1), L2 decay.
            OptimizerKind::Sgd => {
                let optim = SgdConfig::new()
                    .with_momentum(Some(
                        MomentumConfig::new()
                            .with_momentum(cfg.momentum)
                            .with_dampening(0.0)
                            .with_nesterov(false),
                    ))
                    .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay as f32)))
                    .init();
                self.run::<B, _, _>(trainee, optim, M::TERMS, device)?
            }
        };
        Ok(trained.model)
    }

    fn run<B, T, O>(
        &self,
        trainee: T,
        optim: O,
        terms: &'static [&'static str],
        device: &B::Device,
    ) -> Result<T::InnerModule>
    where
        B: ClipAutodiffBackend,
        T: TrainStep<Input = ImageBatch<B>, Output = StepOutput<B>>
            + AutodiffModule<B>
            + std::fmt::Display
            + 'static,
        T::InnerModule: InferenceStep<
            Input = ImageBatch<B::InnerBackend>,
            Output = StepOutput<B::InnerBackend>,
        >,
        O: burn::optim::Optimizer<T, B> + 'static,
    {
        let (cfg, seed, dir) = (self.cfg, self.seed, self.dir);
        let ckpt_dir = dir.join("train").join("checkpoint");
        let train_loader = ImageLoader::<B>::new(
            samples(&self.data.train),
            if cfg.augment {
                LoaderMode::Train {
                    transform: TrainTransform {
                        scale: cfg.crop_scale,
                        ..TrainTransform::mmrl(self.pre.crop_size)
                    },
                    seed,
                }
            } else {
                LoaderMode::Fixed {
                    config: self.pre.clone(),
                    seed,
                }
            },
            cfg.batch_size,
            cfg.workers,
            device.clone(),
        )
        .with_cache(cfg.cache_images)
        .skip_bad_images(cfg.skip_bad_images);
        let iters = train_loader.batch_indices(0).len();
        let valid_loader = ImageLoader::<B::InnerBackend>::new(
            samples(&self.data.val),
            LoaderMode::Eval {
                config: self.pre.clone(),
            },
            cfg.test_batch_size,
            cfg.workers,
            device.clone(),
        )
        .skip_bad_images(cfg.skip_bad_images);
        // Resume after the last epoch whose checkpoint and logs are whole:
        // every training batch logged, and the validation pass when one ran.
        let validates =
            |e: usize| cfg.patience > 0 || (cfg.val_every > 0 && e.is_multiple_of(cfg.val_every));
        let valid_batches = valid_loader.batch_indices(0).len();
        let learner = dir.join("train");
        let resume_from = if self.resume {
            last_checkpoint(&ckpt_dir, |e| {
                let logs = |split: &str| learner.join(format!("{split}/epoch-{e}"));
                logs_complete(&logs("train"), iters)
                    && (!validates(e) || logs_complete(&logs("valid"), valid_batches))
            })
        } else {
            None
        };
        let train_loader = train_loader.with_start_epoch(resume_from.unwrap_or(0) as u64);
        if let Some(n) = resume_from {
            println!(
                "{} seed {seed}: resuming after epoch {n} ({})",
                cfg.method,
                ckpt_dir.display()
            );
        }
        let sched = DasslSchedule {
            base_lr: cfg.lr,
            epochs: cfg.epochs,
            warmup_epochs: cfg.warmup_epochs,
            warmup_lr: cfg.warmup_lr,
            iters_per_epoch: iters,
            step: 0,
            constant: cfg.lr_scheduler == LrScheduler::Constant,
        };
        let mut train_arc: Arc<dyn DataLoader<B, ImageBatch<B>>> = Arc::new(train_loader.clone());
        if cfg.patience > 0 && self.data.val.is_empty() {
            return Err(Error::BadSetting {
                key: "patience",
                msg: format!(
                    "needs a validation split, and {} has none; set patience = 0",
                    self.data.dataset
                ),
            });
        }
        // Dassl's references never validate (`TEST.FINAL_MODEL last_step`):
        // the validation pass runs only every `val_every` epochs, or after
        // every epoch under early stopping.
        let valid_arc: Arc<dyn DataLoader<B::InnerBackend, ImageBatch<B::InnerBackend>>> =
            Arc::new(EveryNth {
                inner: Arc::new(valid_loader.clone()),
                every: if cfg.patience > 0 { 1 } else { cfg.val_every },
                epoch: Arc::new(AtomicUsize::new(resume_from.unwrap_or(0))),
            });
        let interrupter = burn::train::Interrupter::new();
        let _watch = SignalWatch::start(interrupter.clone());
        // Burn's own log and checkpoint writers panic or tear files on a
        // full disk; these stop the run with the failing file instead.
        let failure = WriteFailure::new(interrupter.clone());
        let (logger, logger_closed) = MetricFiles::new(dir.join("train"), failure.clone());
        let logger = logger.resumed_after(resume_from.unwrap_or(0));
        if let Some(n) = self.interrupt_after_epoch {
            let remaining = n.saturating_sub(resume_from.unwrap_or(0));
            train_arc = Arc::new(StopAfter {
                inner: train_arc,
                remaining: Arc::new(AtomicUsize::new(remaining)),
                interrupter: interrupter.clone(),
            });
        }
        let mut training = SupervisedTraining::new(dir.join("train"), train_arc, valid_arc)
            .with_interrupter(interrupter.clone())
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .metric_train_numeric(LearningRateMetric::new())
            .with_metric_logger(logger)
            // Full precision, so that a resumed run continues bit for bit;
            // the last two epochs are kept, and the best validation epoch
            // under early stopping.
            .with_file_checkpointer(AtomicMpkRecorder::new(failure.clone()))
            .num_epochs(cfg.epochs)
            .with_application_logger(None);
        // On resume the early stopper continues from the epochs already run.
        let best = match resume_from {
            Some(n) => BestValidation::restored(&dir.join("train"), &ckpt_dir, n),
            None => BestValidation::default(),
        };
        training = if cfg.patience > 0 {
            training
                .with_checkpointing_strategy(best.clone())
                .early_stopping(EarlyStop {
                    best: best.clone(),
                    patience: cfg.patience,
                })
        } else {
            training.with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        };
        for (i, name) in terms.iter().enumerate() {
            training = training.metric_train_numeric(LossTermMetric::<Flex>::new(i, name));
        }
        if let Some(n) = resume_from {
            training = training.checkpoint(n);
        }
        let result = training
            .renderer(EpochLines::new(format!("{} seed {seed}", cfg.method)))
            .launch(Learner::new(trainee, optim, sched));
        // The results read the logs: wait for their last lines.
        MetricFiles::closed(&logger_closed);
        if let Some(f) = failure.take() {
            // An epoch whose metric log or checkpoint was cut runs again on
            // resume: drop whatever checkpoint files it (or a later one) wrote.
            if let Some(k) = f.epoch {
                for e in k..=cfg.epochs {
                    for kind in ["model", "optim", "scheduler"] {
                        let _ = std::fs::remove_file(ckpt_dir.join(format!("{kind}-{e}.mpk")));
                    }
                }
            }
            return Err(Error::WriteFailed {
                path: f.path,
                source: f.source,
            });
        }
        if interrupter.should_stop() {
            return Err(Error::Interrupted {
                path: dir.join("train"),
            });
        }
        if let Some(e) = train_loader
            .take_error()
            .or_else(|| valid_loader.take_error())
        {
            return Err(e.into());
        }
        let mut model = result.model;
        if let Some((epoch, accuracy)) = best.best() {
            let path = ckpt_dir.join(format!("model-{epoch}"));
            model = model
                .load_file(&path, &AtomicMpkRecorder::default(), device)
                .map_err(|e| Error::LearnerCheckpoint {
                    path: path.with_extension("mpk"),
                    msg: format!("cannot load the best validation epoch's weights: {e}"),
                })?;
            println!(
                "{} seed {seed}: kept epoch {epoch}'s weights (best validation accuracy {accuracy:.2} %)",
                cfg.method
            );
        }
        Ok(model)
    }
}

/// The epoch with the highest validation accuracy so far, as the
/// Multi-Modal Adapter's reference picks it (`acc1 > best_acc1`: the first
/// of equal epochs), read from Burn's metric store by [`EarlyStop`] after
/// each validation pass. As a checkpointing strategy it keeps the last two
/// epochs and the best one; the trainer loads the best at the end.
///
/// Burn runs the checkpointing strategy right after the validation pass,
/// before its metric store has always taken in that pass's numbers (its own
/// `MetricCheckpointingStrategy` can miss them), so every epoch is saved
/// and an epoch is deleted only once the early stopper has scored it.
#[derive(Clone, Default)]
struct BestValidation {
    state: Arc<std::sync::Mutex<BestState>>,
}

#[derive(Default)]
struct BestState {
    best: Option<(usize, f64)>,
    saved: Vec<usize>,
}

impl BestValidation {
    fn lock(&self) -> std::sync::MutexGuard<'_, BestState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scores `epoch` (waiting up to 2 s for the store to take in its
    /// validation pass).
    fn update(&self, epoch: usize, store: &EventStoreClient) {
        let name = AccuracyMetric::<Flex>::new().name();
        let mut acc = None;
        for _ in 0..200 {
            acc = store.find_metric(&name, epoch, Aggregate::Mean, &Split::Valid);
            if acc.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut state = self.lock();
        if let Some(acc) = acc {
            if state.best.is_none_or(|(_, b)| acc > b) {
                state.best = Some((epoch, acc));
            }
        }
    }

    fn best(&self) -> Option<(usize, f64)> {
        self.lock().best
    }

    /// The state after epochs `1..=epoch` of an interrupted run (for
    /// `--resume`): each epoch scored from Burn's validation log in
    /// `learner_dir`, the value its metric store computed from the same
    /// file, and the checkpoints still in `ckpt_dir`.
    fn restored(learner_dir: &Path, ckpt_dir: &Path, epoch: usize) -> Self {
        let mut state = BestState::default();
        for e in 1..=epoch {
            let log = learner_dir.join(format!("valid/epoch-{e}/Accuracy.log"));
            if let Some(acc) = log_mean(&log) {
                if state.best.is_none_or(|(_, b)| acc > b) {
                    state.best = Some((e, acc));
                }
            }
            if ckpt_dir.join(format!("model-{e}.mpk")).exists() {
                state.saved.push(e);
            }
        }
        BestValidation {
            state: Arc::new(std::sync::Mutex::new(state)),
        }
    }
}

impl CheckpointingStrategy for BestValidation {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        let mut state = self.lock();
        let best = state.best.map(|(e, _)| e);
        let mut actions = vec![CheckpointingAction::Save];
        state.saved.push(epoch);
        state.saved.retain(|&e| {
            let keep = e + 1 >= epoch || Some(e) == best;
            if !keep {
                actions.push(CheckpointingAction::Delete(e));
            }
            keep
        });
        actions
    }
}

/// Stops after `patience` epochs without a better validation accuracy
/// (the reference's `epochs_since_improvement >= patience`).
#[derive(Clone)]
struct EarlyStop {
    best: BestValidation,
    patience: usize,
}

impl EarlyStoppingStrategy for EarlyStop {
    fn should_stop(&mut self, epoch: usize, store: &EventStoreClient) -> bool {
        self.best.update(epoch, store);
        self.best
            .best()
            .is_some_and(|(best, _)| epoch - best >= self.patience)
    }
}

/// Turns a SIGINT/SIGTERM ([`crate::signals`]) into a stop of Burn's
/// Learner at the next batch, while a seed trains.
pub(crate) struct SignalWatch {
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl SignalWatch {
    pub(crate) fn start(interrupter: burn::train::Interrupter) -> SignalWatch {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                if crate::signals::requested() {
                    interrupter.stop(Some("stopped by a signal"));
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        SignalWatch { done }
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// A validation loader that yields batches only every `every` epochs
/// (never when 0): Burn's Learner runs a validation pass after each epoch.
struct EveryNth<B: Backend, O> {
    inner: Arc<dyn DataLoader<B, O>>,
    every: usize,
    /// Epochs seen so far (including those before a resume).
    epoch: Arc<AtomicUsize>,
}

/// An iterator with nothing in it, of any item type.
struct Empty<O>(std::marker::PhantomData<O>);

impl<O> Iterator for Empty<O> {
    type Item = O;
    fn next(&mut self) -> Option<O> {
        None
    }
}

impl<O> DataLoaderIterator<O> for Empty<O> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: 0,
            items_total: 0,
        }
    }
}

impl<B: ClipBackend, O: 'static> DataLoader<B, O> for EveryNth<B, O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if self.every > 0 && epoch.is_multiple_of(self.every) {
            self.inner.iter()
        } else {
            Box::new(Empty(std::marker::PhantomData))
        }
    }

    fn num_items(&self) -> usize {
        if self.every > 0 {
            self.inner.num_items()
        } else {
            0
        }
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, O>> {
        Arc::new(EveryNth {
            inner: self.inner.to_device(device),
            every: self.every,
            epoch: self.epoch.clone(),
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, O>> {
        Arc::new(EveryNth {
            inner: self.inner.slice(start, end),
            every: self.every,
            epoch: self.epoch.clone(),
        })
    }
}

/// Testing aid: a train loader that interrupts training at the first batch
/// after `remaining` epochs, before that epoch's checkpoint, as a kill does.
struct StopAfter<B: Backend, O> {
    inner: Arc<dyn DataLoader<B, O>>,
    remaining: Arc<AtomicUsize>,
    interrupter: burn::train::Interrupter,
}

impl<B: ClipBackend, O: 'static> DataLoader<B, O> for StopAfter<B, O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        if self.remaining.load(Ordering::SeqCst) == 0 {
            self.interrupter.stop(Some("interrupted for testing"));
        } else {
            self.remaining.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.iter()
    }

    fn num_items(&self) -> usize {
        self.inner.num_items()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, O>> {
        Arc::new(StopAfter {
            inner: self.inner.to_device(device),
            remaining: self.remaining.clone(),
            interrupter: self.interrupter.clone(),
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, O>> {
        Arc::new(StopAfter {
            inner: self.inner.slice(start, end),
            remaining: self.remaining.clone(),
            interrupter: self.interrupter.clone(),
        })
    }
}
