//! One MMRL training step (forward, loss, backward) at ViT-B/16 shapes, two
//! ways in the same run:
//! - `separate`: the frozen zero-shot image target through CLIP's whole
//!   image tower, and the lower layers once more for the injected path (how
//!   the trainer ran before the method interface);
//! - `shared`: the trainer's step now: the lower layers run once and feed
//!   both (`Method::forward`).
//!
//! The two are timed alternately (after two warm-up rounds), so that drift
//! in the machine's speed falls on both alike.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::train::TrainStep;
use mmrl_data::loader::ImageBatch;
use mmrl_model::clip::{Clip, ClipConfig};
use mmrl_model::methods::mmrl::{Mmrl, MmrlConfig};
use mmrl_model::methods::{ClassPrompts, Method};
use mmrl_train::mmrl_loss::{mmrl_loss, MmrlLossWeights};
use mmrl_train::step::Trainee;

use std::time::Instant;

use super::{median_min, Args};
use mmrl_model::ClipAutodiffBackend;

/// Synthetic prompts: `[SOS, 8 tokens, EOT]` per class.
fn prompts(classes: usize) -> ClassPrompts {
    let seq = 10;
    let mut ids = Vec::with_capacity(classes * seq);
    for c in 0..classes {
        ids.push(49406);
        ids.extend((0..8).map(|k| 400 + ((c * 8 + k) % 30000) as i64));
        ids.push(49407);
    }
    ClassPrompts {
        classes: (0..classes).map(|c| format!("class {c}")).collect(),
        ids,
        seq,
        eot: vec![(seq - 1) as i64; classes],
        name_lens: vec![2; classes],
    }
}

pub fn run<B: ClipAutodiffBackend>(args: &Args, device: B::Device) -> Result<(), String> {
    let config =
        ClipConfig::preset(&args.preset).ok_or(format!("unknown preset {}", args.preset))?;
    B::seed(&device, 0);
    mmrl_model::init::seed(0);
    let clip: Clip<B::InnerBackend> = crate::frozen_clip(&config, args.precision, &device)?;
    let size = config.vision_config.image_size;
    let prompts = prompts(args.prompts);
    let inner = <Mmrl<B::InnerBackend> as Method<B::InnerBackend>>::init(
        &MmrlConfig::default(),
        clip,
        &prompts,
        &device,
    )
    .map_err(|e| e.to_string())?;
    let model: Mmrl<B> = mmrl_train::step::trainable(inner);
    let trainee = Trainee::<B, Mmrl<B>>::new(model.clone());
    let images = Tensor::<B, 4>::random(
        [args.batch, 3, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let labels = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..args.batch)
                .map(|i| (i % args.prompts) as i64)
                .collect::<Vec<_>>(),
            [args.batch],
        ),
        &device,
    );
    let batch = ImageBatch {
        images: images.clone(),
        labels: labels.clone(),
        indices: (0..args.batch).collect(),
    };
    let weights = MmrlLossWeights {
        alpha: model.alpha,
        reg_weight: model.reg_weight,
    };
    let set = model.classes.0.clone().expect("classes set");
    let separate = || {
        let clip_inner: Clip<B::InnerBackend> = model.clip.0.valid();
        let zs_image = Tensor::<B, 2>::from_inner(clip_inner.encode_image(images.clone().inner()));
        let lower = model.image_lower_frozen(images.clone());
        let image = model.image_features(lower);
        let text = model.text_features(set.lower.clone(), set.eot.clone());
        let logits = model.logits(&image, text.clone());
        let loss = mmrl_loss(
            &logits,
            labels.clone(),
            &image,
            text,
            zs_image,
            set.zs_text.clone(),
            weights,
        );
        let grads = loss.total.backward();
        let _ = model.proj_rep.grad(&grads).map(|g| g.into_data());
        let _ = B::sync(&device);
    };
    // A GPU backend queues its kernels: `sync` waits for the backward pass too.
    let shared = || {
        let out = TrainStep::step(&trainee, batch.clone());
        let _ = out.item.loss.into_data();
        let _ = B::sync(&device);
        let _ = out.grads;
    };
    // Warm-up, then the two ways alternately, so that drift in the
    // machine's speed falls on both alike.
    for _ in 0..2 {
        separate();
        shared();
    }
    let (mut t_sep, mut t_shared) = (Vec::new(), Vec::new());
    for _ in 0..args.iters {
        let t = Instant::now();
        separate();
        t_sep.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        shared();
        t_shared.push(t.elapsed().as_secs_f64());
    }
    let (separate, separate_min) = median_min(t_sep);
    let (shared, shared_min) = median_min(t_shared);
    for (how, median, min) in [
        ("separate", separate, separate_min),
        ("shared", shared, shared_min),
    ] {
        let out = serde_json::json!({
            "framework": "burn",
            "backend": args.backend,
            "precision": args.precision.name(),
            "model": args.preset,
            "what": "mmrl-step",
            "frozen_prefix": how,
            "batch": args.batch,
            "classes": args.prompts,
            "step_s": median,
            "step_min_s": min,
            "images_per_s": args.batch as f64 / median,
        });
        println!("{out}");
    }
    Ok(())
}
