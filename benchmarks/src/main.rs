//! `mmrl-bench`: ViT-B/16 CLIP tower throughput with random weights.
//!
//! ```text
//! mmrl-bench --backend ndarray|flex|wgpu|cuda [--what image|text|all] [--iters N] [--batch 8] [--prompts 100]
//! ```
//! Prints one JSON object per measurement with the same fields as
//! `benchmarks/scripts/bench_pytorch.py`, so the two sit side by side in
//! `benchmarks/RESULTS.md`. Every timed call reads its result back to the
//! host, which synchronises asynchronous (GPU) backends.

use std::time::Instant;

use burn::prelude::*;
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::{Clip, ClipConfig};

/// CIFAR-100 class names: realistic prompt lengths.
const CLASSES: &str = "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm";

struct Args {
    backend: String,
    what: String,
    iters: usize,
    batch: usize,
    prompts: usize,
    preset: String,
    full_context: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        backend: "ndarray".into(),
        what: "all".into(),
        iters: 5,
        batch: 8,
        prompts: 100,
        preset: "ViT-B/16".into(),
        full_context: false,
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
            "--full-context" => a.full_context = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn time<F: FnMut()>(iters: usize, mut f: F) -> (f64, f64) {
    f(); // warm-up (kernel compilation, allocator, autotune)
    f();
    let runs: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median_min(runs)
}

fn run<B: Backend>(args: &Args, device: B::Device) -> Result<(), String> {
    let config =
        ClipConfig::preset(&args.preset).ok_or(format!("unknown preset {}", args.preset))?;
    B::seed(&device, 0);
    let clip: Clip<B> = config.init(&device);
    let size = config.vision_config.image_size;
    let common = serde_json::json!({
        "framework": "burn",
        "backend": args.backend,
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
fn profile<B: Backend>(clip: &Clip<B>, batch: usize, device: &B::Device) {
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
    t("q,k,v,out projections", &mut || {
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
    t("quick_gelu", &mut || {
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

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let result = match args.backend.as_str() {
        "ndarray" => run::<burn::backend::NdArray<f32>>(&args, Default::default()),
        "flex" => run::<burn::backend::Flex>(&args, Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<burn::backend::Wgpu>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => run::<burn::backend::Cuda>(&args, Default::default()),
        other => Err(format!(
            "backend {other} is not built in (features: wgpu, cuda)"
        )),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
