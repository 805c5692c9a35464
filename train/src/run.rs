//! A training run: one method, one dataset, one protocol, several seeds.
//! Each seed draws its few-shot set, builds the method for the training
//! classes, fits it on Burn's Learner (unless it has nothing to train),
//! saves a self-describing checkpoint, and scores every set the protocol
//! evaluates. The same code serves every method, through the registry.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};

use mmrl_data::dataset::{split_file, Source};
use mmrl_data::loader::{ImageLoader, LoaderMode};
use mmrl_data::preprocess::PreprocessConfig;
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::Clip;
use mmrl_model::methods::Method;

use crate::checkpoint::{clip_hash, save_checkpoint, CheckpointHeader};
use crate::config::TrainConfig;
use crate::eval::evaluate;
use crate::fit::{last_train_accuracy, Fit};
use crate::loss::MethodLoss;
use crate::protocol::{samples, targets, RunData};
use crate::registry::{self, TrainVisitor};
use crate::results::{summarise, write_results, RunReport, SeedResult};
use crate::zeroshot::class_prompts;
use crate::{Error, Result};
use mmrl_model::ClipAutodiffBackend;

/// Where a run reads and writes.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dataset: Source,
    pub root: PathBuf,
    pub classnames: Option<PathBuf>,
    pub clip: PathBuf,
    pub output: PathBuf,
    /// Continue the run in `output` from its last completed epoch.
    pub resume: bool,
    /// Testing aid: stop during the epoch after this one, as a kill would.
    pub interrupt_after_epoch: Option<usize>,
}

/// Trains (or, for a method with nothing to train, only evaluates) over
/// every seed and writes `results.{json,md,csv}` into `paths.output`.
pub fn run<B: ClipAutodiffBackend>(
    cfg: &TrainConfig,
    paths: &RunPaths,
    clip: &Clip<B::InnerBackend>,
    tokenizer: &ClipTokenizer,
    pre: &PreprocessConfig,
    device: &B::Device,
) -> Result<RunReport> {
    registry::check(&cfg.method)?;
    cfg.validate()?;
    let _lock = crate::lock::RunLock::acquire(&paths.output)?;
    let config_file = paths.output.join("config.toml");
    if paths.resume && config_file.is_file() {
        let before = std::fs::read_to_string(&config_file)
            .map_err(|e| mmrl_data::Error::io(&config_file, e))?;
        if before != cfg.to_toml() {
            return Err(Error::ResumeMismatch { path: config_file });
        }
    }
    split_file::write_atomic(&config_file, cfg.to_toml().as_bytes())?;
    let hash = OnceCell::new();
    let data = RunData::read(&paths.dataset, &paths.root, paths.classnames.as_deref())?;
    let mut results = Vec::new();
    let mut dataset_name = String::new();
    for &seed in &cfg.seeds {
        let dir = paths.output.join(format!("seed{seed}"));
        let done = dir.join("result.json");
        if paths.resume && done.is_file() {
            let text =
                std::fs::read_to_string(&done).map_err(|e| mmrl_data::Error::io(&done, e))?;
            let (name, r): (String, SeedResult) =
                serde_json::from_str(&text).map_err(|e| Error::BadSeedResult {
                    path: done.clone(),
                    msg: e.to_string(),
                })?;
            println!(
                "{} seed {seed}: done before, {}",
                cfg.method,
                serde_json::to_string(&r).expect("results serialise")
            );
            dataset_name = name;
            results.push(r);
            continue;
        }
        if !paths.resume && dir.join("train").exists() {
            return Err(Error::PreviousRun { path: dir });
        }
        std::fs::create_dir_all(&dir).map_err(|e| mmrl_data::Error::io(&dir, e))?;
        let (train_subsample, evaluated) = targets(cfg, &paths.dataset)?;
        let train = data.select(cfg.shots, seed, train_subsample, true)?;
        dataset_name = train.dataset.clone();
        split_file::write_json_atomic(&dir.join("fewshot.json"), &train.manifest)?;
        let job = SeedJob::<B> {
            cfg,
            paths,
            data: &data,
            train: &train,
            train_subsample,
            evaluated: &evaluated,
            clip,
            tokenizer,
            pre,
            device,
            seed,
            dir: &dir,
            hash: &hash,
        };
        let r = registry::train_with::<B, _>(&cfg.method, job)??;
        split_file::write_json_atomic(&done, &serde_json::json!([dataset_name, r]))?;
        println!(
            "{} seed {seed}: {}",
            cfg.method,
            serde_json::to_string(&r).expect("results serialise")
        );
        results.push(r);
    }
    let report = summarise(cfg, &dataset_name, results);
    write_results(&paths.output, &report)?;
    Ok(report)
}

/// Held while a seed's initialisation is drawn (see `SeedJob::visit`).
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One seed of a run, for whichever method the registry hands it.
struct SeedJob<'a, B: ClipAutodiffBackend> {
    cfg: &'a TrainConfig,
    paths: &'a RunPaths,
    data: &'a RunData<'a>,
    /// The seed's few-shot draw of the training classes.
    train: &'a mmrl_data::dataset::Prepared,
    train_subsample: mmrl_data::few_shot::Subsample,
    evaluated: &'a [crate::protocol::EvalTarget],
    clip: &'a Clip<B::InnerBackend>,
    tokenizer: &'a ClipTokenizer,
    pre: &'a PreprocessConfig,
    device: &'a B::Device,
    seed: u64,
    dir: &'a Path,
    /// The CLIP weights' SHA-256, computed once per run when first needed.
    hash: &'a OnceCell<String>,
}

impl<B: ClipAutodiffBackend> TrainVisitor<B> for SeedJob<'_, B> {
    type Out = Result<SeedResult>;

    fn visit<M>(self) -> Result<SeedResult>
    where
        M: MethodLoss<B> + AutodiffModule<B>,
        M::InnerModule: MethodLoss<B::InnerBackend, Config = M::Config>,
    {
        type Inner<M, B> = <M as AutodiffModule<B>>::InnerModule;
        let (cfg, seed, train) = (self.cfg, self.seed, self.train);
        let name = <M as Method<B>>::NAME;
        let config: M::Config = cfg.method_config(name, &train.dataset)?;
        let template = if cfg.template.is_empty() {
            train.template.clone()
        } else {
            cfg.template.clone()
        };
        let inner_device = self.clip.visual_projection.weight.device();
        let prompts = class_prompts::<B::InnerBackend, Inner<M, B>, _>(
            &config,
            self.tokenizer,
            self.clip,
            &train.classes,
            &template,
        )?;
        // The methods draw their parameters on the host (`mmrl_model::init`,
        // one generator per thread): the same seed starts every backend from
        // the same weights. The backend's own generator is global and seeded
        // too, for anything drawn on it (lazily initialised parameters, which
        // `no_grad` draws by visiting every parameter): a lock keeps runs on
        // other threads (the demo's) from interleaving those draws.
        let fresh = {
            let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
            B::seed(self.device, seed);
            mmrl_model::init::seed(seed);
            Inner::<M, B>::init(&config, self.clip.clone(), &prompts, &inner_device)?.no_grad()
        };
        let (mut model, train_accuracy) = if fresh.num_trainable_params() > 0 {
            println!(
                "{} seed {seed}: {} trainable parameters",
                cfg.method,
                fresh.num_trainable_params()
            );
            let fit = Fit {
                cfg,
                resume: self.paths.resume,
                interrupt_after_epoch: self.paths.interrupt_after_epoch,
                dir: self.dir,
                seed,
                pre: self.pre,
                data: train,
            };
            let trained = fit.train::<B, M>(crate::step::trainable(fresh), self.device)?;
            let hash = match self.hash.get() {
                Some(h) => h.clone(),
                None => {
                    let h = clip_hash(&self.paths.clip)?;
                    self.hash.get_or_init(|| h).clone()
                }
            };
            let mut header = CheckpointHeader::new(
                cfg,
                serde_json::to_value(&config).map_err(|e| Error::Serialise {
                    what: "the method config",
                    msg: e.to_string(),
                })?,
                &train.dataset,
            );
            header.template = template.clone();
            header.classes = train.classes.clone();
            header.seed = Some(seed);
            header.clip_sha256 = hash;
            save_checkpoint(
                &self.dir.join(format!("{name}.safetensors")),
                trained.state(),
                &header,
            )?;
            (trained, last_train_accuracy(self.dir, cfg.epochs))
        } else {
            (fresh, None)
        };
        let mut scores = Vec::new();
        for t in self.evaluated {
            let (data, tpl) =
                self.data
                    .target(t, train, self.train_subsample, cfg.shots, seed, &template)?;
            let prompts = class_prompts::<B::InnerBackend, Inner<M, B>, _>(
                &config,
                self.tokenizer,
                self.clip,
                &data.classes,
                &tpl,
            )?;
            model = model.set_classes(&prompts)?;
            let loader = ImageLoader::<B::InnerBackend>::new(
                samples(&data.test),
                LoaderMode::Eval {
                    config: self.pre.clone(),
                },
                cfg.test_batch_size,
                cfg.workers,
                inner_device.clone(),
            )
            .skip_bad_images(cfg.skip_bad_images);
            let text = model.text();
            let tally = evaluate(&loader, |images| {
                model.predict(images, &text, t.classes).logits
            })?;
            scores.push((t.key.clone(), tally.accuracy()));
        }
        let n_classes = train.classes.len().max(1) as f64;
        let diverged = train_accuracy.is_some_and(|a| a < 1.5 * 100.0 / n_classes);
        Ok(SeedResult::new(
            seed,
            cfg.protocol,
            &scores,
            train_accuracy,
            diverged,
        ))
    }
}
