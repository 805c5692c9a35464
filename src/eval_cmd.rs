//! `mmrl eval` (a trained checkpoint on a dataset's test split) and
//! `mmrl report` (several runs in one table).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use clap::Args;

use mmrl_data::dataset::{self, Request};
use mmrl_data::few_shot::Subsample;
use mmrl_data::loader::{ImageLoader, LoaderMode};
use mmrl_data::preprocess::{CropRounding, PreprocessConfig};
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::{Clip, Precision};
use mmrl_model::methods::{Classes, Method};
use mmrl_train::checkpoint::{method_settings, read_header, CheckpointHeader};
use mmrl_train::eval::{evaluate, Tally};
use mmrl_train::protocol::samples;
use mmrl_train::registry::{self, MethodVisitor};
use mmrl_train::results::RunReport;
use mmrl_train::zeroshot::class_prompts;

use crate::backend::DeviceKind;
use crate::cli::{load_clip_as, pick_tokenizer};
use crate::data_cmd::{DatasetArgs, SubsampleArg};
use mmrl_model::ClipBackend;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint written by `mmrl train` (`<method>.safetensors`): it
    /// records the method, its settings, the template and the few-shot
    /// draw, which the flags below override (with a notice).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// The CLIP weights the checkpoint was trained on.
    #[arg(long)]
    pub clip: PathBuf,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The method, for a checkpoint that does not record it (the reference's).
    #[arg(long)]
    pub method: Option<String>,
    /// Which classes to score: base, novel (scored as unseen classes) or all.
    #[arg(long, value_enum, default_value_t = SubsampleArg::All)]
    pub subsample: SubsampleArg,
    /// Few-shot draw that defines the base/novel halves (default: the checkpoint's, else 16).
    #[arg(long)]
    pub shots: Option<usize>,
    /// Seed of that draw (default: the checkpoint's, else 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Score the classes as unseen (MMRL: the class head only), whatever --subsample says.
    #[arg(long)]
    pub unseen: bool,
    /// Prompt template (default: the checkpoint's, else the dataset's).
    #[arg(long)]
    pub template: Option<String>,
    /// Method settings over the checkpoint's, e.g. --set mmrl.alpha=0.5.
    #[arg(long = "set")]
    pub set: Vec<String>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Frozen CLIP's precision: f32 (the reference tests in f32), or bf16
    /// (its blocks' weights and token embeddings in bfloat16; CUDA and CPU).
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
}

/// The method a command runs: the flag, else the checkpoint's, else
/// `fallback`. A flag that contradicts the checkpoint is an error: the
/// tensors would not fit.
pub fn checkpoint_method(
    flag: Option<&str>,
    header: Option<&CheckpointHeader>,
    checkpoint: &Path,
    fallback: Option<&str>,
) -> Result<String> {
    let recorded = header.map(|h| h.method.as_str()).filter(|m| !m.is_empty());
    if let (Some(f), Some(r)) = (flag, recorded) {
        if f != r {
            return Err(mmrl_train::Error::WrongMethod {
                path: checkpoint.into(),
                found: r.into(),
            }
            .into());
        }
    }
    let method = flag.or(recorded).or(fallback).with_context(|| {
        format!(
            "{} records no method (not written by `mmrl train`); pass --method ({})",
            checkpoint.display(),
            registry::names().join(", ")
        )
    })?;
    registry::check(method)?;
    Ok(method.into())
}

/// A value from a flag, else from the checkpoint (a flag that contradicts
/// the checkpoint wins, with a notice), else a default.
pub fn flag_or_recorded<T: PartialEq + std::fmt::Debug + Clone>(
    what: &str,
    flag: Option<T>,
    recorded: Option<T>,
    default: T,
) -> T {
    match (flag, recorded) {
        (Some(f), Some(r)) => {
            if f != r {
                eprintln!("note: --{what} {f:?} overrides the checkpoint's {r:?}");
            }
            f
        }
        (Some(f), None) => f,
        (None, Some(r)) => r,
        (None, None) => default,
    }
}

/// A method from a checkpoint (settings: the checkpoint's, then `sets`),
/// set to a class set: what `eval` and `predict` both start from.
#[allow(clippy::too_many_arguments)]
pub fn load_for_classes<B: ClipBackend, M: Method<B>>(
    checkpoint: &Path,
    header: Option<&CheckpointHeader>,
    sets: &[String],
    clip: Clip<B>,
    tokenizer: &ClipTokenizer,
    classes: &[String],
    template: &str,
    device: &B::Device,
) -> Result<M> {
    let settings: M::Config = method_settings(checkpoint, header, M::NAME, sets)?;
    let vocab_check = clip.clone();
    let model = M::load(&settings, clip, checkpoint, device).with_context(|| {
        format!(
            "loading the {} checkpoint {}",
            M::NAME,
            checkpoint.display()
        )
    })?;
    let prompts =
        class_prompts::<B, M, B>(&model.config(), tokenizer, &vocab_check, classes, template)?;
    Ok(model.set_classes(&prompts)?)
}

/// Scores a checkpoint of any method on one class set.
struct EvalJob<'a, B: Backend> {
    args: &'a EvalArgs,
    header: Option<&'a CheckpointHeader>,
    clip: Clip<B>,
    tokenizer: &'a ClipTokenizer,
    classes: &'a [String],
    template: &'a str,
    scored_as: Classes,
    loader: &'a ImageLoader<B>,
    device: &'a B::Device,
}

impl<B: ClipBackend> MethodVisitor<B> for EvalJob<'_, B> {
    type Out = Result<Tally>;

    fn visit<M: Method<B>>(self) -> Result<Tally> {
        let a = self.args;
        let model = load_for_classes::<B, M>(
            &a.checkpoint,
            self.header,
            &a.set,
            self.clip,
            self.tokenizer,
            self.classes,
            self.template,
            self.device,
        )?;
        let text = model.text();
        Ok(evaluate(self.loader, |images| {
            model.predict(images, &text, self.scored_as).logits
        })?)
    }
}

pub fn eval_cmd<B: ClipBackend>(a: &EvalArgs, device: &B::Device) -> Result<()> {
    let header = read_header(&a.checkpoint, &a.clip)?;
    let method = checkpoint_method(a.method.as_deref(), header.as_ref(), &a.checkpoint, None)?;
    let shots = flag_or_recorded("shots", a.shots, header.as_ref().and_then(|h| h.shots), 16);
    let seed = flag_or_recorded("seed", a.seed, header.as_ref().and_then(|h| h.seed), 1);
    let loaded = load_clip_as::<B>(&a.clip, a.precision, device)?;
    let tokenizer = pick_tokenizer(a.tokenizer.as_deref(), loaded.tokenizer.as_deref())?;
    let pre = PreprocessConfig {
        crop_rounding: CropRounding::HalfEven,
        ..PreprocessConfig::for_image_size(loaded.config.vision_config.image_size)
    };
    let splits = dataset::read_splits(
        &a.data.source()?,
        &a.data.root,
        a.data.classnames.as_deref(),
        true,
    )?;
    let subsample: Subsample = a.subsample.into();
    let data = dataset::prepare(
        &splits,
        &Request {
            shots,
            seed,
            subsample,
            manifest: None,
        },
    )?;
    let recorded_template = header
        .as_ref()
        .map(|h| h.template.clone())
        .filter(|t| !t.is_empty());
    let template = flag_or_recorded(
        "template",
        a.template.clone(),
        recorded_template,
        data.template.clone(),
    );
    let loader = ImageLoader::<B>::new(
        samples(&data.test),
        LoaderMode::Eval { config: pre },
        a.batch_size,
        2,
        device.clone(),
    );
    let scored_as = if a.unseen || subsample == Subsample::Novel {
        Classes::Unseen
    } else {
        Classes::Seen
    };
    let tally = registry::with_method::<B, _>(
        &method,
        EvalJob {
            args: a,
            header: header.as_ref(),
            clip: loaded.model,
            tokenizer: &tokenizer,
            classes: &data.classes,
            template: &template,
            scored_as,
            loader: &loader,
            device,
        },
    )??;
    let out = serde_json::json!({
        "method": method,
        "dataset": data.dataset,
        "subsample": format!("{:?}", a.subsample).to_lowercase(),
        "classes": data.classes.len(),
        "total": tally.total,
        "correct": tally.correct,
        "accuracy": tally.accuracy(),
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run folders (each with results.json), or their parents.
    #[arg(required = true, num_args = 1..)]
    pub dirs: Vec<PathBuf>,
    /// Print JSON (a list of the runs' results) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The results.json of the runs in `dir` (a run folder, or folders holding
/// them; a demo's output folder holds one run per method).
fn find_results(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let f = dir.join("results.json");
    if f.is_file() && !dir.join(mmrl_train::demo::MARKER).is_file() {
        out.push(f);
        return Ok(());
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for s in subs {
        find_results(&s, out)?;
    }
    Ok(())
}

pub fn report_cmd(a: &ReportArgs) -> Result<()> {
    let mut files = Vec::new();
    for d in &a.dirs {
        find_results(d, &mut files)?;
    }
    if files.is_empty() {
        bail!(
            "no results.json under {:?}; pass the --output folders of `mmrl train`",
            a.dirs
        );
    }
    let mut runs = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let r: RunReport = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a results.json of `mmrl train`", f.display()))?;
        runs.push(r);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    println!("| method | dataset | protocol | shots | seeds | results (mean ± std over seeds) |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        let cells: Vec<String> = r
            .mean
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let sd = r.std[k.as_str()].as_f64().unwrap_or(f64::NAN);
                        format!("{k} {:.2} ± {sd:.2}", v.as_f64().unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "| {} | {} | {:?} | {} | {} | {} |",
            r.method,
            r.dataset,
            r.protocol,
            r.shots,
            r.seeds.len(),
            cells.join(", ")
        );
    }
    Ok(())
}
