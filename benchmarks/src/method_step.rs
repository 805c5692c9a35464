//! One method's training step and scoring pass at ViT-B/16 shapes (random
//! weights), as `mmrl train` runs them: the method built from its shipped
//! base-to-novel recipe, the class prompts tokenised as the trainer
//! tokenises them, the trainer's step (`Trainee`: forward, the method's
//! loss, backward) followed by an AdamW update, and the scoring pass
//! (`Method::predict` on the inner backend, the class set's text side
//! computed once). Every method gets the same batch and the same classes.
//!
//! The Multi-Modal Adapter's recipe trains without augmentation, so the
//! trainer hands it fixed images and it caches CLIP's features: its step is
//! timed once the batch's features are cached (from the second epoch on);
//! the first epoch costs a scoring pass per image on top.
//!
//! Peak memory is the process's resident-set high-water mark (`VmHWM`),
//! reset before each phase where the kernel allows it (`/proc/self/clear_refs`),
//! so each phase's figure includes what is resident throughout (CLIP's
//! weights) plus what the phase itself adds. One method per process.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, Optimizer};
use burn::prelude::*;
use burn::train::TrainStep;
use mmrl_data::loader::ImageBatch;
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::{Clip, ClipConfig};
use mmrl_model::methods::{Classes, Method};
use mmrl_train::config::{recipe_for, Protocol, TrainConfig};
use mmrl_train::loss::MethodLoss;
use mmrl_train::registry::{self, TrainVisitor};
use mmrl_train::step::{trainable, Trainee};
use mmrl_train::zeroshot::class_prompts;

use super::{time, Args, CLASSES};
use mmrl_model::ClipAutodiffBackend;

/// Resets the resident-set high-water mark; false where the kernel refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The resident-set high-water mark in MiB (`None` off Linux).
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run<B: ClipAutodiffBackend>(args: &Args, device: B::Device) -> Result<(), String> {
    registry::train_with::<B, _>(&args.method, Bench::<B> { args, device })
        .map_err(|e| e.to_string())?
}

struct Bench<'a, B: ClipAutodiffBackend> {
    args: &'a Args,
    device: B::Device,
}

impl<B: ClipAutodiffBackend> TrainVisitor<B> for Bench<'_, B> {
    type Out = Result<(), String>;

    fn visit<M>(self) -> Result<(), String>
    where
        M: MethodLoss<B> + AutodiffModule<B>,
        M::InnerModule: MethodLoss<B::InnerBackend, Config = M::Config>,
    {
        type Inner<M, B> = <M as AutodiffModule<B>>::InnerModule;
        let (args, device) = (self.args, &self.device);
        let name = <M as Method<B>>::NAME;
        let (file, text) =
            recipe_for(name, Protocol::Base2novel, None, 16).map_err(|e| e.to_string())?;
        let cfg = TrainConfig::from_toml(text, Path::new(file)).map_err(|e| e.to_string())?;
        let config: M::Config = cfg
            .method_config(name, "imagenet")
            .map_err(|e| e.to_string())?;
        let clip_config =
            ClipConfig::preset(&args.preset).ok_or(format!("unknown preset {}", args.preset))?;
        B::seed(device, 0);
        mmrl_model::init::seed(0);
        let clip: Clip<B::InnerBackend> = crate::frozen_clip(&clip_config, args.precision, device)?;
        let size = clip_config.vision_config.image_size;
        let names: Vec<&str> = CLASSES.split(' ').collect();
        let classes: Vec<String> = (0..args.prompts)
            .map(|i| match i / names.len() {
                0 => names[i].to_string(),
                k => format!("{} {k}", names[i % names.len()]),
            })
            .collect();
        let tokenizer = ClipTokenizer::bundled();
        let prompts = class_prompts::<B::InnerBackend, Inner<M, B>, _>(
            &config,
            &tokenizer,
            &clip,
            &classes,
            "a photo of a {}.",
        )
        .map_err(|e| e.to_string())?;
        let inner =
            Inner::<M, B>::init(&config, clip, &prompts, device).map_err(|e| e.to_string())?;
        let trained = inner.num_trainable_params();
        let images = Tensor::<B::InnerBackend, 4>::random(
            [args.batch, 3, size, size],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        );
        let labels: Vec<i64> = (0..args.batch).map(|i| (i % args.prompts) as i64).collect();

        let resettable = reset_peak();
        let text = inner.text();
        let (predict_s, predict_min_s) = time(args.iters, || {
            let logits = inner.predict(images.clone(), &text, Classes::Seen).logits;
            let _ = logits.into_data();
        });
        let predict_peak = peak_mib();
        drop(text);

        let (mut step, mut step_min, mut step_peak) = (None, None, None);
        if trained > 0 {
            let fixed = !cfg.augment;
            let mut trainee = Some(Trainee::<B, M>::new(trainable(inner)).fixed_images(fixed));
            let batch = ImageBatch {
                images: Tensor::<B, 4>::from_inner(images),
                labels: Tensor::<B, 1, Int>::from_data(
                    TensorData::new(labels, [args.batch]),
                    device,
                ),
                indices: (0..args.batch).collect(),
            };
            let mut optim = AdamWConfig::new().with_weight_decay(5e-4).init();
            reset_peak();
            let (median, min) = time(args.iters, || {
                let t = trainee
                    .take()
                    .expect("the trainee is put back after each step");
                let out = TrainStep::step(&t, batch.clone());
                let _ = out.item.loss.into_data();
                trainee = Some(optim.step(1e-3, t, out.grads));
                let _ = B::sync(device);
            });
            (step, step_min, step_peak) = (Some(median), Some(min), peak_mib());
        }
        let out = serde_json::json!({
            "framework": "burn",
            "backend": args.backend,
            "precision": args.precision.name(),
            "model": args.preset,
            "what": "method-step",
            "method": name,
            "batch": args.batch,
            "classes": args.prompts,
            "trainable_params": trained,
            "features_cached": !cfg.augment,
            "train_step_s": step,
            "train_step_min_s": step_min,
            "train_images_per_s": step.map(|s| args.batch as f64 / s),
            "train_peak_mib": step_peak,
            "predict_s": predict_s,
            "predict_min_s": predict_min_s,
            "predict_images_per_s": args.batch as f64 / predict_s,
            "predict_peak_mib": predict_peak,
            "peak_reset_per_phase": resettable,
        });
        println!("{out}");
        Ok(())
    }
}
