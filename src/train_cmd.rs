//! `mmrl train`: one method, one dataset, one protocol, several seeds.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use clap::Args;

use mmrl_data::dataset::Source;
use mmrl_data::preprocess::{CropRounding, PreprocessConfig};
use mmrl_model::clip::Precision;
use mmrl_model::methods::Method;
use mmrl_train::config::{recipe_for, Protocol, TrainConfig};
use mmrl_train::registry::{self, MethodVisitor};
use mmrl_train::run::{self, RunPaths};

use crate::backend::DeviceKind;
use crate::cli::{load_clip_as, pick_tokenizer};
use mmrl_model::ClipBackend;

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[arg(long, help = method_help())]
    pub method: Option<String>,
    /// oxford_pets, eurosat, imagenet, ... (`mmrl data list`), or folder / csv.
    #[arg(long)]
    pub dataset: String,
    /// The folder holding the dataset folders (CoOp's $DATA); for
    /// `--dataset folder` the dataset's folder, for `--dataset csv` the CSV file.
    #[arg(long, required_unless_present = "dry_run")]
    pub root: Option<PathBuf>,
    /// Custom datasets: class names (folder: `<folder> <name>` lines; csv:
    /// one name per line, line i names label i).
    #[arg(long)]
    pub classnames: Option<PathBuf>,
    /// CLIP weights: a Hugging Face folder or an OpenAI/open_clip file.
    #[arg(long, required_unless_present = "dry_run")]
    pub clip: Option<PathBuf>,
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
    /// A TOML config; default: the recipe the reference scripts use for this
    /// method, protocol, dataset (and shots), from configs/. Flags and --set
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// key=value overrides of the config, e.g. --set mmrl.reg_weight=0.5.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Print the resolved config as TOML and exit (reads no data or weights).
    #[arg(long)]
    pub dry_run: bool,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Frozen CLIP's precision: f32, or bf16 (its blocks' weights and token
    /// embeddings in bfloat16; what is trained, the losses and the optimiser
    /// stay f32). CUDA and CPU. Default: the config's, else f32.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Where results, checkpoints and logs go.
    #[arg(long, required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
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

fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    Protocol::parse(s)
        .ok_or_else(|| format!("unknown protocol {s:?}: base2novel, fewshot, cross or dg"))
}

/// Writes a method's resolved settings (its per-dataset defaults under the
/// config's table) into the config.
struct ResolveSettings<'a> {
    cfg: &'a mut TrainConfig,
    /// Dassl's name of the training dataset; empty for custom datasets.
    dataset: &'a str,
}

impl<B: ClipBackend> MethodVisitor<B> for ResolveSettings<'_> {
    type Out = mmrl_train::Result<()>;
    fn visit<M: Method<B>>(self) -> Self::Out {
        self.cfg
            .resolve_method::<M::Config>(M::NAME, self.dataset)
            .map(|_| ())
    }
}

/// The resolved config (recipe or `--config`, then flags, then `--set`) and
/// where it started from.
pub fn resolve_config(a: &TrainArgs) -> Result<(TrainConfig, String)> {
    let source = Source::parse(&a.dataset)?;
    let (stem, dassl) = match source {
        Source::Benchmark(b) => (Some(b.info().stem), b.info().name),
        _ => (None, ""),
    };
    let (mut cfg, origin) = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            (TrainConfig::from_toml(&text, p)?, p.display().to_string())
        }
        None => {
            let method = a.method.as_deref().unwrap_or("mmrl");
            registry::check(method)?;
            let protocol = a.protocol.unwrap_or(Protocol::Base2novel);
            let shots = a.shots.unwrap_or(16);
            let (name, text) = recipe_for(method, protocol, stem, shots)?;
            let origin = format!("configs/{name}");
            (TrainConfig::from_toml(text, Path::new(&origin))?, origin)
        }
    };
    if let Some(m) = &a.method {
        cfg.method = m.clone();
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
    if let Some(p) = a.precision {
        cfg.precision = p;
    }
    for s in &a.set {
        cfg.set(s)?;
    }
    cfg.validate()?;
    let method = cfg.method.clone();
    registry::with_method::<burn::backend::Flex, _>(
        &method,
        ResolveSettings {
            cfg: &mut cfg,
            dataset: dassl,
        },
    )??;
    Ok((cfg, origin))
}

/// Trains on `Autodiff<B>`; frozen work and evaluation run on `B`.
pub fn train_cmd<B: ClipBackend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let (cfg, origin) = resolve_config(a)?;
    println!("# recipe: {origin}\n# resolved config\n{}", cfg.to_toml());
    if a.dry_run {
        return Ok(());
    }
    let (Some(clip), Some(root), Some(output)) = (&a.clip, &a.root, &a.output) else {
        bail!("--clip, --root and --output are needed to train (only --dry-run goes without)");
    };
    let loaded = load_clip_as::<B>(clip, cfg.precision, device)?;
    let tokenizer = pick_tokenizer(a.tokenizer.as_deref(), loaded.tokenizer.as_deref())?;
    let size = loaded.config.vision_config.image_size;
    let pre = PreprocessConfig {
        crop_rounding: CropRounding::HalfEven,
        ..PreprocessConfig::for_image_size(size)
    };
    let paths = RunPaths {
        dataset: Source::parse(&a.dataset)?,
        root: root.clone(),
        classnames: a.classnames.clone(),
        clip: clip.clone(),
        output: output.clone(),
        resume: a.resume,
        interrupt_after_epoch: a.interrupt_after_epoch,
    };
    run::run::<Autodiff<B>>(&cfg, &paths, &loaded.model, &tokenizer, &pre, device)?;
    print!(
        "{}",
        std::fs::read_to_string(output.join("results.md")).unwrap_or_default()
    );
    Ok(())
}

/// `--method`'s help, naming every registered method.
fn method_help() -> String {
    format!(
        "The method: {} (`mmrl methods` describes them). Default: the config's, else mmrl",
        mmrl_train::registry::names().join(", ")
    )
}
