//! The `mmrl` command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use mmrl_data::preprocess::{self, CropRounding, PreprocessConfig};
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::loader::{load_clip, Layout, LoadedClip};
use mmrl_model::clip::Precision;
use mmrl_model::methods::{Classes, Method};
use mmrl_train::checkpoint::{read_header, CheckpointHeader};
use mmrl_train::registry::{self, MethodVisitor};
use mmrl_train::zeroshot;

use crate::backend::DeviceKind;
use mmrl_model::ClipBackend;

/// Few-shot adaptation of CLIP (MMRL, CoOp, zero-shot) on CPU, any GPU or CUDA.
#[derive(Debug, Parser)]
#[command(name = "mmrl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The offline demo: pretrain a small CLIP on a generated world (cached), then
    /// zero-shot CLIP, CoOp and MMRL base-to-novel over seeds 1, 2, 3.
    Demo(crate::demo_cmd::DemoArgs),
    /// Classify images with zero-shot CLIP.
    Zeroshot(ZeroshotArgs),
    /// Classify images with an adapted CLIP (a checkpoint of any method).
    Predict(PredictArgs),
    /// The methods this binary holds.
    Methods,
    /// The backends this binary was built with and the devices each sees; for
    /// one that cannot run, what is missing and how to install it.
    Devices {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Datasets: list them, check a layout, print a run's few-shot split.
    #[command(subcommand)]
    Data(crate::data_cmd::DataCommand),
    /// Train a method on a dataset under a protocol, over seeds.
    Train(crate::train_cmd::TrainArgs),
    /// Score a trained checkpoint on a dataset's test split.
    Eval(crate::eval_cmd::EvalArgs),
    /// Collect the results of several runs into one table.
    Report(crate::eval_cmd::ReportArgs),
}

/// What every classifying command takes: weights, images, classes, output.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// CLIP weights: a Hugging Face folder (config.json + model.safetensors)
    /// or an OpenAI/open_clip .safetensors/.pt file.
    #[arg(long)]
    pub clip: PathBuf,
    /// tokenizer.json or bpe_simple_vocab_16e6.txt.gz; default: the folder's
    /// tokenizer.json, else the bundled OpenAI vocabulary.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Image files or folders (folders are read in sorted order).
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Class names, comma-separated (predict: default, the checkpoint's).
    #[arg(long, value_delimiter = ',', conflicts_with = "classes_file")]
    pub classes: Vec<String>,
    /// A file with one class name per line.
    #[arg(long)]
    pub classes_file: Option<PathBuf>,
    /// Prompt template; `{}` is replaced by the class name (default: a
    /// checkpoint's, else "a photo of a {}.").
    #[arg(long)]
    pub template: Option<String>,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// CLIP's precision: f32, or bf16 (its blocks' weights and token
    /// embeddings in bfloat16, the rest f32; CUDA and CPU).
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ZeroshotArgs {
    #[command(flatten)]
    pub common: ClassifyArgs,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub common: ClassifyArgs,
    /// The method, for a checkpoint that does not record it (the
    /// reference's; default mmrl). `mmrl methods` lists them.
    #[arg(long)]
    pub method: Option<String>,
    /// The method's checkpoint: one saved by `mmrl train` (it records the
    /// method, its settings, the template and the class names) or the
    /// reference's (`model.pth.tar-N`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The classes were not trained on (novel classes, another dataset):
    /// score them as unseen (MMRL: the class head only).
    #[arg(long)]
    pub novel: bool,
    /// Method settings over the checkpoint's, e.g. --set mmrl.alpha=0.5,
    /// --set 'mmrl.rep_layers=[6,7,8]', --set coop.class_token_position=middle.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Zeroshot(args) => {
            crate::with_backend!(args.common.device, |B, device| zeroshot_cmd::<B>(
                &args, &device
            ))
        }
        Command::Data(cmd) => crate::data_cmd::run(cmd),
        Command::Demo(args) => {
            crate::train::signals::install();
            crate::with_backend!(train: args.device, |B, device| crate::demo_cmd::demo_cmd::<B>(
                &args, &device
            ))
        }
        Command::Report(args) => crate::eval_cmd::report_cmd(&args),
        Command::Eval(args) => {
            crate::with_backend!(args.device, |B, device| crate::eval_cmd::eval_cmd::<B>(
                &args, &device
            ))
        }
        Command::Train(args) => {
            // Ctrl-C stops training at the next batch (other commands keep
            // the default: an immediate stop).
            crate::train::signals::install();
            crate::with_backend!(train: args.device, |B, device| crate::train_cmd::train_cmd::<B>(
                &args, &device
            ))
        }
        Command::Predict(args) => {
            crate::with_backend!(args.common.device, |B, device| predict_cmd::<B>(
                &args, &device
            ))
        }
        Command::Devices { json } => crate::devices::devices_cmd(json),
        Command::Methods => {
            for (name, summary) in registry::summaries() {
                println!("{name:<10} {summary}");
            }
            Ok(())
        }
    }
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"];

/// Files as given; folders expanded to their image files in sorted order.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list folder {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                        })
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!(
                    "folder {} has no image files ({})",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            out.extend(files);
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            bail!("image {} does not exist", input.display());
        }
    }
    Ok(out)
}

fn read_classes(list: &[String], file: Option<&Path>) -> Result<Vec<String>> {
    let classes: Vec<String> = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read classes file {}", path.display()))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => list
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
    };
    Ok(classes)
}

/// CLIP from `--clip`, with its frozen weights in `precision` (refused
/// before reading anything when the backend cannot run it).
pub fn load_clip_as<B: ClipBackend>(
    path: &Path,
    precision: Precision,
    device: &B::Device,
) -> Result<LoadedClip<B>> {
    precision.check::<B>(device).map_err(anyhow::Error::msg)?;
    let mut loaded = load_clip::<B>(path, device)
        .with_context(|| format!("loading CLIP from {}", path.display()))?;
    loaded.model = loaded.model.with_precision(precision);
    Ok(loaded)
}

/// The tokenizer: `--tokenizer`, else the weights folder's, else the bundled one.
pub fn pick_tokenizer(
    explicit: Option<&Path>,
    from_weights: Option<&Path>,
) -> Result<ClipTokenizer> {
    match explicit.or(from_weights) {
        Some(path) => ClipTokenizer::from_path(path)
            .with_context(|| format!("loading tokenizer {}", path.display())),
        None => Ok(ClipTokenizer::bundled()),
    }
}

/// Preprocessing for a loaded CLIP, as its own ecosystem does it: a Hugging
/// Face folder's `preprocessor_config.json` (or, for HF-named weights,
/// transformers' defaults), else OpenAI's `clip.load` transform.
pub fn preprocess_config<B: ClipBackend>(
    clip_path: &Path,
    loaded: &LoadedClip<B>,
) -> Result<PreprocessConfig> {
    let size = loaded.config.vision_config.image_size;
    let file = clip_path.join("preprocessor_config.json");
    let config = if clip_path.is_dir() && file.is_file() {
        PreprocessConfig::from_hf_json(&file, size)?
    } else if loaded.layout == Layout::HuggingFace {
        PreprocessConfig {
            crop_rounding: CropRounding::Floor,
            ..PreprocessConfig::for_image_size(size)
        }
    } else {
        PreprocessConfig::for_image_size(size)
    };
    if config.crop_size != size {
        bail!(
            "{}: crop_size {} does not match the model's image_size {}",
            file.display(),
            config.crop_size,
            size
        );
    }
    Ok(config)
}

#[derive(Serialize)]
struct ClassifyJson {
    classes: Vec<String>,
    results: Vec<ImageResult>,
}

#[derive(Serialize)]
struct ImageResult {
    image: String,
    logits: Vec<f32>,
    probs: Vec<f32>,
    pred: String,
    /// The method's other heads as `<head>_logits` (MMRL: `class_logits`,
    /// `rep_logits`).
    #[serde(flatten)]
    heads: std::collections::BTreeMap<String, Vec<f32>>,
}

/// Rows of a `[rows, cols]` tensor.
fn rows<B: ClipBackend>(t: Tensor<B, 2>) -> Result<Vec<Vec<f32>>> {
    let [_, cols] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("reading results back from the device: {e:?}"))?;
    Ok(v.chunks(cols.max(1)).map(<[f32]>::to_vec).collect())
}

/// Preprocesses images in batches and hands each batch to `classify`, which
/// returns the logits and any other named heads; collects the results.
fn classify_images<B: ClipBackend>(
    images: &[PathBuf],
    pre: &PreprocessConfig,
    batch_size: usize,
    classes: &[String],
    device: &B::Device,
    mut classify: impl FnMut(Tensor<B, 4>) -> Result<mmrl_model::methods::Prediction<B>>,
) -> Result<Vec<ImageResult>> {
    let mut results = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch_size.max(1)) {
        let mut pixels = Vec::with_capacity(chunk.len() * pre.numel());
        for path in chunk {
            pixels.extend(preprocess::preprocess_file(path, pre)?);
        }
        let side = pre.crop_size;
        let batch =
            Tensor::<B, 1>::from_data(TensorData::new(pixels, [chunk.len() * pre.numel()]), device)
                .reshape([chunk.len(), 3, side, side]);
        let prediction = classify(batch)?;
        let logits = prediction.logits;
        let probs = rows(burn::tensor::activation::softmax(logits.clone(), 1))?;
        let logits = rows(logits)?;
        let mut heads = prediction
            .heads
            .into_iter()
            .map(|(name, t)| Ok((format!("{name}_logits"), rows(t)?.into_iter())))
            .collect::<Result<Vec<_>>>()?;
        for ((path, logits), probs) in chunk.iter().zip(logits).zip(probs) {
            let best = argmax(&logits);
            results.push(ImageResult {
                image: path.display().to_string(),
                pred: classes[best].clone(),
                logits,
                probs,
                heads: heads
                    .iter_mut()
                    .filter_map(|(name, rows)| Some((name.clone(), rows.next()?)))
                    .collect(),
            });
        }
    }
    Ok(results)
}

fn print_results(json: bool, classes: Vec<String>, results: Vec<ImageResult>) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&ClassifyJson { classes, results })?
        );
    } else {
        print_table(&classes, &results);
    }
    Ok(())
}

/// The classes, images, CLIP, tokenizer and preprocessing a command works with.
struct Setup<B: Backend> {
    classes: Vec<String>,
    images: Vec<PathBuf>,
    clip: LoadedClip<B>,
    tokenizer: ClipTokenizer,
    pre: PreprocessConfig,
}

fn setup<B: ClipBackend>(args: &ClassifyArgs, device: &B::Device) -> Result<Setup<B>> {
    let classes = read_classes(&args.classes, args.classes_file.as_deref())?;
    let images = collect_images(&args.images)?;
    let clip = load_clip_as::<B>(&args.clip, args.precision, device)?;
    let tokenizer = pick_tokenizer(args.tokenizer.as_deref(), clip.tokenizer.as_deref())?;
    let pre = preprocess_config(&args.clip, &clip)?;
    Ok(Setup {
        classes,
        images,
        clip,
        tokenizer,
        pre,
    })
}

fn zeroshot_cmd<B: ClipBackend>(args: &ZeroshotArgs, device: &B::Device) -> Result<()> {
    let args = &args.common;
    let s = setup::<B>(args, device)?;
    let template = args
        .template
        .as_deref()
        .unwrap_or(zeroshot::DEFAULT_TEMPLATE);
    let clip = &s.clip.model;
    let text = zeroshot::class_text_features(clip, &s.tokenizer, &s.classes, template, device)?;
    let results = classify_images(
        &s.images,
        &s.pre,
        args.batch_size,
        &s.classes,
        device,
        |batch| {
            Ok(mmrl_model::methods::Prediction {
                logits: zeroshot::classify(clip, batch, text.clone()).logits,
                heads: Vec::new(),
            })
        },
    )?;
    print_results(args.json, s.classes, results)
}

/// Classifies images with a checkpoint of any method.
struct PredictJob<'a, B: Backend> {
    args: &'a PredictArgs,
    header: Option<&'a CheckpointHeader>,
    setup: Setup<B>,
    template: &'a str,
    device: &'a B::Device,
}

impl<B: ClipBackend> MethodVisitor<B> for PredictJob<'_, B> {
    type Out = Result<()>;

    fn visit<M: Method<B>>(self) -> Result<()> {
        let (args, common) = (self.args, &self.args.common);
        let Setup {
            classes,
            images,
            clip,
            tokenizer,
            pre,
        } = self.setup;
        let model = crate::eval_cmd::load_for_classes::<B, M>(
            &args.checkpoint,
            self.header,
            &args.set,
            clip.model,
            &tokenizer,
            &classes,
            self.template,
            self.device,
        )?;
        eprintln!(
            "{}: {} trainable parameters; settings {}",
            M::NAME,
            model.num_trainable_params(),
            serde_json::to_string(&model.config())?
        );
        // Text features once for the class set.
        let text = model.text();
        let scored_as = if args.novel {
            Classes::Unseen
        } else {
            Classes::Seen
        };
        let results = classify_images(
            &images,
            &pre,
            common.batch_size,
            &classes,
            self.device,
            |batch| Ok(model.predict(batch, &text, scored_as)),
        )?;
        print_results(common.json, classes, results)
    }
}

fn predict_cmd<B: ClipBackend>(args: &PredictArgs, device: &B::Device) -> Result<()> {
    let common = &args.common;
    let header = read_header(&args.checkpoint, &common.clip)?;
    let method = crate::eval_cmd::checkpoint_method(
        args.method.as_deref(),
        header.as_ref(),
        &args.checkpoint,
        Some("mmrl"),
    )?;
    let mut setup = setup::<B>(common, device)?;
    if setup.classes.is_empty() {
        if let Some(h) = header.as_ref().filter(|h| !h.classes.is_empty()) {
            eprintln!(
                "note: the {} classes the checkpoint was trained on (give --classes for others)",
                h.classes.len()
            );
            setup.classes = h.classes.clone();
        }
    }
    let recorded_template = header
        .as_ref()
        .map(|h| h.template.clone())
        .filter(|t| !t.is_empty());
    let template = crate::eval_cmd::flag_or_recorded(
        "template",
        common.template.clone(),
        recorded_template,
        zeroshot::DEFAULT_TEMPLATE.to_string(),
    );
    zeroshot::check_classes(&template, &setup.classes)?;
    registry::with_method::<B, _>(
        &method,
        PredictJob {
            args,
            header: header.as_ref(),
            setup,
            template: &template,
            device,
        },
    )?
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

fn print_table(classes: &[String], results: &[ImageResult]) {
    let width = results
        .iter()
        .map(|r| r.image.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<width$}  {:<20} {:>7}  runner-up",
        "image", "prediction", "prob"
    );
    for r in results {
        let best = argmax(&r.logits);
        let mut order: Vec<usize> = (0..classes.len()).collect();
        order.sort_by(|&a, &b| r.probs[b].total_cmp(&r.probs[a]));
        let second = order
            .get(1)
            .map(|&i| format!("{} ({:.1}%)", classes[i], 100.0 * r.probs[i]))
            .unwrap_or_default();
        println!(
            "{:<width$}  {:<20} {:>6.1}%  {}",
            r.image,
            r.pred,
            100.0 * r.probs[best],
            second
        );
    }
}
