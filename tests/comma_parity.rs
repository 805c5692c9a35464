//! COMMA against the authors' code (hulianyuyy/COMMA `CustomCLIP` and the
//! loss of `COMMA.forward_backward`, its prompt learner in the reference's
//! fp16) on a tiny CLIP: the generated vision prompts, logits, both loss
//! terms and the gradient of every trained tensor, from the reference's own
//! Dassl checkpoint; `mmrl predict` on that checkpoint. Fixtures:
//! `tests/scripts/gen_comma_fixtures.py`.

mod common;

use mmrl_model::ClipBackend;
use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use common::*;
use mmrl::data::ClipTokenizer;
use mmrl::model::clip::loader::load_clip;
use mmrl::model::clip::Clip;
use mmrl::model::methods::comma::{Comma, CommaConfig};
use mmrl::model::methods::{ClassPrompts, Classes, Method};
use mmrl::train::loss::MethodLoss;

fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/comma").join(rel)
}

fn expected(key: &str) -> (Vec<f32>, Vec<usize>) {
    tensor_at(&fixture("expected.safetensors"), key)
}

fn json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn clip<Bk: ClipBackend>() -> Clip<Bk> {
    load_clip::<Bk>(&fixture("tiny_clip.safetensors"), &Default::default())
        .unwrap()
        .model
}

fn config() -> CommaConfig {
    CommaConfig {
        prompt_depth: 3,
        ..CommaConfig::default()
    }
}

/// The learned prompts and the KP target's template prompts, tokenised by
/// our tokenizer, checked against the reference's ids.
fn prompts() -> ClassPrompts {
    let j = json();
    let classes = strings(&j["classes"]);
    let texts = Comma::<B>::prompt_texts(&config(), &classes, j["template"].as_str().unwrap());
    assert_eq!(texts[..classes.len()], strings(&j["prompts"])[..]);
    let tok = ClipTokenizer::from_file(&clip_fixture("tiny_hf/tokenizer.json")).unwrap();
    let batch = tok.encode_batch(&texts).unwrap();
    let ids: Vec<f32> = batch.ids.iter().map(|&v| v as f32).collect();
    let half = ids.len() / 2;
    assert_eq!(ids[..half], expected("input_ids").0[..], "prompt token ids");
    assert_eq!(
        ids[half..],
        expected("template_ids").0[..],
        "template token ids"
    );
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

/// The tensors COMMA trains (reference names).
const TRAINED: [&str; 4] = [
    "prompt_learner.ctx",
    "prompt_learner.proj.weight",
    "prompt_learner.proj.bias",
    "prompt_learner.compound_prompts_text",
];

fn checkpoint() -> PathBuf {
    fixture("MultiModalPromptLearner/model.pth.tar-2")
}

fn load<Bk: ClipBackend>() -> Comma<Bk> {
    Comma::<Bk>::load(&config(), clip(), &checkpoint(), &Default::default())
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
fn the_reference_checkpoint_scores_as_the_reference() {
    let model = load::<B>();
    assert_eq!(model.depth(), 3);
    assert_eq!(model.n_ctx(), 2);
    let counts = &json()["trainable_params"];
    assert_eq!(
        model.num_trainable_params() as u64,
        counts["receiving_gradients"].as_u64().unwrap()
    );
    assert_eq!(
        model.num_declared_params() as u64,
        counts["declared"].as_u64().unwrap()
    );
    // The trained tensors as read from the fp16 checkpoint.
    let state: BTreeMap<String, Vec<f32>> = Method::<B>::state(&model)
        .into_iter()
        .map(|(k, _, v)| (k, v))
        .collect();
    for key in TRAINED {
        check(key, &state[key], &format!("params.{key}"), 0.0);
    }
    // The generators (the base one in fp16) from the loaded tensors.
    check(
        "generated vision prompts",
        &data(model.vision_prompts().unwrap()),
        "vision_prompts",
        1e-5,
    );
    let logits = model
        .predict(images(), &model.text(), Classes::Unseen)
        .logits;
    check("logits", &data(logits), "logits", 1e-4);
}

/// Both loss terms and the gradient of every trained tensor (within the
/// fp16 precision the reference computes them in); the generators get none
/// (the reference's `.data` cut).
#[test]
fn loss_terms_and_gradients_match_the_reference() {
    type AB = Autodiff<B>;
    let model = load::<AB>();
    let output = model.forward(images());
    check(
        "logits (training forward)",
        &data(output.logits.clone()),
        "logits",
        1e-4,
    );
    let loss = model.loss(output, labels());
    check("loss ce", &data(loss.terms[0].clone()), "loss_ce", 1e-5);
    check("loss kp", &data(loss.terms[1].clone()), "loss_kp", 1e-5);
    check("loss total", &data(loss.total.clone()), "loss_total", 1e-5);
    let grads = loss.total.backward();
    assert!(model.clip.logit_scale.val().grad(&grads).is_none());
    let grads = GradientsParams::from_grads(grads, &model);
    let gen = &model.prompt_learner.compound_prompt_projections_image_base;
    assert!(
        grads.get::<B, 2>(gen.fc.weight.id).is_none(),
        "the generators are never trained"
    );
    let grad_model = model.clone().map(&mut GradsOf { grads: &grads });
    let ours: BTreeMap<String, Vec<f32>> = Method::<AB>::state(&grad_model)
        .into_iter()
        .map(|(k, _, v)| (k, v))
        .collect();
    for key in TRAINED {
        // The reference computes these gradients through its fp16 casts
        // (ctx and proj are fp16 tensors; each class's gradient of a deep
        // text prompt passes `.half()`): they hold fp16 roundings our f32
        // backward does not make. Allowed: one fp16 ulp at the tensor's
        // largest gradient (2⁻¹⁰ of it). Measured: ctx 9.1e-5 of 2.3e-4,
        // proj 8.8e-5 of 3.1e-4, deep text prompts 9.6e-4 of 5.1e-3.
        let want = expected(&format!("grad.{key}")).0;
        let largest = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        check(
            &format!("grad {key}"),
            &ours[key],
            &format!("grad.{key}"),
            largest * 2f32.powi(-10),
        );
    }
}

/// Our checkpoint holds the reference's names and reloads to the same
/// logits.
#[test]
fn our_checkpoint_round_trips() {
    let model = load::<B>();
    let dir = std::env::temp_dir().join(format!("mmrl-comma-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("comma.safetensors");
    mmrl::model::methods::checkpoint::save_f32_safetensors(&path, Method::<B>::state(&model), None)
        .unwrap();
    let again = Comma::<B>::load(&config(), clip(), &path, &Default::default())
        .unwrap()
        .set_classes(&prompts())
        .unwrap();
    let a = data(model.predict(images(), &model.text(), Classes::Seen).logits);
    let b = data(again.predict(images(), &again.text(), Classes::Seen).logits);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mmrl predict` on the reference's own checkpoint reproduces its logits.
/// The fixture's pixels were cropped as transformers does; an OpenAI-named
/// CLIP file is cropped as OpenAI does, which moves gray.png (row 0) by a
/// row, so rows 1–5 are compared.
#[test]
fn predict_on_the_reference_checkpoint_gives_its_logits() {
    let clip = fixture("tiny_clip.safetensors").display().to_string();
    let tok = clip_fixture("tiny_hf/tokenizer.json").display().to_string();
    let j = json();
    let classes = strings(&j["classes"]).join(",");
    let ckpt = checkpoint().display().to_string();
    let images = clip_image_paths();
    let mut args = vec![
        "predict",
        "--method",
        "comma",
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
        j["template"].as_str().unwrap(),
        "--json",
        "--images",
    ];
    args.extend(images.iter().map(String::as_str));
    let out = mmrl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let n = j["trainable_params"]["receiving_gradients"]
        .as_u64()
        .unwrap();
    assert!(
        stderr.contains(&format!("{n} trainable parameters")),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (want, shape) = expected("logits");
    let c = shape[1];
    for row in 1..6 {
        let got: Vec<f32> = json["results"][row]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let d = max_abs_diff(&got, &want[row * c..(row + 1) * c]);
        assert_within(&format!("predict row {row}"), d, 1e-4);
    }
}

/// The reference checkpoint's `token_suffix` is a view (the prompts'
/// fp16 token embeddings from position 1 + n_ctx on) saved with its whole
/// storage: read through its strides and offset, it equals those
/// embeddings.
#[test]
fn strided_tensors_of_a_dassl_checkpoint_read_through_their_layout() {
    let tensors = mmrl::model::methods::checkpoint::read_state_dict(&checkpoint()).unwrap();
    let suffix = &tensors["prompt_learner.token_suffix"];
    let [classes, rest, width] = suffix.shape.to_vec()[..] else {
        panic!("token_suffix has shape {:?}", suffix.shape)
    };
    let got: Vec<f32> = suffix.to_data().unwrap().convert::<f32>().to_vec().unwrap();
    let (table, shape) = tensor_at(&fixture("tiny_clip.safetensors"), "token_embedding.weight");
    assert_eq!(shape[1], width);
    let ids = expected("input_ids").0;
    let seq = ids.len() / classes;
    assert_eq!(rest, seq - 3);
    let mut want = Vec::new();
    for c in 0..classes {
        for t in 3..seq {
            let id = ids[c * seq + t] as usize;
            want.extend_from_slice(&table[id * width..(id + 1) * width]);
        }
    }
    let want = mmrl::model::methods::comma::round_f16(Tensor::<B, 1>::from_floats(
        want.as_slice(),
        &Default::default(),
    ));
    assert_eq!(got, data(want));
}
