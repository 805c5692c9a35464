//! `mmrl data list|verify|split`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};

use mmrl_data::dataset::{self, split_file, verify, Benchmark, Request, Source};
use mmrl_data::few_shot::Subsample;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// The supported datasets with their class counts and split sizes.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a dataset's layout, split file and image counts against the protocol.
    Verify(VerifyArgs),
    /// Print exactly the lists a training run with the same arguments uses.
    Split(SplitArgs),
}

/// Which classes a run uses (`DATASET.SUBSAMPLE_CLASSES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubsampleArg {
    All,
    Base,
    /// Dassl calls it `new`.
    #[value(alias = "new")]
    Novel,
}

impl From<SubsampleArg> for Subsample {
    fn from(s: SubsampleArg) -> Self {
        match s {
            SubsampleArg::All => Subsample::All,
            SubsampleArg::Base => Subsample::Base,
            SubsampleArg::Novel => Subsample::Novel,
        }
    }
}

/// Where a dataset is: every command that reads one takes these.
#[derive(Debug, Args, Clone)]
pub struct DatasetArgs {
    /// oxford_pets, eurosat, imagenet, ... (`mmrl data list`), or folder / csv.
    #[arg(long)]
    pub dataset: String,
    /// The folder holding the dataset folders (CoOp's $DATA); for
    /// `--dataset folder` the dataset's folder, for `--dataset csv` the CSV file.
    #[arg(long)]
    pub root: PathBuf,
    /// Custom datasets: class names (folder: `<folder> <name>` lines; csv:
    /// one name per line, line i names label i).
    #[arg(long)]
    pub classnames: Option<PathBuf>,
}

impl DatasetArgs {
    pub fn source(&self) -> Result<Source> {
        Ok(Source::parse(&self.dataset)?)
    }
}

/// How a run draws its data.
#[derive(Debug, Args, Clone)]
pub struct DrawArgs {
    /// Images per class (few-shot); 0 = all.
    #[arg(long, default_value_t = 16)]
    pub shots: usize,
    /// Seed of the few-shot draw (Dassl's `--seed`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Base or novel half of the classes, or all.
    #[arg(long, value_enum, default_value_t = SubsampleArg::All)]
    pub subsample: SubsampleArg,
    /// Replay a few-shot draw (a manifest written by a run, or a
    /// split-file-shaped export of Dassl's `split_fewshot` pickles).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

impl DrawArgs {
    pub fn request(&self, seed: u64) -> Request {
        Request {
            shots: self.shots,
            seed,
            subsample: self.subsample.into(),
            manifest: self.manifest.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A benchmark dataset (`mmrl data list`).
    #[arg(long)]
    pub dataset: String,
    /// The folder holding the dataset folders.
    #[arg(long)]
    pub root: PathBuf,
    /// Also decode every image (slow; finds corrupt files).
    #[arg(long)]
    pub decode: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub draw: DrawArgs,
    /// Print the whole lists as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write the few-shot draw as a manifest (split-file shape).
    #[arg(long)]
    pub write_manifest: Option<PathBuf>,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::List { json } => list(json),
        DataCommand::Verify(a) => verify_cmd(&a),
        DataCommand::Split(a) => split_cmd(&a),
    }
}

fn list(json: bool) -> Result<()> {
    let rows: Vec<serde_json::Value> = Benchmark::ALL
        .iter()
        .map(|b| {
            let i = b.info();
            let s = i.sizes;
            serde_json::json!({
                "dataset": i.stem, "name": i.name, "folder": i.folder,
                "classes": s.classes, "train": s.train, "val": s.val, "test": s.test,
                "base": if b.is_test_only() { None } else { Some(s.classes.div_ceil(2)) },
                "novel": if b.is_test_only() { None } else { Some(s.classes / 2) },
                "template": i.template,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<20} {:>7} {:>9} {:>7} {:>7}  {:>9}  folder under --root",
        "dataset", "name", "classes", "train", "val", "test", "base/novel"
    );
    let n = |v: &serde_json::Value| {
        v.as_u64()
            .map(|x| x.to_string())
            .unwrap_or_else(|| "-".into())
    };
    for r in &rows {
        let bn = match (r["base"].as_u64(), r["novel"].as_u64()) {
            (Some(b), Some(nv)) => format!("{b}/{nv}"),
            _ => "test only".into(),
        };
        println!(
            "{:<16} {:<20} {:>7} {:>9} {:>7} {:>7}  {:>10}  {}",
            r["dataset"].as_str().unwrap(),
            r["name"].as_str().unwrap(),
            n(&r["classes"]),
            n(&r["train"]),
            n(&r["val"]),
            n(&r["test"]),
            bn,
            r["folder"].as_str().unwrap()
        );
    }
    println!(
        "{:<16} custom: --root <folder with one subfolder per class> (or train/ val/ test/ inside)",
        "folder"
    );
    println!(
        "{:<16} custom: --root <file.csv> with rows path,label[,split]",
        "csv"
    );
    Ok(())
}

fn verify_cmd(a: &VerifyArgs) -> Result<()> {
    let b = match Source::parse(&a.dataset)? {
        Source::Benchmark(b) => b,
        _ => bail!("`mmrl data verify` checks the benchmark datasets; for a custom dataset run `mmrl data split --dataset {} --root ...`, which reports what is wrong with it", a.dataset),
    };
    let report = verify::verify(b, &a.root, a.decode);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.ok() {
        let n = report
            .findings
            .iter()
            .filter(|f| f.severity == verify::Severity::Error)
            .count();
        bail!("{} is not usable yet: {n} problem(s) above", report.dataset);
    }
    Ok(())
}

/// Reads the dataset and applies the draw: what `train` uses.
pub fn prepare(data: &DatasetArgs, draw: &DrawArgs, seed: u64) -> Result<dataset::Prepared> {
    let source = data.source()?;
    let splits = dataset::read_splits(&source, &data.root, data.classnames.as_deref(), true)?;
    let prepared = dataset::prepare(&splits, &draw.request(seed))?;
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    Ok(prepared)
}

fn split_cmd(a: &SplitArgs) -> Result<()> {
    let p = prepare(&a.data, &a.draw, a.draw.seed)?;
    if let Some(path) = &a.write_manifest {
        split_file::write_json_atomic(path, &p.manifest)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&dataset::split_json(&p))?);
        return Ok(());
    }
    println!(
        "{}: {} classes, {} train, {} val, {} test images (shots {}, seed {}, {:?})",
        p.dataset,
        p.classes.len(),
        p.train.len(),
        p.val.len(),
        p.test.len(),
        a.draw.shots,
        a.draw.seed,
        a.draw.subsample
    );
    println!("template: {}", p.template);
    for (i, c) in p.classes.iter().enumerate() {
        let n = p.train.iter().filter(|it| it.label == i).count();
        println!("{i:>5}  {c}  ({n} train)");
    }
    Ok(())
}
