//! The Multi-Modal Adapter against the authors' code (dqmis/clip-mma
//! `CLIPTransformerAdapterText`, master and the cross-only branch) on the
//! tiny CLIP: logits, loss and the gradient of every adapter tensor, from
//! the reference's own `model_best.pth.tar`; one Adam step as the
//! reference's optimiser takes it; our checkpoint round trip; `mmrl
//! predict` on a reference checkpoint. Fixtures:
//! `tests/scripts/gen_mm_adapter_fixtures.py`.

mod common;

use mmrl_model::ClipBackend;
use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use common::*;
use mmrl::data::ClipTokenizer;
use mmrl::model::clip::loader::load_clip;
use mmrl::model::clip::Clip;
use mmrl::model::methods::mm_adapter::{MmAdapter, MmAdapterConfig, Variant};
use mmrl::model::methods::{ClassPrompts, Classes, Method};
use mmrl::train::loss::MethodLoss;

const VARIANTS: [(&str, Variant); 2] = [
    ("master", Variant::Master),
    ("cross-only", Variant::CrossOnly),
];

fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/mm_adapter").join(rel)
}

fn expected(key: &str) -> (Vec<f32>, Vec<usize>) {
    tensor_at(&fixture("expected.safetensors"), key)
}

fn json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn clip<Bk: ClipBackend>() -> Clip<Bk> {
    load_clip::<Bk>(
        &clip_fixture("tiny_openai.safetensors"),
        &Default::default(),
    )
    .unwrap()
    .model
}

/// The template filled with each class, tokenised by our tokenizer, and
/// checked against the reference's ids.
fn prompts() -> ClassPrompts {
    let j = json();
    let classes = strings(&j["classes"]);
    let texts = MmAdapter::<B>::prompt_texts(
        &MmAdapterConfig::default(),
        &classes,
        j["template"].as_str().unwrap(),
    );
    assert_eq!(texts, strings(&j["prompts"]));
    let tok = ClipTokenizer::from_file(&clip_fixture("tiny_hf/tokenizer.json")).unwrap();
    let batch = tok.encode_batch(&texts).unwrap();
    let ids: Vec<f32> = batch.ids.iter().map(|&v| v as f32).collect();
    assert_eq!(ids, expected("input_ids").0, "token ids");
    let batch = batch.trimmed();
    ClassPrompts {
        classes,
        ids: batch.ids,
        seq: batch.context,
        eot: batch.eot,
        name_lens: Vec::new(),
    }
}

fn images<Bk: ClipBackend>() -> Tensor<Bk, 4> {
    images_at(&fixture("expected.safetensors"))
}

fn labels<Bk: ClipBackend>() -> Tensor<Bk, 1, Int> {
    labels_at(&fixture("expected.safetensors"))
}

fn load<Bk: ClipBackend>(variant: &str) -> MmAdapter<Bk> {
    let path = fixture(&format!("{variant}/model_best.pth.tar"));
    MmAdapter::<Bk>::load(
        &MmAdapterConfig::default(),
        clip(),
        &path,
        &Default::default(),
    )
    .unwrap()
    .set_classes(&prompts())
    .unwrap()
}

fn data<Bk: ClipBackend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn check(name: &str, ours: &[f32], key: &str, tol: f32) {
    assert_close_to(name, ours, &expected(key).0, tol);
}

#[test]
fn reference_checkpoints_score_as_the_reference() {
    for (name, variant) in VARIANTS {
        let model = load::<B>(name);
        assert_eq!(model.config().variant, variant);
        let n = json()["variants"][name]["trainable_params"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(model.num_trainable_params(), n, "{name}");
        let logits = model
            .predict(images(), &model.text(), Classes::Unseen)
            .logits;
        check(
            &format!("{name} logits"),
            &data(logits),
            &format!("{name}.logits"),
            1e-4,
        );
    }
}

/// Loss, every adapter tensor's gradient, and one step of the reference's
/// optimiser (Adam, L2 weight decay) as `mmrl train` builds it.
#[test]
fn loss_gradients_and_one_adam_step_match_the_reference() {
    type AB = Autodiff<B>;
    for (name, _) in VARIANTS {
        let model = load::<AB>(name);
        let output = model.forward(images());
        let loss = model.loss(output, labels());
        check(
            &format!("{name} loss"),
            &data(loss.total.clone()),
            &format!("{name}.loss"),
            1e-5,
        );
        let grads = loss.total.backward();
        assert!(model.clip.logit_scale.val().grad(&grads).is_none());
        assert!(model
            .clip
            .visual_projection
            .weight
            .val()
            .grad(&grads)
            .is_none());
        // Gradients under the reference names: our state with the gradient
        // in each tensor's place.
        let grads = GradientsParams::from_grads(grads, &model);
        let grad_model = model.clone().map(&mut GradsOf { grads: &grads });
        let ours: BTreeMap<String, Vec<f32>> = Method::<AB>::state(&grad_model)
            .into_iter()
            .map(|(k, _, v)| (k, v))
            .collect();
        assert_eq!(
            ours.len(),
            json()["variants"][name]["adapter_keys"]
                .as_array()
                .unwrap()
                .len()
        );
        for (key, values) in &ours {
            check(
                &format!("{name} grad {key}"),
                values,
                &format!("{name}.grad.{key}"),
                1e-5,
            );
        }
        let cfg = mmrl::train::config::TrainConfig {
            optimizer: mmrl::train::config::OptimizerKind::Adam,
            lr: 0.01,
            weight_decay: 1e-4,
            ..Default::default()
        };
        // Adam's first step is lr·g/(|g| + eps), g = grad + weight_decay·p:
        // where |g| is near eps, a gradient difference of 1e-8 moves it by
        // up to lr/4. Compared where the reference's |g| ≥ 1e-5 (there
        // d step/d g ≤ 1).
        let initial: BTreeMap<String, Vec<f32>> = Method::<AB>::state(&model)
            .into_iter()
            .map(|(k, _, v)| (k, v))
            .collect();
        let mut optim = mmrl::train::fit::adam::<AB, MmAdapter<AB>>(&cfg);
        let stepped = optim.step(cfg.lr, model, grads);
        let (mut compared, mut total) = (0, 0);
        for (key, _, values) in Method::<AB>::state(&stepped) {
            let grad = expected(&format!("{name}.grad.{key}")).0;
            let want = expected(&format!("{name}.step.{key}")).0;
            let p = &initial[&key];
            let keep: Vec<usize> = (0..grad.len())
                .filter(|&i| (grad[i] + 1e-4 * p[i]).abs() >= 1e-5)
                .collect();
            let pick = |v: &[f32]| keep.iter().map(|&i| v[i]).collect::<Vec<f32>>();
            let d = max_abs_diff(&pick(&values), &pick(&want));
            eprintln!(
                "{name} step {key}: max abs diff {d:e} over {}/{}",
                keep.len(),
                grad.len()
            );
            assert_within(&format!("{name} step {key}"), d, 1e-7);
            (compared, total) = (compared + keep.len(), total + grad.len());
        }
        assert!(
            compared * 2 >= total,
            "{compared} of {total} entries compared"
        );
    }
}

/// `mmrl predict` on the reference's own checkpoint reproduces its logits.
/// The fixture's pixels were cropped as transformers does; an OpenAI-named
/// CLIP file is cropped as OpenAI does, which moves gray.png (row 0) by a
/// row, so rows 1–5 are compared.
#[test]
fn predict_on_a_reference_checkpoint_gives_its_logits() {
    let clip = clip_fixture("tiny_openai.safetensors")
        .display()
        .to_string();
    let tok = clip_fixture("tiny_hf/tokenizer.json").display().to_string();
    let classes = strings(&json()["classes"]).join(",");
    let images = clip_image_paths();
    for (name, _) in VARIANTS {
        let ckpt = fixture(&format!("{name}/model_best.pth.tar"))
            .display()
            .to_string();
        let mut args = vec![
            "predict",
            "--method",
            "mm-adapter",
            "--device",
            DEVICE,
            "--clip",
            &clip,
            "--checkpoint",
            &ckpt,
            "--tokenizer",
            &tok,
            "--classes",
            &classes,
            "--template",
            "a photo of a {}.",
            "--json",
            "--images",
        ];
        args.extend(images.iter().map(String::as_str));
        let out = mmrl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let n = json()["variants"][name]["trainable_params"]
            .as_u64()
            .unwrap();
        assert!(
            stderr.contains(&format!("{n} trainable parameters")),
            "{stderr}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (want, shape) = expected(&format!("{name}.logits"));
        let c = shape[1];
        for row in 1..6 {
            let got: Vec<f32> = json["results"][row]["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let d = max_abs_diff(&got, &want[row * c..(row + 1) * c]);
            assert_within(&format!("{name} predict row {row}"), d, 1e-4);
        }
    }
}
