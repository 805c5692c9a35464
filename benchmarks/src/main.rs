//! `mmrl-bench`: ViT-B/16 CLIP tower throughput with random weights.
//!
//! ```text
//! mmrl-bench --backend ndarray|flex|wgpu|cuda|cuda-bf16 [--what image|text|all] [--iters N] [--batch 8] [--prompts 100]
//! mmrl-bench --what pretrain-epoch
//! mmrl-bench --what loader [--workers N] [--cache] [--images 256] [--epochs 3] [--dir DIR]
//! mmrl-bench --what mmrl-step [--backend flex|ndarray|wgpu|wgpu-fused|cuda|cuda-fused] [--batch 4] [--prompts 100] [--iters 3]
//! mmrl-bench --what method-step --method NAME [--backend flex|ndarray|wgpu|wgpu-fused|cuda|cuda-fused] [--batch 4] [--prompts 100] [--iters 3]
//! ```
//! `--precision bf16` (encode, `mmrl-step`, `method-step`) holds frozen
//! CLIP's blocks and token table in bf16, as `mmrl train --precision bf16`
//! (`mmrl_model::clip::Precision`); `cuda-bf16` is CUDA in bf16 throughout.
//! `--what method-step` times one method (any registered name) as `mmrl
//! train` runs it: its training step with an AdamW update and its scoring
//! pass, with each phase's peak memory (see `method_step.rs`).
//! `--what mmrl-step` times one MMRL training step (forward, loss, backward)
//! with the frozen lower image layers run twice (as before the method
//! interface) and once (as the trainer runs it now); `--prompts` is the
//! number of classes.
//! `--what pretrain-epoch` times one epoch of the demo's small-CLIP
//! pretraining with its CPU utilisation.
//! `MMRL_CPU_KERNELS=composed` runs flex without the specialised kernels
//! (`mmrl_model::kernels`), for before/after figures from one binary;
//! `MMRL_BENCH_VERBOSE=1` prints every timed run.
//! `--what loader` times the training data pipeline alone (decode, random
//! resized crop to 224, flip, normalise, batches of 32 as tensors on flex) over
//! synthetic 500×375 JPEG photos written to `--dir` once (default: a folder in
//! the system temp dir, kept for `benchmarks/scripts/bench_loader_pytorch.py`).
//! Prints one JSON object per measurement with the same fields as
//! `benchmarks/scripts/bench_pytorch.py`, so the two sit side by side in
//! `benchmarks/RESULTS.md`. Every timed call reads its result back to the
//! host, which synchronises asynchronous (GPU) backends.

use std::time::Instant;

use burn::prelude::*;
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::{Clip, ClipConfig, Precision};
use mmrl_model::ClipBackend;

mod method_step;
mod mmrl_step;

/// CIFAR-100 class names: realistic prompt lengths.
const CLASSES: &str = "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm";

struct Args {
    backend: String,
    what: String,
    iters: usize,
    batch: usize,
    prompts: usize,
    preset: String,
    method: String,
    full_context: bool,
    workers: usize,
    cache: bool,
    images: usize,
    epochs: usize,
    dir: Option<std::path::PathBuf>,
    precision: Precision,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        backend: "ndarray".into(),
        what: "all".into(),
        iters: 5,
        batch: 8,
        prompts: 100,
        preset: "ViT-B/16".into(),
        method: "mmrl".into(),
        full_context: false,
        workers: 1,
        cache: false,
        images: 256,
        epochs: 3,
        dir: None,
        precision: Precision::F32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => a.backend = val()?,
            "--what" => a.what = val()?,
            "--iters" => a.iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--batch" => a.batch = val()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--prompts" => a.prompts = val()?.parse().map_err(|e| format!("--prompts: {e}"))?,
            "--preset" => a.preset = val()?,
            "--method" => a.method = val()?,
            "--full-context" => a.full_context = true,
            "--workers" => a.workers = val()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--cache" => a.cache = true,
            "--images" => a.images = val()?.parse().map_err(|e| format!("--images: {e}"))?,
            "--epochs" => a.epochs = val()?.parse().map_err(|e| format!("--epochs: {e}"))?,
            "--dir" => a.dir = Some(val()?.into()),
            "--precision" => a.precision = val()?.parse()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A random CLIP of `config` with its frozen weights in `precision`
/// (refused where the backend cannot run it).
fn frozen_clip<B: ClipBackend>(
    config: &ClipConfig,
    precision: Precision,
    device: &B::Device,
) -> Result<Clip<B>, String> {
    precision.check::<B>(device)?;
    Ok(config.init(device).with_precision(precision))
}

fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn time<F: FnMut()>(iters: usize, mut f: F) -> (f64, f64) {
    let first = Instant::now();
    f(); // warm-up (kernel compilation, allocator, autotune)
    eprintln!(
        "first call (kernel compilation, autotune): {:.2} s",
        first.elapsed().as_secs_f64()
    );
    f();
    let runs: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    if std::env::var_os("MMRL_BENCH_VERBOSE").is_some() {
        eprintln!("runs (s): {runs:.3?}");
    }
    median_min(runs)
}

fn run<B: ClipBackend>(args: &Args, device: B::Device) -> Result<(), String> {
    let config =
        ClipConfig::preset(&args.preset).ok_or(format!("unknown preset {}", args.preset))?;
    B::seed(&device, 0);
    mmrl_model::init::seed(0);
    let clip: Clip<B> = frozen_clip(&config, args.precision, &device)?;
    let size = config.vision_config.image_size;
    let common = serde_json::json!({
        "framework": "burn",
        "backend": args.backend,
        "precision": args.precision.name(),
        "model": args.preset,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    if args.what == "image" || args.what == "all" {
        let images = Tensor::<B, 4>::random(
            [args.batch, 3, size, size],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let (median, min) = time(args.iters, || {
            let f = clip.encode_image(images.clone());
            let _ = f.into_data();
        });
        let mut out = common.clone();
        out["what"] = "image".into();
        out["batch"] = args.batch.into();
        out["image_batch_s"] = median.into();
        out["image_batch_min_s"] = min.into();
        out["images_per_s"] = (args.batch as f64 / median).into();
        println!("{out}");
    }
    if args.what == "profile" {
        profile(&clip, args.batch, &device);
    }
    if args.what == "text" || args.what == "all" {
        let tokenizer = ClipTokenizer::bundled();
        let names: Vec<&str> = CLASSES.split(' ').collect();
        let prompts: Vec<String> = (0..args.prompts)
            .map(|i| format!("a photo of a {}.", names[i % names.len()].replace('_', " ")))
            .collect();
        let batch = tokenizer
            .encode_batch(&prompts)
            .map_err(|e| e.to_string())?;
        // Trimmed after the longest prompt's end token, as mmrl encodes
        // prompts; `--full-context` times all 77 positions, as PyTorch does.
        let batch = if args.full_context {
            batch
        } else {
            batch.trimmed()
        };
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(batch.ids.clone(), [batch.ids.len()]),
            &device,
        )
        .reshape([batch.rows, batch.context]);
        let eot = Tensor::<B, 1, Int>::from_data(
            TensorData::new(batch.eot.clone(), [batch.rows]),
            &device,
        );
        let (median, min) = time(args.iters, || {
            let f = clip.encode_text(ids.clone(), eot.clone());
            let _ = f.into_data();
        });
        let mut out = common;
        out["what"] = "text".into();
        out["prompts"] = args.prompts.into();
        out["tokens_per_prompt"] = batch.context.into();
        out["text_s"] = median.into();
        out["text_min_s"] = min.into();
        out["prompts_per_s"] = (args.prompts as f64 / median).into();
        println!("{out}");
    }
    Ok(())
}

/// Where the image tower's time goes: each step of one block, timed alone on
/// a `[batch, 197, 768]` input and multiplied by the depth.
fn profile<B: ClipBackend>(clip: &Clip<B>, batch: usize, device: &B::Device) {
    use burn::tensor::activation::sigmoid;
    use burn::tensor::module::attention;
    use mmrl_model::clip::transformer::linear3;
    let vision = &clip.vision_model;
    let layer = &vision.encoder.layers[0];
    let depth = vision.encoder.depth() as f64;
    let [width] = layer.layer_norm1.gamma.dims();
    let heads = layer.self_attn.heads;
    let seq = vision.embeddings.position_embedding.weight.dims()[0];
    let x = Tensor::<B, 3>::random(
        [batch, seq, width],
        burn::tensor::Distribution::Default,
        device,
    );
    let split = |t: Tensor<B, 3>| {
        t.reshape([batch, seq, heads, width / heads])
            .swap_dims(1, 2)
    };
    let q = split(x.clone());
    let h = linear3(&layer.mlp.fc1, x.clone());
    let mut steps: Vec<(&str, f64)> = Vec::new();
    let mut t = |name, f: &mut dyn FnMut()| steps.push((name, time(3, f).0 * depth));
    t("layer_norm x2", &mut || {
        let _ = layer.layer_norm1.forward(x.clone()).into_data();
        let _ = layer.layer_norm2.forward(x.clone()).into_data();
    });
    t(
        "q,k,v,out projections, burn Linear (matmul, then bias)",
        &mut || {
            let x2 = x.clone().reshape([batch * seq, width]);
            for l in [
                &layer.self_attn.q_proj,
                &layer.self_attn.k_proj,
                &layer.self_attn.v_proj,
                &layer.self_attn.out_proj,
            ] {
                let _ = l.forward(x2.clone()).into_data();
            }
        },
    );
    t("q,k,v,out projections (kernels::fused_linear)", &mut || {
        for l in [
            &layer.self_attn.q_proj,
            &layer.self_attn.k_proj,
            &layer.self_attn.v_proj,
            &layer.self_attn.out_proj,
        ] {
            let _ = linear3(l, x.clone()).into_data();
        }
    });
    t("attention core (softmax(qk^T)v)", &mut || {
        let _ = attention(
            q.clone(),
            q.clone(),
            q.clone(),
            None,
            None,
            Default::default(),
        )
        .into_data();
    });
    t(
        "attention core, mmrl kernel (kernels::attention_core)",
        &mut || {
            let _ = mmrl_model::kernels::attention_core(q.clone(), q.clone(), q.clone(), false)
                .into_data();
        },
    );
    t("attention core as matmul + softmax + matmul", &mut || {
        let scores = q
            .clone()
            .matmul(q.clone().swap_dims(2, 3))
            .mul_scalar(1.0 / ((width / heads) as f64).sqrt());
        let p = burn::tensor::activation::softmax(scores, 3);
        let _ = p.matmul(q.clone()).into_data();
    });
    t("sigmoid alone", &mut || {
        let _ = sigmoid(h.clone()).into_data();
    });
    t("mlp fc1 + fc2", &mut || {
        let h = linear3(&layer.mlp.fc1, x.clone());
        let _ = linear3(&layer.mlp.fc2, h).into_data();
    });
    t("quick_gelu, mmrl kernel (kernels::quick_gelu)", &mut || {
        let _ = mmrl_model::kernels::quick_gelu(h.clone()).into_data();
    });
    t("quick_gelu composed", &mut || {
        let _ = (h.clone() * sigmoid(h.clone().mul_scalar(1.702))).into_data();
    });
    t("whole block", &mut || {
        let _ = layer.forward(x.clone(), false).into_data();
    });
    for (name, s) in steps {
        println!(
            "{}",
            serde_json::json!({"profile": name, "seconds_per_forward": s, "batch": batch})
        );
    }
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// One epoch of the demo's CLIP pretraining (`DemoConfig::full()`'s
/// settings, `epochs = 1`) on flex under autodiff, with the wall time, the
/// CPU time and the cores' utilisation.
fn pretrain_epoch() -> Result<(), String> {
    use mmrl_train::demo::DemoConfig;
    type AB = burn::backend::Autodiff<burn::backend::Flex>;
    let mut cfg = DemoConfig::full().pretrain;
    cfg.epochs = 1;
    let tokenizer = ClipTokenizer::bundled();
    let dir = std::env::temp_dir().join(format!("mmrl-bench-pretrain-{}", std::process::id()));
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let result = mmrl_train::pretrain::pretrain::<AB>(&cfg, &tokenizer, &dir, &Default::default());
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}",
        serde_json::json!({
            "framework": "burn", "backend": "flex", "what": "pretrain-epoch",
            "kernels": if mmrl_model::kernels::specialised() { "specialised" } else { "composed" },
            "steps": cfg.steps_per_epoch, "batch": cfg.batch_size,
            "epoch_s": wall, "cpu_s": cpu, "cores": cores,
            "cpu_utilisation": cpu.map(|c| c / wall / cores as f64),
        })
    );
    Ok(())
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if args.what == "mmrl-step" || args.what == "method-step" {
        /// Runs module `$m`'s `run` on the autodiff backend named by `--backend`.
        macro_rules! on_autodiff {
            ($m:ident) => {
                match args.backend.as_str() {
                    "flex" => $m::run::<burn::backend::Autodiff<burn::backend::Flex>>(
                        &args,
                        Default::default(),
                    ),
                    "ndarray" => $m::run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
                        &args,
                        Default::default(),
                    ),
                    // `wgpu` and `cuda` time what `mmrl train` runs: the GPU backend
                    // without Burn's fusion layer (burn-fusion 0.21 loses tensors under
                    // the Learner); `-fused` times the fused backend for comparison.
                    #[cfg(feature = "wgpu")]
                    "wgpu" => $m::run::<burn::backend::Autodiff<mmrl_model::kernels::WgpuUnfused>>(
                        &args,
                        Default::default(),
                    ),
                    #[cfg(feature = "wgpu")]
                    "wgpu-fused" => $m::run::<burn::backend::Autodiff<burn::backend::Wgpu>>(
                        &args,
                        Default::default(),
                    ),
                    #[cfg(feature = "cuda")]
                    "cuda" => $m::run::<burn::backend::Autodiff<mmrl_model::kernels::CudaUnfused>>(
                        &args,
                        Default::default(),
                    ),
                    #[cfg(feature = "cuda")]
                    "cuda-fused" => $m::run::<burn::backend::Autodiff<burn::backend::Cuda>>(
                        &args,
                        Default::default(),
                    ),
                    other => Err(format!(
                        "{} runs on flex, ndarray, wgpu, wgpu-fused, cuda or cuda-fused \
                         (the GPU ones when built in), not {other}",
                        args.what
                    )),
                }
            };
        }
        let result = if args.what == "mmrl-step" {
            on_autodiff!(mmrl_step)
        } else {
            on_autodiff!(method_step)
        };
        if let Err(e) = result {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        return;
    }
    if args.what == "pretrain-epoch" {
        if let Err(e) = pretrain_epoch() {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        return;
    }
    if args.what == "loader" {
        if let Err(e) = loader::run(&args) {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        return;
    }
    let result = match args.backend.as_str() {
        "ndarray" => run::<burn::backend::NdArray<f32>>(&args, Default::default()),
        "flex" => run::<burn::backend::Flex>(&args, Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<burn::backend::Wgpu>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => run::<burn::backend::Cuda>(&args, Default::default()),
        // Weights, activations and matmuls in bf16 (accumulated in f32).
        #[cfg(feature = "cuda")]
        "cuda-bf16" => run::<burn::backend::Cuda<burn::tensor::bf16>>(&args, Default::default()),
        other => Err(format!(
            "backend {other} is not built in (features: wgpu, cuda)"
        )),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

mod loader {
    //! The training data pipeline alone, on synthetic photos.

    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use burn::data::dataloader::DataLoader;
    use mmrl_data::augment::TrainTransform;
    use mmrl_data::loader::{ImageLoader, LoaderMode, Sample};

    use super::Args;

    const WIDTH: u32 = 500;
    const HEIGHT: u32 = 375;
    const BATCH: usize = 32;
    const CLASSES: usize = 10;

    /// A 500×375 "photo": smooth colour gradients, a few soft blobs and sensor-like
    /// noise, different for each `i` (deterministic), so JPEG sizes (~100 kB at
    /// quality 90) and decode costs are like real photos'.
    fn photo(i: u32) -> image::RgbImage {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut noise = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as f32 / 255.0 - 0.5) * 24.0
        };
        let f = i as f32;
        let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..4)
            .map(|k| {
                let k = k as f32;
                (
                    (0.2 + 0.6 * ((f * 0.37 + k * 0.91).sin() * 0.5 + 0.5)) * WIDTH as f32,
                    (0.2 + 0.6 * ((f * 0.53 + k * 1.7).cos() * 0.5 + 0.5)) * HEIGHT as f32,
                    40.0 + 30.0 * k,
                    [
                        120.0 * (f + k).sin(),
                        120.0 * (f * 0.7 + k).cos(),
                        100.0 * (f * 1.3 - k).sin(),
                    ],
                )
            })
            .collect();
        image::RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
            let (xf, yf) = (x as f32 / WIDTH as f32, y as f32 / HEIGHT as f32);
            let mut c = [
                60.0 + 150.0 * xf + 20.0 * (f * 0.1).sin(),
                80.0 + 120.0 * yf,
                170.0 - 100.0 * (xf + yf) * 0.5 + 30.0 * (6.0 * xf + f).sin(),
            ];
            for &(bx, by, r, col) in &blobs {
                let d2 = ((x as f32 - bx).powi(2) + (y as f32 - by).powi(2)) / (r * r);
                let w = (-d2).exp();
                for (v, dv) in c.iter_mut().zip(col) {
                    *v += w * dv;
                }
            }
            let n = noise();
            image::Rgb(c.map(|v| (v + n).clamp(0.0, 255.0) as u8))
        })
    }

    /// The `n` photos in `dir` (written if missing), labels `i % 10`.
    fn photos(dir: &Path, n: usize) -> Result<Vec<Sample>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut written = 0;
        let samples = (0..n)
            .map(|i| {
                let path = dir.join(format!("photo_{i:05}.jpg"));
                if !path.exists() {
                    let file = std::fs::File::create(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(
                        std::io::BufWriter::new(file),
                        90,
                    );
                    enc.encode_image(&photo(i as u32))
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    written += 1;
                }
                Ok(Sample {
                    path,
                    label: i % CLASSES,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if written > 0 {
            eprintln!("wrote {written} photos to {}", dir.display());
        }
        Ok(samples)
    }

    pub fn run(args: &Args) -> Result<(), String> {
        type B = burn::backend::Flex;
        let dir: PathBuf = args
            .dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("mmrl-bench-loader"));
        let samples = photos(&dir, args.images)?;
        let bytes: u64 = samples
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        let mode = LoaderMode::Train {
            transform: TrainTransform::mmrl(224),
            seed: 1,
        };
        let loader = ImageLoader::<B>::new(samples, mode, BATCH, args.workers, Default::default())
            .with_cache(args.cache);
        let mut per_epoch = Vec::new();
        for _ in 0..args.epochs {
            let t = Instant::now();
            let mut n = 0;
            for batch in loader.iter() {
                let [b, _, _, _] = batch.images.dims();
                n += b;
            }
            if let Some(e) = loader.take_error() {
                return Err(e.to_string());
            }
            per_epoch.push(n as f64 / t.elapsed().as_secs_f64());
        }
        let out = serde_json::json!({
            "framework": "burn",
            "backend": "flex",
            "what": "loader",
            "workers": args.workers,
            "cache": args.cache,
            "images": args.images,
            "mean_jpeg_kb": bytes as f64 / args.images.max(1) as f64 / 1000.0,
            "batch": BATCH,
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "images_per_s": per_epoch,
        });
        println!("{out}");
        Ok(())
    }
}
