//! `mmrl train`: one method, one dataset, one protocol, several seeds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::prelude::*;
use clap::Args;

use mmrl_data::preprocess::{CropRounding, PreprocessConfig};
use mmrl_model::clip::loader::load_clip;
use mmrl_train::method::MethodKind;
use mmrl_train::run::{self, Protocol, RunPaths, TrainConfig};

use crate::backend::DeviceKind;
use crate::cli::pick_tokenizer;
use crate::data_cmd::DatasetArgs;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// zeroshot, coop or mmrl (default: the config's, else mmrl).
    #[arg(long, value_parser = parse_method)]
    pub method: Option<MethodKind>,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// CLIP weights: a Hugging Face folder or an OpenAI/open_clip file.
    #[arg(long)]
    pub clip: PathBuf,
    /// tokenizer.json or bpe_simple_vocab_16e6.txt.gz (default: next to the weights, else bundled).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// base2novel, fewshot, cross (ImageNet → 10 datasets) or dg (ImageNet → V2, Sketch, A, R).
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Images per class.
    #[arg(long)]
    pub shots: Option<usize>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// A TOML config (configs/); flags and --set override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// key=value overrides of the config, e.g. --set mmrl.reg_weight=0.5.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Where results, checkpoints and logs go.
    #[arg(long)]
    pub output: PathBuf,
    /// Log and skip corrupt or missing images instead of stopping with the path and reason.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Continue the run in --output from its last completed epoch (same arguments).
    #[arg(long)]
    pub resume: bool,
    /// Testing aid: stop during the epoch after this one, as a kill would.
    #[arg(long, hide = true)]
    pub interrupt_after_epoch: Option<usize>,
}

fn parse_method(s: &str) -> std::result::Result<MethodKind, String> {
    match s {
        "zeroshot" => Ok(MethodKind::Zeroshot),
        "mmrl" => Ok(MethodKind::Mmrl),
        "coop" => Ok(MethodKind::Coop),
        _ => Err(format!("unknown method {s:?}: zeroshot, coop or mmrl")),
    }
}

fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    match s {
        "base2novel" | "b2n" => Ok(Protocol::Base2novel),
        "fewshot" | "fs" => Ok(Protocol::Fewshot),
        "cross" | "cd" => Ok(Protocol::Cross),
        "dg" => Ok(Protocol::Dg),
        _ => Err(format!(
            "unknown protocol {s:?}: base2novel, fewshot, cross or dg"
        )),
    }
}

/// The resolved config: file, then flags, then `--set`.
pub fn resolve_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            TrainConfig::from_toml(&text, p)?
        }
        None => TrainConfig::defaults_for(a.method.unwrap_or(MethodKind::Mmrl)),
    };
    if let Some(m) = a.method {
        cfg.method = m;
    }
    if let Some(p) = a.protocol {
        cfg.protocol = p;
    }
    if let Some(s) = a.shots {
        cfg.shots = s;
    }
    if let Some(s) = &a.seeds {
        cfg.seeds = s.clone();
    }
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if a.skip_bad_images {
        cfg.skip_bad_images = true;
    }
    for s in &a.set {
        cfg.set(s)?;
    }
    if cfg.seeds.is_empty() {
        anyhow::bail!("no seeds: give --seeds 1,2,3");
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        anyhow::bail!("epochs and batch_size must be at least 1");
    }
    Ok(cfg)
}

/// Trains on `Autodiff<B>`; frozen work and evaluation run on `B`.
pub fn train_cmd<B: Backend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let cfg = resolve_config(a)?;
    println!("# resolved config\n{}", cfg.to_toml());
    let loaded = load_clip::<B>(&a.clip, device)
        .with_context(|| format!("loading CLIP from {}", a.clip.display()))?;
    let tokenizer = pick_tokenizer(a.tokenizer.as_deref(), loaded.tokenizer.as_deref())?;
    let size = loaded.config.vision_config.image_size;
    let pre = PreprocessConfig {
        crop_rounding: CropRounding::HalfEven,
        ..PreprocessConfig::for_image_size(size)
    };
    let paths = RunPaths {
        dataset: a.data.source()?,
        root: a.data.root.clone(),
        classnames: a.data.classnames.clone(),
        clip: a.clip.clone(),
        output: a.output.clone(),
        resume: a.resume,
        interrupt_after_epoch: a.interrupt_after_epoch,
    };
    let report = run::run::<Autodiff<B>>(&cfg, &paths, &loaded.model, &tokenizer, &pre, device)?;
    print!(
        "{}",
        std::fs::read_to_string(a.output.join("results.md")).unwrap_or_default()
    );
    let _ = report;
    Ok(())
}
