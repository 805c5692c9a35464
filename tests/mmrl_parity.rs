//! MMRL against an independent PyTorch implementation of the spec
//! (`tests/scripts/mmrl_reference.py`, itself checked against the official
//! code): hidden states, features, logits, loss terms and gradients, and the
//! reference Dassl checkpoint format. Fixtures: `tests/scripts/gen_mmrl_fixtures.py`.

mod common;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use common::*;
use mmrl::data::ClipTokenizer;
use mmrl::model::clip::loader::load_clip;
use mmrl::model::clip::{l2_normalize, Precision};
use mmrl::model::methods::mmrl::Mmrl;
use mmrl::model::methods::mmrl_io::{load_mmrl, save_mmrl_safetensors};
use mmrl::model::methods::{ClassPrompts, Method};
use mmrl::train::loss::MethodLoss;
use mmrl::train::mmrl_loss::{mmrl_loss, MmrlLossWeights};
use mmrl::train::zeroshot::{prompt, token_tensors};
use mmrl_model::ClipBackend;

const EXPECTED: &str = "expected.safetensors";
const WEIGHTS: MmrlLossWeights = MmrlLossWeights {
    alpha: 0.7,
    reg_weight: 0.5,
};

fn expected(key: &str) -> Vec<f32> {
    tensor_at(&mmrl_fixture(EXPECTED), key).0
}

fn config() -> serde_json::Value {
    let text = std::fs::read_to_string(mmrl_fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load<Bk: ClipBackend>(checkpoint: &str) -> Mmrl<Bk> {
    let device = Default::default();
    let clip = load_clip::<Bk>(&mmrl_fixture("tiny_clip.safetensors"), &device)
        .unwrap()
        .model;
    load_mmrl(&mmrl_fixture(checkpoint), clip, None, 0.7, &device).unwrap()
}

fn vec<Bk: ClipBackend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn assert_close(name: &str, ours: &[f32], key: &str, tol: f32) {
    assert_close_to(name, ours, &expected(key), tol);
}

struct Inputs<Bk: Backend> {
    images: Tensor<Bk, 4>,
    ids: Tensor<Bk, 2, Int>,
    eot: Tensor<Bk, 1, Int>,
    labels: Tensor<Bk, 1, Int>,
}

/// The inputs' token ids as the host-side class prompts `set_classes` takes.
fn class_prompts<Bk: ClipBackend>(x: &Inputs<Bk>) -> ClassPrompts {
    let [rows, seq] = x.ids.dims();
    let host = |t: Tensor<Bk, 1, Int>| t.into_data().convert::<i64>().to_vec::<i64>().unwrap();
    ClassPrompts {
        classes: (0..rows).map(|i| i.to_string()).collect(),
        ids: host(x.ids.clone().reshape([rows * seq])),
        seq,
        eot: host(x.eot.clone()),
        name_lens: vec![1; rows],
    }
}

fn inputs<Bk: ClipBackend>(trim: bool) -> Inputs<Bk> {
    let device = Default::default();
    let cfg = config();
    let tok = ClipTokenizer::from_file(&clip_fixture("tiny_hf/tokenizer.json")).unwrap();
    let prompts: Vec<String> = cfg["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| prompt(cfg["template"].as_str().unwrap(), c.as_str().unwrap()))
        .collect();
    let batch = tok.encode_batch(&prompts).unwrap();
    let ids: Vec<f32> = batch.ids.iter().map(|&v| v as f32).collect();
    assert_eq!(ids, expected("input_ids"), "token ids");
    let batch = if trim { batch.trimmed() } else { batch };
    let (ids, eot) = token_tensors::<Bk>(&batch, &device);
    let (pixels, shape) = tensor("expected.safetensors", "pixel_values");
    let images = Tensor::<Bk, 1>::from_floats(pixels.as_slice(), &device)
        .reshape([shape[0], shape[1], shape[2], shape[3]]);
    let labels: Vec<i64> = cfg["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let n = labels.len();
    let labels = Tensor::from_data(TensorData::new(labels, [n]), &device);
    Inputs {
        images,
        ids,
        eot,
        labels,
    }
}

#[test]
fn cached_lower_layers_match_the_reference_hidden_states() {
    let model = load::<B>("mmrl_params.safetensors");
    assert_eq!(model.rep_layers, vec![1, 2, 3]);
    let x = inputs::<B>(false);
    assert_close(
        "vision hidden before first injection",
        &vec(model.image_lower(x.images)),
        "vision_hidden_before_first_injection",
        1e-4,
    );
    assert_close(
        "text hidden before first injection",
        &vec(model.text_lower(x.ids)),
        "text_hidden_before_first_injection",
        1e-4,
    );
}

#[test]
fn features_logits_and_loss_match_the_reference() {
    let model = load::<B>("mmrl_params.safetensors");
    // Trimmed prompts give the same features (causal mask).
    for trim in [false, true] {
        let x = inputs::<B>(trim);
        let (image, text, logits) = model.forward(x.images.clone(), x.ids.clone(), x.eot.clone());
        assert_close(
            "class image features",
            &vec(l2_normalize(image.class.clone())),
            "class_image_features",
            1e-4,
        );
        assert_close(
            "rep image features",
            &vec(l2_normalize(image.rep.clone())),
            "rep_image_features",
            1e-4,
        );
        assert_close(
            "text features",
            &vec(l2_normalize(text.clone())),
            "text_features",
            1e-4,
        );
        assert_close(
            "class logits",
            &vec(logits.class.clone()),
            "class_logits",
            1e-4,
        );
        assert_close("rep logits", &vec(logits.rep.clone()), "rep_logits", 1e-4);
        assert_close(
            "fused logits",
            &vec(logits.fused(model.alpha)),
            "fused_logits",
            1e-4,
        );

        let zs_image = model.clip.encode_image(x.images.clone());
        let zs_text = model.clip.encode_text(x.ids.clone(), x.eot.clone());
        assert_close(
            "zero-shot image features",
            &vec(l2_normalize(zs_image.clone())),
            "zs_image_features",
            1e-4,
        );
        assert_close(
            "zero-shot text features",
            &vec(l2_normalize(zs_text.clone())),
            "zs_text_features",
            1e-4,
        );
        let loss = mmrl_loss(&logits, x.labels, &image, text, zs_image, zs_text, WEIGHTS);
        assert_close("loss ce_class", &vec(loss.ce_class), "loss_ce_class", 1e-4);
        assert_close("loss ce_rep", &vec(loss.ce_rep), "loss_ce_rep", 1e-4);
        assert_close(
            "loss reg_image",
            &vec(loss.reg_image),
            "loss_reg_image",
            1e-5,
        );
        assert_close("loss reg_text", &vec(loss.reg_text), "loss_reg_text", 1e-5);
        assert_close("loss total", &vec(loss.total), "loss_total", 1e-4);
    }
}

#[test]
fn gradients_match_the_reference_and_clip_stays_frozen() {
    gradients_match(Precision::F32);
}

/// `--precision bf16`: CLIP's blocks and token table in bf16, MMRL's
/// parameters, loss and gradients in f32, against the reference's f32 run.
#[test]
fn bf16_frozen_clip_gives_the_reference_loss_and_gradients_within_bf16_rounding() {
    if !runs_bf16() {
        return;
    }
    gradients_match(Precision::Bf16);
}

fn gradients_match(precision: Precision) {
    type AB = Autodiff<B>;
    let mut model = load::<AB>("mmrl_params.safetensors");
    let clip = model.clip.0.clone().with_precision(precision);
    model.clip = mmrl::model::Frozen::new(clip);
    let assert_close = |name: &str, ours: &[f32], key: &str, tol: f32| match precision {
        Precision::F32 => assert_close(name, ours, key, tol),
        _ => {
            let rel = if key.starts_with("grad") {
                BF16_GRAD_REL_TOL
            } else {
                BF16_REL_TOL
            };
            assert_close_rel(name, ours, &expected(key), rel);
        }
    };
    model.reg_weight = WEIGHTS.reg_weight;
    assert_eq!(model.alpha, WEIGHTS.alpha);
    let x = inputs::<AB>(true);
    // As the trainer runs it: the class set's frozen parts once, on the
    // inner backend (`set_classes`), then `Method::forward` (the lower image
    // layers once, shared by the zero-shot target and the injected path)
    // and MMRL's `MethodLoss`.
    let prompts = class_prompts(&x);
    let model = Mmrl::<AB>::from_inner(model.valid().set_classes(&prompts).unwrap());
    let output = Method::forward(&model, x.images.clone());
    let loss = MethodLoss::loss(&model, output, x.labels);
    let names = <Mmrl<AB> as MethodLoss<AB>>::TERMS;
    for (name, term) in names.iter().zip(loss.terms) {
        let tol = if name.starts_with("reg") { 1e-5 } else { 1e-4 };
        assert_close(
            &format!("loss {name}"),
            &vec(term),
            &format!("loss_{name}"),
            tol,
        );
    }
    assert_close("loss total", &vec(loss.total.clone()), "loss_total", 1e-4);
    let grads = loss.total.backward();
    let rl = &model.representation_learner;
    let g2 =
        |p: &burn::module::Param<Tensor<AB, 2>>| vec(p.val().grad(&grads).expect("has a gradient"));
    assert_close(
        "grad R",
        &g2(&rl.compound_rep_tokens),
        "grad.compound_rep_tokens",
        1e-4,
    );
    assert_close("grad proj_rep", &g2(&model.proj_rep), "grad.proj_rep", 1e-4);
    for (name, linears) in [
        ("r2vproj", &rl.compound_rep_tokens_r2vproj),
        ("r2tproj", &rl.compound_rep_tokens_r2tproj),
    ] {
        for (i, l) in linears.iter().enumerate() {
            // Ours is [in, out]; the reference's [out, in].
            let g = l
                .weight
                .val()
                .grad(&grads)
                .expect("has a gradient")
                .transpose();
            assert_close(
                &format!("grad {name}.{i}.weight"),
                &vec(g),
                &format!("grad.{name}.{i}.weight"),
                1e-4,
            );
            let b = l
                .bias
                .as_ref()
                .unwrap()
                .val()
                .grad(&grads)
                .expect("has a gradient");
            assert_close(
                &format!("grad {name}.{i}.bias"),
                &vec(b),
                &format!("grad.{name}.{i}.bias"),
                1e-4,
            );
        }
    }
    // Frozen CLIP: no gradient anywhere in it, and in the precision asked.
    let clip = &model.clip;
    assert_eq!(clip.precision(), precision);
    assert!(clip.visual_projection.weight.val().grad(&grads).is_none());
    assert!(clip.vision_model.encoder.layers[3]
        .mlp
        .fc1
        .weight
        .val()
        .grad(&grads)
        .is_none());
    assert!(clip
        .text_model
        .embeddings
        .token_embedding
        .weight
        .val()
        .grad(&grads)
        .is_none());
    assert_eq!(
        model.num_trainable_params(),
        3 * 16 + 2 * 3 * (16 * 64 + 64) + 64 * 32
    );
}

#[test]
fn dassl_checkpoint_loads_like_the_params_file_and_ours_round_trips() {
    let from_dassl = load::<B>("model.pth.tar-5");
    let from_params = load::<B>("mmrl_params.safetensors");
    let x = inputs::<B>(true);
    let a = vec(from_dassl
        .forward(x.images.clone(), x.ids.clone(), x.eot.clone())
        .2
        .fused(0.7));
    let b = vec(from_params
        .forward(x.images.clone(), x.ids.clone(), x.eot.clone())
        .2
        .fused(0.7));
    assert_eq!(a, b);
    let dir = std::env::temp_dir().join(format!("mmrl-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join("mmrl.safetensors");
    save_mmrl_safetensors(&from_dassl, &ours).unwrap();
    // Same names and layout as the reference file.
    let theirs = std::fs::read(mmrl_fixture("mmrl_params.safetensors")).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&theirs).unwrap();
    let mine = std::fs::read(&ours).unwrap();
    let mine = safetensors::SafeTensors::deserialize(&mine).unwrap();
    let mut names: Vec<String> = theirs.names().into_iter().map(str::to_string).collect();
    let mut my_names: Vec<String> = mine.names().into_iter().map(str::to_string).collect();
    names.sort();
    my_names.sort();
    assert_eq!(names, my_names);
    for n in &names {
        assert_eq!(
            theirs.tensor(n).unwrap().data(),
            mine.tensor(n).unwrap().data(),
            "{n}"
        );
    }
    let reloaded = {
        let device = Default::default();
        let clip = load_clip::<B>(&mmrl_fixture("tiny_clip.safetensors"), &device)
            .unwrap()
            .model;
        load_mmrl(&ours, clip, None, 0.7, &device).unwrap()
    };
    assert_eq!(
        vec(reloaded.forward(x.images, x.ids, x.eot).2.fused(0.7)),
        b
    );
}

#[test]
fn mismatched_checkpoints_are_refused() {
    let device = Default::default();
    let clip = || {
        load_clip::<B>(&mmrl_fixture("tiny_clip.safetensors"), &device)
            .unwrap()
            .model
    };
    // Three aligners but two layers named.
    let err = load_mmrl(
        &mmrl_fixture("mmrl_params.safetensors"),
        clip(),
        Some(vec![3, 4]),
        0.7,
        &device,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("3 layers"), "{err}");
    // A CLIP checkpoint is not an MMRL checkpoint.
    let err = load_mmrl(
        &mmrl_fixture("tiny_clip.safetensors"),
        clip(),
        None,
        0.7,
        &device,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("compound_rep_tokens"), "{err}");
}

/// Device memory in use, as the GPU's CubeCL runtime reports it (the bytes its
/// memory pools hand out, not what they reserve from the driver).
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
fn device_bytes_in_use() -> u64 {
    use burn::cubecl::Runtime;
    burn::cubecl::wgpu::WgpuRuntime::client(&Default::default())
        .memory_usage()
        .expect("the runtime reports its memory")
        .bytes_in_use
}
#[cfg(feature = "test-cuda")]
fn device_bytes_in_use() -> u64 {
    use cubecl::Runtime;
    cubecl::cuda::CudaRuntime::client(&Default::default())
        .memory_usage()
        .expect("the runtime reports its memory")
        .bytes_in_use
}

/// The backend `mmrl train` runs on the GPU: without Burn's fusion layer.
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type TrainB = mmrl::backend::WgpuTrain;
#[cfg(feature = "test-cuda")]
type TrainB = mmrl::backend::CudaTrain;

/// 50 training steps (forward, loss, backward, AdamW) on the GPU backend,
/// fused as inference runs it and unfused as `mmrl train` runs it
/// (`backend::WgpuTrain`, `backend::CudaTrain`): the memory in use after step
/// 50 is what it was after step 10 (no graph, gradient or optimiser state is
/// kept from one step to the next).
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
#[test]
fn device_memory_stays_flat_over_50_training_steps() {
    memory_stays_flat::<B>("fused");
    memory_stays_flat::<TrainB>("unfused");
}

#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn memory_stays_flat<Bk: ClipBackend>(which: &str) {
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    let device = Default::default();
    let x = inputs::<Autodiff<Bk>>(true);
    let prompts = class_prompts(&x);
    let inner = load::<Bk>("mmrl_params.safetensors")
        .set_classes(&prompts)
        .unwrap();
    let mut model: Mmrl<Autodiff<Bk>> = mmrl::train::step::trainable(inner);
    let mut optim = AdamWConfig::new().init();
    let mut usage = Vec::new();
    let mut losses = Vec::new();
    for _ in 0..50 {
        let output = Method::forward(&model, x.images.clone());
        let loss = MethodLoss::loss(&model, output, x.labels.clone());
        losses.push(loss.total.clone().into_scalar().elem::<f32>());
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        model = optim.step(1e-3, model, grads);
        let _ = Bk::sync(&device);
        usage.push(device_bytes_in_use());
    }
    eprintln!("{which}: bytes in use after each step: {usage:?}");
    assert!(
        losses[49] < losses[0],
        "{which}: training does not train: {losses:?}"
    );
    let (early, late) = (usage[9], usage[49]);
    assert!(
        late <= early + early / 20 + (1 << 20),
        "{which}: device memory grows: {early} B after step 10, {late} B after step 50"
    );
}
