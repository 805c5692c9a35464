//! A training run: one method, one dataset, one protocol, several seeds;
//! results as JSON, Markdown and CSV; trained parameters as small
//! checkpoints tied to the CLIP weights they were trained on.

use std::path::{Path, PathBuf};

use burn::data::dataloader::DataLoader;
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainStep};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use mmrl_data::augment::TrainTransform;
use mmrl_data::dataset::{self, split_file, Item, Prepared, Request, Source};
use mmrl_data::few_shot::Subsample;
use mmrl_data::loader::{ImageBatch, ImageLoader, LoaderMode, Sample};
use mmrl_data::preprocess::PreprocessConfig;
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::Clip;
use mmrl_model::methods::coop::CoopConfig;
use mmrl_model::methods::coop_io::coop_state;
use mmrl_model::methods::mmrl::MmrlConfig;
use mmrl_model::methods::mmrl_io::mmrl_state;
use mmrl_model::Frozen;

use crate::method::{
    class_text, evaluate_coop, evaluate_mmrl, evaluate_zeroshot, ClassText, CoopTrainee, Head,
    MethodKind, MmrlTrainee, PromptIds,
};
use crate::renderer::EpochLines;
use crate::schedule::DasslSchedule;
use crate::zeroshot::class_text_features;
use crate::{Error, Result};

/// The evaluation protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Train on the base half of the classes; test on base and novel.
    Base2novel,
    /// Train and test on all classes with K shots.
    Fewshot,
    /// Train on all classes of the source (ImageNet); test on the source
    /// and, with their own class names and templates, the 10 other datasets.
    Cross,
    /// As `cross`, tested on ImageNet-V2, -Sketch, -A and -R.
    Dg,
}

/// Everything that decides a run's numbers: printed at start and saved
/// with the run (`config.toml`). Defaults are MMRL's `vit_b16.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub method: MethodKind,
    pub protocol: Protocol,
    pub shots: usize,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub test_batch_size: usize,
    /// AdamW (Dassl: betas 0.9/0.999, eps 1e-8 as PyTorch).
    pub lr: f64,
    pub weight_decay: f64,
    /// AdamW's epsilon (MMRL).
    pub eps: f64,
    /// SGD momentum (CoOp; dampening 0 as PyTorch).
    pub momentum: f64,
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    /// RandomResizedCrop's scale range.
    pub crop_scale: (f64, f64),
    /// Decoding threads.
    pub workers: usize,
    /// Keep decoded images in memory after the first epoch.
    pub cache_images: bool,
    /// Log and skip unreadable images instead of stopping the run.
    pub skip_bad_images: bool,
    /// Prompt template; empty: the dataset's (`CUSTOM_TEMPLATES`).
    pub template: String,
    /// Cross-dataset / domain-generalisation targets (CLI names, under the
    /// same --root); empty: the protocol's ten / four.
    pub targets: Vec<String>,
    /// MMRL's settings; `reg_weight`/`rep_dim` default per dataset.
    pub mmrl: MmrlSection,
    /// CoOp's settings.
    pub coop: CoopConfig,
}

/// `[mmrl]`: unset values take the reference's per-dataset defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MmrlSection {
    pub n_rep_tokens: Option<usize>,
    pub rep_dim: Option<usize>,
    pub rep_layers: Option<Vec<usize>>,
    pub alpha: Option<f64>,
    pub reg_weight: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: MethodKind::Mmrl,
            protocol: Protocol::Base2novel,
            shots: 16,
            seeds: vec![1, 2, 3],
            epochs: 10,
            batch_size: 4,
            test_batch_size: 250,
            lr: 1e-3,
            weight_decay: 5e-4,
            eps: 1e-8,
            momentum: 0.9,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
            crop_scale: (0.5, 1.0),
            workers: 2,
            cache_images: true,
            skip_bad_images: false,
            template: String::new(),
            targets: Vec::new(),
            mmrl: MmrlSection::default(),
            coop: CoopConfig::default(),
        }
    }
}

impl TrainConfig {
    /// The reference settings of `method` when no config file is given:
    /// MMRL's `vit_b16.yaml`, CoOp's `vit_b16.yaml` (16 shots), zero-shot.
    pub fn defaults_for(method: MethodKind) -> Self {
        let base = TrainConfig {
            method,
            ..TrainConfig::default()
        };
        match method {
            MethodKind::Mmrl => base,
            MethodKind::Coop => TrainConfig {
                epochs: 200,
                batch_size: 32,
                test_batch_size: 100,
                lr: 0.002,
                crop_scale: (0.08, 1.0),
                ..base
            },
            MethodKind::Zeroshot => TrainConfig {
                test_batch_size: 100,
                ..base
            },
        }
    }
}

impl TrainConfig {
    /// MMRL's settings for `dataset` (Dassl name), with the overrides.
    pub fn mmrl_config(&self, dataset: &str) -> MmrlConfig {
        let mut c = MmrlConfig::for_dataset(dataset);
        let m = &self.mmrl;
        if let Some(v) = m.n_rep_tokens {
            c.n_rep_tokens = v;
        }
        if let Some(v) = m.rep_dim {
            c.rep_dim = v;
        }
        if m.rep_layers.is_some() {
            c.rep_layers = m.rep_layers.clone();
        }
        if let Some(v) = m.alpha {
            c.alpha = v;
        }
        if let Some(v) = m.reg_weight {
            c.reg_weight = v;
        }
        c
    }

    /// Parses a TOML config.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config {
            path: origin.into(),
            msg: e.to_string(),
        })
    }

    /// As TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }

    /// Applies `key=value` (TOML syntax for the value, e.g. `epochs=2`,
    /// `mmrl.reg_weight=0.5`, `seeds=[1,2]`, `template="a photo of a {}."`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let bad = |msg: String| Error::Config {
            path: "--set".into(),
            msg,
        };
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad(format!("{assignment:?} is not key=value")))?;
        let mut doc: toml::Value = toml::Value::try_from(&*self).expect("configs serialise");
        let parsed: toml::Value = format!("v = {}", value.trim())
            .parse::<toml::Table>()
            .map(|mut t| t.remove("v").unwrap())
            .or_else(|_| Ok::<_, Error>(toml::Value::String(value.trim().to_string())))?;
        let mut slot = &mut doc;
        let parts: Vec<&str> = key.trim().split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let table = slot
                .as_table_mut()
                .ok_or_else(|| bad(format!("{key}: {part} is not a section")))?;
            if i + 1 == parts.len() {
                table.insert(part.to_string(), parsed.clone());
                break;
            }
            slot = table
                .entry(part.to_string())
                .or_insert(toml::Value::Table(Default::default()));
        }
        *self = doc
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("{assignment}: {e}")))?;
        Ok(())
    }
}

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

/// The last epoch whose model, optimizer and scheduler checkpoints all exist.
fn last_checkpoint(dir: &Path) -> Option<usize> {
    let rd = std::fs::read_dir(dir).ok()?;
    rd.filter_map(|e| {
        let name = e.ok()?.file_name().to_string_lossy().into_owned();
        let n: usize = name
            .strip_prefix("model-")?
            .strip_suffix(".mpk")?
            .parse()
            .ok()?;
        let complete = ["model", "optim", "scheduler"].iter().all(|k| {
            std::fs::metadata(dir.join(format!("{k}-{n}.mpk"))).is_ok_and(|m| m.len() > 0)
        });
        complete.then_some(n)
    })
    .max()
}

/// One seed's numbers (accuracies in percent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedResult {
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novel: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Last epoch's training accuracy, when trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Training accuracy stayed near chance.
    #[serde(default)]
    pub diverged: bool,
    /// Cross-dataset / DG: accuracy per dataset and the targets' `average`.
    #[serde(flatten)]
    pub datasets: std::collections::BTreeMap<String, f64>,
}

/// One evaluation of a seed: a class set of a dataset, scored with a head.
struct EvalTarget {
    key: String,
    /// `None`: the training dataset.
    dataset: Option<dataset::Benchmark>,
    sub: Subsample,
    head: Head,
}

/// Harmonic mean of base and novel accuracy.
pub fn harmonic_mean(b: f64, n: f64) -> f64 {
    if b + n == 0.0 {
        0.0
    } else {
        2.0 * b * n / (b + n)
    }
}

/// Mean and population std (ddof 0, as `parse_test_res.py`).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// SHA-256 of the CLIP weights a checkpoint belongs to (the weights file,
/// and `config.json` for a Hugging Face folder).
pub fn clip_hash(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        ["model.safetensors", "pytorch_model.bin", "config.json"]
            .iter()
            .map(|f| path.join(f))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| mmrl_data::Error::io(&f, e))?;
        std::io::copy(&mut file, &mut h).map_err(|e| mmrl_data::Error::io(&f, e))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Checks a checkpoint before it is used: it must parse, and when it was
/// written by `mmrl train` it must belong to the CLIP weights given (by
/// their SHA-256). Returns the method recorded in it, if any.
pub fn check_checkpoint(checkpoint: &Path, clip: &Path) -> Result<Option<String>> {
    let is_st = checkpoint.extension().is_some_and(|e| e == "safetensors");
    if !is_st {
        return Ok(None);
    }
    let bytes = std::fs::read(checkpoint).map_err(|e| mmrl_data::Error::io(checkpoint, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::Config {
        path: checkpoint.into(),
        msg: format!(
            "not a readable safetensors checkpoint ({e}); it may be truncated: use another copy"
        ),
    })?;
    let Some(meta) = meta.metadata() else {
        return Ok(None);
    };
    if let Some(want) = meta.get("clip_sha256").filter(|h| !h.is_empty()) {
        let have = clip_hash(clip)?;
        if *want != have {
            return Err(Error::Config {
                path: checkpoint.into(),
                msg: format!(
                    "was trained on other CLIP weights (sha256 {}…) than {} (sha256 {}…); pass the CLIP weights it was trained with",
                    &want[..want.len().min(12)],
                    clip.display(),
                    &have[..12]
                ),
            });
        }
    }
    Ok(meta.get("method").cloned())
}

fn samples(items: &[Item]) -> Vec<Sample> {
    items
        .iter()
        .map(|i| Sample {
            path: i.path.clone(),
            label: i.label,
        })
        .collect()
}

/// The run's few-shot draw and class set from the dataset's full splits;
/// `warn`: print the dataset's warnings (once per run is enough).
fn select(
    splits: &dataset::Splits,
    cfg: &TrainConfig,
    seed: u64,
    subsample: Subsample,
    warn: bool,
) -> Result<Prepared> {
    let req = Request {
        shots: cfg.shots,
        seed,
        subsample,
        manifest: None,
    };
    let p = dataset::prepare(splits, &req)?;
    if warn {
        for w in &p.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(p)
}

/// Full splits of the cross-dataset / DG targets, read once per run.
type TargetSplits =
    std::cell::RefCell<std::collections::HashMap<dataset::Benchmark, dataset::Splits>>;

/// The run's whole outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub method: String,
    pub dataset: String,
    pub protocol: Protocol,
    pub shots: usize,
    pub seeds: Vec<SeedResult>,
    pub mean: serde_json::Value,
    pub std: serde_json::Value,
}

/// Trains (or, for zero-shot, only evaluates) over every seed and writes
/// `results.{json,md,csv}` into `paths.output`.
pub fn run<B: AutodiffBackend>(
    cfg: &TrainConfig,
    paths: &RunPaths,
    clip: &Clip<B::InnerBackend>,
    tokenizer: &ClipTokenizer,
    pre: &PreprocessConfig,
    device: &B::Device,
) -> Result<RunReport> {
    std::fs::create_dir_all(&paths.output).map_err(|e| mmrl_data::Error::io(&paths.output, e))?;
    let config_file = paths.output.join("config.toml");
    if paths.resume && config_file.is_file() {
        let before = std::fs::read_to_string(&config_file)
            .map_err(|e| mmrl_data::Error::io(&config_file, e))?;
        if before != cfg.to_toml() {
            return Err(Error::Config {
                path: config_file,
                msg: "the run being resumed used another config; resume with the same arguments"
                    .into(),
            });
        }
    }
    split_file::write_atomic(&config_file, cfg.to_toml().as_bytes())?;
    let hash = if cfg.method == MethodKind::Zeroshot {
        String::new()
    } else {
        clip_hash(&paths.clip)?
    };
    let mut results = Vec::new();
    let mut dataset_name = String::new();
    // The full split lists, read once (ImageNet lists 1.28 M files).
    let splits = dataset::read_splits(
        &paths.dataset,
        &paths.root,
        paths.classnames.as_deref(),
        true,
    )?;
    let targets = TargetSplits::default();
    for &seed in &cfg.seeds {
        let dir = paths.output.join(format!("seed{seed}"));
        let done = dir.join("result.json");
        if paths.resume && done.is_file() {
            let text =
                std::fs::read_to_string(&done).map_err(|e| mmrl_data::Error::io(&done, e))?;
            let (name, r): (String, SeedResult) =
                serde_json::from_str(&text).map_err(|e| Error::Config {
                    path: done.clone(),
                    msg: format!("not a seed result ({e}); delete it to rerun the seed"),
                })?;
            println!(
                "seed {seed}: done before, {}",
                serde_json::to_string(&r).unwrap()
            );
            dataset_name = name;
            results.push(r);
            continue;
        }
        if !paths.resume && dir.join("train").exists() {
            return Err(Error::Config {
                path: dir.clone(),
                msg:
                    "holds a previous run; pass --resume to continue it, or choose another --output"
                        .into(),
            });
        }
        std::fs::create_dir_all(&dir).map_err(|e| mmrl_data::Error::io(&dir, e))?;
        let r = run_seed::<B>(
            cfg,
            paths,
            &splits,
            &targets,
            clip,
            tokenizer,
            pre,
            device,
            seed,
            &dir,
            &hash,
            &mut dataset_name,
        )?;
        split_file::write_json_atomic(&done, &serde_json::json!([dataset_name, r]))?;
        let line = serde_json::to_string(&r).unwrap();
        println!("seed {seed}: {line}");
        results.push(r);
    }
    let report = summarise(cfg, &dataset_name, results);
    write_results(&paths.output, &report)?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn run_seed<B: AutodiffBackend>(
    cfg: &TrainConfig,
    paths: &RunPaths,
    splits: &dataset::Splits,
    targets: &TargetSplits,
    clip: &Clip<B::InnerBackend>,
    tokenizer: &ClipTokenizer,
    pre: &PreprocessConfig,
    device: &B::Device,
    seed: u64,
    dir: &Path,
    hash: &str,
    dataset_name: &mut String,
) -> Result<SeedResult> {
    let own = |key: &str, sub, head| EvalTarget {
        key: key.into(),
        dataset: None,
        sub,
        head,
    };
    let (train_sub, test_subs): (Subsample, Vec<EvalTarget>) = match cfg.protocol {
        Protocol::Base2novel => (
            Subsample::Base,
            vec![
                own("base", Subsample::Base, Head::Fused),
                own("novel", Subsample::Novel, Head::Class),
            ],
        ),
        Protocol::Fewshot => (
            Subsample::All,
            vec![own("accuracy", Subsample::All, Head::Fused)],
        ),
        Protocol::Cross | Protocol::Dg => {
            let defaults: &[dataset::Benchmark] = if cfg.protocol == Protocol::Cross {
                &dataset::Benchmark::CROSS_TARGETS
            } else {
                &dataset::Benchmark::DG_TARGETS
            };
            let targets: Vec<dataset::Benchmark> = if cfg.targets.is_empty() {
                defaults.to_vec()
            } else {
                cfg.targets
                    .iter()
                    .map(|t| {
                        dataset::Benchmark::from_name(t).ok_or_else(|| Error::Config {
                            path: "targets".into(),
                            msg: format!(
                                "unknown dataset {t:?}; known: {}",
                                dataset::catalog::known_names()
                            ),
                        })
                    })
                    .collect::<Result<_>>()?
            };
            let source_key = match &paths.dataset {
                Source::Benchmark(b) => b.info().stem.to_string(),
                _ => "source".into(),
            };
            let mut v = vec![own(&source_key, Subsample::All, Head::Fused)];
            v.extend(targets.into_iter().map(|t| EvalTarget {
                key: t.info().stem.into(),
                dataset: Some(t),
                sub: Subsample::All,
                head: Head::Class,
            }));
            (Subsample::All, v)
        }
    };
    let train_data = select(splits, cfg, seed, train_sub, true)?;
    *dataset_name = train_data.dataset.clone();
    split_file::write_json_atomic(&dir.join("fewshot.json"), &train_data.manifest)?;
    let template = if cfg.template.is_empty() {
        train_data.template.clone()
    } else {
        cfg.template.clone()
    };
    let target_data = |t: &EvalTarget| -> Result<(Prepared, String)> {
        match t.dataset {
            None if t.sub == train_sub => Ok((train_data.clone(), template.clone())),
            None => Ok((select(splits, cfg, seed, t.sub, false)?, template.clone())),
            Some(b) => {
                if !targets.borrow().contains_key(&b) {
                    let read =
                        dataset::read_splits(&Source::Benchmark(b), &paths.root, None, true)?;
                    targets.borrow_mut().insert(b, read);
                }
                let cache = targets.borrow();
                let splits = &cache[&b];
                let req = Request {
                    shots: 0,
                    seed,
                    subsample: Subsample::All,
                    manifest: None,
                };
                let p = dataset::prepare(splits, &req)?;
                let tpl = p.template.clone();
                Ok((p, tpl))
            }
        }
    };
    let inner_device = clip.devices()[0].clone();
    let eval_loader = |items: &[Item]| {
        ImageLoader::<B::InnerBackend>::new(
            samples(items),
            LoaderMode::Eval {
                config: pre.clone(),
            },
            cfg.test_batch_size,
            cfg.workers,
            inner_device.clone(),
        )
        .skip_bad_images(cfg.skip_bad_images)
    };
    let mut accs = Vec::new();
    let mut train_accuracy = None;
    match cfg.method {
        MethodKind::Zeroshot => {
            for t in &test_subs {
                let (data, tpl) = target_data(t)?;
                let text =
                    class_text_features(clip, tokenizer, &data.classes, &tpl, &inner_device)?;
                accs.push(evaluate_zeroshot(clip, text, &eval_loader(&data.test))?.accuracy());
            }
        }
        MethodKind::Mmrl => {
            B::seed(device, seed);
            let terms = crate::method::TermLog::default();
            let mcfg = cfg.mmrl_config(&train_data.dataset);
            let clip_ad: Clip<B> = Clip::from_inner(clip.clone());
            let model = mcfg.init(clip_ad, device);
            let inner = model.valid();
            let text: ClassText<B::InnerBackend> = class_text(
                &inner,
                tokenizer,
                &train_data.classes,
                &template,
                &inner_device,
            )?;
            let trainee = MmrlTrainee {
                model,
                text: Frozen::new(ClassText::from_inner(text)),
                reg_weight: mcfg.reg_weight,
                terms: terms.clone(),
            };
            let optim = AdamWConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(cfg.eps as f32)
                .with_weight_decay(cfg.weight_decay as f32)
                .init();
            let fit = Fit {
                cfg,
                paths,
                dir,
                seed,
                pre,
                data: &train_data,
                terms: Some(terms.clone()),
            };
            let trained = fit.run::<B, _, _>(trainee, optim, device)?;
            train_accuracy = last_train_accuracy(&dir.join("train"), cfg.epochs);
            save_checkpoint(
                "mmrl",
                mmrl_state(&trained.model),
                &dir.join("mmrl.safetensors"),
                cfg,
                serde_json::to_string(&mcfg).unwrap(),
                hash,
                &train_data.dataset,
            )?;
            for t in &test_subs {
                let (data, tpl) = target_data(t)?;
                let text = class_text(
                    &trained.model,
                    tokenizer,
                    &data.classes,
                    &tpl,
                    &inner_device,
                )?;
                accs.push(
                    evaluate_mmrl(&trained.model, &text, t.head, &eval_loader(&data.test))?
                        .accuracy(),
                );
            }
        }
        MethodKind::Coop => {
            B::seed(device, seed);
            let ccfg = cfg.coop.clone();
            ccfg.validate().map_err(|msg| Error::Config {
                path: "[coop]".into(),
                msg,
            })?;
            let prompts = PromptIds::new(&ccfg, tokenizer, &train_data.classes)?;
            let clip_ad: Clip<B> = Clip::from_inner(clip.clone());
            let model = ccfg
                .init(clip_ad, &prompts.tensors::<B>(device), device)
                .map_err(|msg| Error::Config {
                    path: "[coop]".into(),
                    msg,
                })?;
            let trainee = CoopTrainee { model, prompts };
            let optim = SgdConfig::new()
                .with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(cfg.momentum)
                        .with_dampening(0.0)
                        .with_nesterov(false),
                ))
                .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay as f32)))
                .init();
            let fit = Fit {
                cfg,
                paths,
                dir,
                seed,
                pre,
                data: &train_data,
                terms: None,
            };
            let trained = fit.run::<B, _, _>(trainee, optim, device)?;
            train_accuracy = last_train_accuracy(&dir.join("train"), cfg.epochs);
            save_checkpoint(
                "coop",
                coop_state(&trained.model),
                &dir.join("coop.safetensors"),
                cfg,
                serde_json::to_string(&ccfg).unwrap(),
                hash,
                &train_data.dataset,
            )?;
            for t in &test_subs {
                let (data, tpl) = target_data(t)?;
                let _ = &tpl; // CoOp's prompts are its learned context plus the name.
                if ccfg.class_specific() && (t.dataset.is_some() || t.sub != train_sub) {
                    return Err(Error::Config {
                        path: "[coop]".into(),
                        msg: "a class-specific context (csc = true) cannot score unseen classes; use csc = false for base-to-novel".into(),
                    });
                }
                let prompts = PromptIds::new(&ccfg, tokenizer, &data.classes)?;
                accs.push(
                    evaluate_coop(&trained.model, &prompts, &eval_loader(&data.test))?.accuracy(),
                );
            }
        }
    }
    let n_classes = train_data.classes.len().max(1) as f64;
    let diverged = train_accuracy.is_some_and(|a| a < 1.5 * 100.0 / n_classes);
    let mut r = SeedResult {
        seed,
        base: None,
        novel: None,
        hm: None,
        accuracy: None,
        train_accuracy,
        diverged,
        datasets: Default::default(),
    };
    match cfg.protocol {
        Protocol::Base2novel => {
            r.base = Some(accs[0]);
            r.novel = Some(accs[1]);
            r.hm = Some(harmonic_mean(accs[0], accs[1]));
        }
        Protocol::Fewshot => r.accuracy = Some(accs[0]),
        Protocol::Cross | Protocol::Dg => {
            for (t, a) in test_subs.iter().zip(&accs) {
                r.datasets.insert(t.key.clone(), *a);
            }
            let targets = &accs[1..];
            if !targets.is_empty() {
                r.datasets.insert(
                    "average".into(),
                    targets.iter().sum::<f64>() / targets.len() as f64,
                );
            }
        }
    }
    Ok(r)
}

/// What Burn's Learner needs for one seed: loaders, schedule, checkpoints,
/// resume, the per-epoch display.
struct Fit<'a> {
    cfg: &'a TrainConfig,
    paths: &'a RunPaths,
    dir: &'a Path,
    seed: u64,
    pre: &'a PreprocessConfig,
    data: &'a Prepared,
    /// The method's loss terms, shown in the epoch lines.
    terms: Option<crate::method::TermLog>,
}

impl Fit<'_> {
    fn run<B, M, O>(&self, trainee: M, optim: O, device: &B::Device) -> Result<M::InnerModule>
    where
        B: AutodiffBackend,
        M: TrainStep<Input = ImageBatch<B>, Output = ClassificationOutput<B>>
            + AutodiffModule<B>
            + std::fmt::Display
            + 'static,
        M::InnerModule: InferenceStep<
            Input = ImageBatch<B::InnerBackend>,
            Output = ClassificationOutput<B::InnerBackend>,
        >,
        O: burn::optim::Optimizer<M, B> + 'static,
    {
        let (cfg, seed, dir) = (self.cfg, self.seed, self.dir);
        let ckpt_dir = dir.join("train").join("checkpoint");
        let resume_from = if self.paths.resume {
            last_checkpoint(&ckpt_dir)
        } else {
            None
        };
        if let Some(n) = resume_from {
            println!(
                "seed {seed}: resuming after epoch {n} ({})",
                ckpt_dir.display()
            );
        }
        let train_loader = ImageLoader::<B>::new(
            samples(&self.data.train),
            LoaderMode::Train {
                transform: TrainTransform {
                    scale: cfg.crop_scale,
                    ..TrainTransform::mmrl(self.pre.crop_size)
                },
                seed,
            },
            cfg.batch_size,
            cfg.workers,
            device.clone(),
        )
        .with_cache(cfg.cache_images)
        .skip_bad_images(cfg.skip_bad_images)
        .with_start_epoch(resume_from.unwrap_or(0) as u64);
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
        let sched = DasslSchedule {
            base_lr: cfg.lr,
            epochs: cfg.epochs,
            warmup_epochs: cfg.warmup_epochs,
            warmup_lr: cfg.warmup_lr,
            iters_per_epoch: iters,
            step: 0,
        };
        let mut train_arc: std::sync::Arc<dyn DataLoader<B, ImageBatch<B>>> =
            std::sync::Arc::new(train_loader.clone());
        let valid_arc: std::sync::Arc<
            dyn DataLoader<B::InnerBackend, ImageBatch<B::InnerBackend>>,
        > = std::sync::Arc::new(valid_loader.clone());
        let interrupter = burn::train::Interrupter::new();
        if let Some(n) = self.paths.interrupt_after_epoch {
            let remaining = n.saturating_sub(resume_from.unwrap_or(0));
            train_arc = std::sync::Arc::new(StopAfter {
                inner: train_arc,
                remaining: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(remaining)),
                interrupter: interrupter.clone(),
            });
        }
        let mut training = SupervisedTraining::new(dir.join("train"), train_arc, valid_arc)
            .with_interrupter(interrupter.clone())
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .metric_train_numeric(LearningRateMetric::new())
            // Full precision, so that a resumed run continues bit for bit.
            .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
            .num_epochs(cfg.epochs)
            .with_application_logger(None);
        if let Some(n) = resume_from {
            training = training.checkpoint(n);
        }
        let result = training
            .renderer(match &self.terms {
                Some(t) => EpochLines::new(format!("seed {seed}")).with_terms(t.clone()),
                None => EpochLines::new(format!("seed {seed}")),
            })
            .launch(Learner::new(trainee, optim, sched));
        if interrupter.should_stop() {
            return Err(Error::Config {
                path: dir.join("train"),
                msg: "training was interrupted; run the same command with --resume to continue"
                    .into(),
            });
        }
        if let Some(e) = train_loader
            .take_error()
            .or_else(|| valid_loader.take_error())
        {
            return Err(e.into());
        }
        Ok(result.model)
    }
}

/// The last epoch's mean training accuracy from Burn's metric log.
fn last_train_accuracy(dir: &Path, epoch: usize) -> Option<f64> {
    let text =
        std::fs::read_to_string(dir.join(format!("train/epoch-{epoch}/Accuracy.log"))).ok()?;
    let vals: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
}

/// Trained parameters only, in the reference's names and PyTorch layouts,
/// with the method's and the run's configs and the CLIP weights' hash in
/// the header.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    method: &str,
    state: Vec<(String, Vec<usize>, Vec<f32>)>,
    path: &Path,
    cfg: &TrainConfig,
    method_config: String,
    hash: &str,
    dataset: &str,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = state
        .iter()
        .map(|(name, shape, data)| {
            let bytes: &[u8] = bytemuck_f32(data);
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches"),
            )
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "mmrl".to_string());
    meta.insert("method".to_string(), method.to_string());
    meta.insert("dataset".to_string(), dataset.to_string());
    meta.insert("clip_sha256".to_string(), hash.to_string());
    meta.insert(format!("{method}_config"), method_config);
    meta.insert("train_config".to_string(), cfg.to_toml());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Config {
        path: path.into(),
        msg: e.to_string(),
    })?;
    split_file::write_atomic(path, &bytes)?;
    Ok(())
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn summarise(cfg: &TrainConfig, dataset: &str, seeds: Vec<SeedResult>) -> RunReport {
    let pick =
        |f: fn(&SeedResult) -> Option<f64>| -> Vec<f64> { seeds.iter().filter_map(f).collect() };
    let (mean, std) = match cfg.protocol {
        Protocol::Base2novel => {
            let (bm, bs) = mean_std(&pick(|s| s.base));
            let (nm, ns) = mean_std(&pick(|s| s.novel));
            let (_, hs) = mean_std(&pick(|s| s.hm));
            (
                serde_json::json!({"base": bm, "novel": nm, "hm": harmonic_mean(bm, nm)}),
                serde_json::json!({"base": bs, "novel": ns, "hm": hs}),
            )
        }
        Protocol::Fewshot => {
            let (m, s) = mean_std(&pick(|s| s.accuracy));
            (
                serde_json::json!({"accuracy": m}),
                serde_json::json!({"accuracy": s}),
            )
        }
        Protocol::Cross | Protocol::Dg => {
            let keys: Vec<String> = seeds
                .first()
                .map(|s| s.datasets.keys().cloned().collect())
                .unwrap_or_default();
            let (mut mean, mut std) = (serde_json::Map::new(), serde_json::Map::new());
            for k in keys {
                let v: Vec<f64> = seeds
                    .iter()
                    .filter_map(|s| s.datasets.get(&k).copied())
                    .collect();
                let (m, sd) = mean_std(&v);
                mean.insert(k.clone(), m.into());
                std.insert(k, sd.into());
            }
            (
                serde_json::Value::Object(mean),
                serde_json::Value::Object(std),
            )
        }
    };
    RunReport {
        method: cfg.method.name().into(),
        dataset: dataset.into(),
        protocol: cfg.protocol,
        shots: cfg.shots,
        seeds,
        mean,
        std,
    }
}

/// `results.json`, `results.md` (paper-style) and `results.csv`, atomically.
pub fn write_results(dir: &Path, r: &RunReport) -> Result<()> {
    let json = serde_json::to_value(r).unwrap();
    split_file::write_json_atomic(&dir.join("results.json"), &json)?;
    let cols: Vec<String> = match r.protocol {
        Protocol::Base2novel => vec!["base".into(), "novel".into(), "hm".into()],
        Protocol::Fewshot => vec!["accuracy".into()],
        Protocol::Cross | Protocol::Dg => r
            .mean
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let val = |s: &SeedResult, c: &str| -> f64 {
        match c {
            "base" => s.base,
            "novel" => s.novel,
            "hm" => s.hm,
            "accuracy" => s.accuracy,
            other => s.datasets.get(other).copied(),
        }
        .unwrap_or(f64::NAN)
    };
    let mut md = format!(
        "# {} on {} ({:?}, {} shots)\n\n| seed | {} |\n|---|{}\n",
        r.method,
        r.dataset,
        r.protocol,
        r.shots,
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    let mut csv = format!("method,dataset,protocol,shots,seed,{}\n", cols.join(","));
    for s in &r.seeds {
        let v: Vec<String> = cols.iter().map(|c| format!("{:.2}", val(s, c))).collect();
        md.push_str(&format!(
            "| {}{} | {} |\n",
            s.seed,
            if s.diverged { " (diverged)" } else { "" },
            v.join(" | ")
        ));
        let v: Vec<String> = cols.iter().map(|c| format!("{}", val(s, c))).collect();
        csv.push_str(&format!(
            "{},{},{:?},{},{},{}\n",
            r.method,
            r.dataset,
            r.protocol,
            r.shots,
            s.seed,
            v.join(",")
        ));
    }
    let ms: Vec<String> = cols
        .iter()
        .map(|c| {
            let m = r.mean[c.as_str()].as_f64().unwrap_or(f64::NAN);
            let s = r.std[c.as_str()].as_f64().unwrap_or(f64::NAN);
            format!("{m:.2} ± {s:.2}")
        })
        .collect();
    md.push_str(&format!("| **mean ± std** | {} |\n", ms.join(" | ")));
    split_file::write_atomic(&dir.join("results.md"), md.as_bytes())?;
    split_file::write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    Ok(())
}

/// Testing aid: a train loader that interrupts training at the first batch
/// after `remaining` epochs, before that epoch's checkpoint, as a kill does.
struct StopAfter<B: Backend, O> {
    inner: std::sync::Arc<dyn DataLoader<B, O>>,
    remaining: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    interrupter: burn::train::Interrupter,
}

impl<B: Backend, O: 'static> DataLoader<B, O> for StopAfter<B, O> {
    fn iter<'a>(&'a self) -> Box<dyn burn::data::dataloader::DataLoaderIterator<O> + 'a> {
        use std::sync::atomic::Ordering;
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

    fn to_device(&self, device: &B::Device) -> std::sync::Arc<dyn DataLoader<B, O>> {
        std::sync::Arc::new(StopAfter {
            inner: self.inner.to_device(device),
            remaining: self.remaining.clone(),
            interrupter: self.interrupter.clone(),
        })
    }

    fn slice(&self, start: usize, end: usize) -> std::sync::Arc<dyn DataLoader<B, O>> {
        std::sync::Arc::new(StopAfter {
            inner: self.inner.slice(start, end),
            remaining: self.remaining.clone(),
            interrupter: self.interrupter.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_config_parses_and_sets_and_round_trips() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for sub in std::fs::read_dir(&dir).unwrap() {
            for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                let c = TrainConfig::from_toml(&std::fs::read_to_string(&p).unwrap(), &p)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(TrainConfig::from_toml(&c.to_toml(), &p).unwrap(), c);
                n += 1;
            }
        }
        assert!(n >= 4);
        let mut c = TrainConfig::default();
        c.set("mmrl.reg_weight=0.2").unwrap();
        c.set("seeds=[4,5]").unwrap();
        c.set("template=a photo of a {}.").unwrap();
        assert_eq!(c.mmrl.reg_weight, Some(0.2));
        assert_eq!(c.seeds, vec![4, 5]);
        assert_eq!(c.template, "a photo of a {}.");
        assert_eq!(c.mmrl_config("EuroSAT").rep_dim, 2048);
        assert_eq!(c.mmrl_config("EuroSAT").reg_weight, 0.2);
        let e = c.set("epochs=ten").unwrap_err().to_string();
        assert!(e.contains("epochs"), "{e}");
        assert!(TrainConfig::from_toml("nope = 1", Path::new("x.toml"))
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn mean_std_and_hm_are_the_papers() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((harmonic_mean(80.0, 70.0) - 2.0 * 80.0 * 70.0 / 150.0).abs() < 1e-12);
    }
}
