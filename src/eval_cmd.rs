//! `mmrl eval` (a trained checkpoint on a dataset's test split) and
//! `mmrl report` (several runs in one table).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use clap::Args;

use mmrl_data::dataset::{self, Request};
use mmrl_data::few_shot::Subsample;
use mmrl_data::loader::{ImageLoader, LoaderMode, Sample};
use mmrl_data::preprocess::{CropRounding, PreprocessConfig};
use mmrl_model::clip::loader::load_clip;
use mmrl_model::methods::coop::{ClassTokenPosition, CoopConfig};
use mmrl_model::methods::coop_io::load_coop;
use mmrl_model::methods::mmrl_io::load_mmrl;
use mmrl_train::method::{class_text, evaluate_coop, evaluate_mmrl, Head, PromptIds};
use mmrl_train::run::{check_checkpoint, RunReport};

use crate::backend::DeviceKind;
use crate::cli::pick_tokenizer;
use crate::data_cmd::{DatasetArgs, SubsampleArg};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint written by `mmrl train` (mmrl.safetensors, coop.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// The CLIP weights the checkpoint was trained on.
    #[arg(long)]
    pub clip: PathBuf,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Which classes to score: base, novel (MMRL: class head) or all.
    #[arg(long, value_enum, default_value_t = SubsampleArg::All)]
    pub subsample: SubsampleArg,
    /// Few-shot draw that defines the base/novel halves (as in training).
    #[arg(long, default_value_t = 16)]
    pub shots: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// MMRL: score with the class head only (novel classes, other datasets).
    #[arg(long)]
    pub class_head: bool,
    /// Prompt template; default: the dataset's.
    #[arg(long)]
    pub template: Option<String>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
}

pub fn eval_cmd<B: Backend>(a: &EvalArgs, device: &B::Device) -> Result<()> {
    let method = check_checkpoint(&a.checkpoint, &a.clip)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: not a checkpoint written by `mmrl train` (no method recorded); use `mmrl predict --method ...` for reference checkpoints",
            a.checkpoint.display()
        )
    })?;
    let loaded = load_clip::<B>(&a.clip, device)
        .with_context(|| format!("loading CLIP from {}", a.clip.display()))?;
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
            shots: a.shots,
            seed: a.seed,
            subsample,
            manifest: None,
        },
    )?;
    let template = a.template.clone().unwrap_or_else(|| data.template.clone());
    let loader = ImageLoader::<B>::new(
        data.test
            .iter()
            .map(|i| Sample {
                path: i.path.clone(),
                label: i.label,
            })
            .collect(),
        LoaderMode::Eval { config: pre },
        a.batch_size,
        2,
        device.clone(),
    );
    let tally = match method.as_str() {
        "mmrl" => {
            let model = load_mmrl(&a.checkpoint, loaded.model, None, 0.7, device)?;
            let text = class_text(&model, &tokenizer, &data.classes, &template, device)?;
            let head = if a.class_head || subsample == Subsample::Novel {
                Head::Class
            } else {
                Head::Fused
            };
            evaluate_mmrl(&model, &text, head, &loader)?
        }
        "coop" => {
            let model = load_coop(&a.checkpoint, loaded.model, ClassTokenPosition::End, device)?;
            let cfg = CoopConfig {
                n_ctx: model.n_ctx(),
                ..Default::default()
            };
            evaluate_coop(
                &model,
                &PromptIds::new(&cfg, &tokenizer, &data.classes)?,
                &loader,
            )?
        }
        other => bail!("{}: unknown method {other:?}", a.checkpoint.display()),
    };
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

fn find_results(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let f = dir.join("results.json");
    if f.is_file() {
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
