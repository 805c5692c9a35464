//! The tensor-op patterns the methods use, on the GPU backend against the
//! CPU backend in the same process: which op a GPU backend gets wrong, when a
//! parity test fails there. Built only with `--features test-wgpu|test-cuda`.
//!
//! Every case runs on three backends: the CPU (flex), the GPU backend as
//! `mmrl` runs it (`common::B`, fused), and the same GPU runtime without
//! Burn's fusion layer (`Raw`). Each prints its largest absolute difference
//! from the CPU and the test fails when any exceeds `TOL`.
#![cfg(any(feature = "test-wgpu", feature = "test-cuda"))]

mod common;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Int, TensorData};
use mmrl_model::ClipBackend;

type Cpu = mmrl::backend::Cpu;
#[cfg(feature = "test-cuda")]
type Raw = mmrl::backend::CudaTrain;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type Raw = mmrl::backend::WgpuTrain;

/// Largest difference relative to the largest CPU value: f32 reductions in
/// another order, and TF32 matmuls on CUDA (10-bit mantissa, ~1e-3
/// relative, more where a softmax saturates); a broken kernel differs by
/// O(1).
const TOL: f32 = 2e-2;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn t<X: ClipBackend, const D: usize>(shape: [usize; D], seed: u64, d: &X::Device) -> Tensor<X, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), d)
}

/// The largest absolute difference, relative to the largest `a` value.
fn max_diff(a: &TensorData, b: &TensorData) -> f32 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    let a = a.to_vec::<f32>().unwrap();
    let b = b.to_vec::<f32>().unwrap();
    let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
        / scale
}

/// Runs `$f::<X>(&device)` on the CPU, `common::B` and `Raw`, prints both
/// differences and records a failure.
macro_rules! check {
    ($fails:ident, $name:expr, $f:ident) => {{
        let cpu = $f::<Cpu>(&Default::default());
        let fused = max_diff(&cpu, &$f::<common::B>(&Default::default()));
        let raw = max_diff(&cpu, &$f::<Raw>(&Default::default()));
        println!(
            "{:<44} relative diff: fused {fused:<12.3e} unfused {raw:.3e}",
            $name
        );
        if fused > TOL || raw > TOL {
            $fails.push(format!("{}: fused {fused:e}, unfused {raw:e}", $name));
        }
    }};
}

const SEQ: usize = 13; // odd, as a trimmed prompt
const W: usize = 64;
const C: usize = 5;

/// CoOp's prompt: SOS, the shared context expanded over the classes, the rest.
fn coop_prompt<X: ClipBackend>(d: &X::Device) -> TensorData {
    let emb = t::<X, 3>([C, SEQ, W], 1, d);
    let ctx = t::<X, 2>([4, W], 2, d);
    let head = emb.clone().narrow(1, 0, 1);
    let tail = emb.narrow(1, 5, SEQ - 5);
    let ctx = ctx.unsqueeze_dim::<3>(0).expand([C, 4, W]);
    Tensor::cat(vec![head, ctx, tail], 1).into_data()
}

/// The same with the context repeated instead of expanded.
fn coop_prompt_repeat<X: ClipBackend>(d: &X::Device) -> TensorData {
    let emb = t::<X, 3>([C, SEQ, W], 1, d);
    let ctx = t::<X, 2>([4, W], 2, d);
    let head = emb.clone().narrow(1, 0, 1);
    let tail = emb.narrow(1, 5, SEQ - 5);
    let ctx = ctx.unsqueeze_dim::<3>(0).repeat_dim(0, C);
    Tensor::cat(vec![head, ctx, tail], 1).into_data()
}

/// Views only: narrow + cat, no expand.
fn narrow_cat<X: ClipBackend>(d: &X::Device) -> TensorData {
    let emb = t::<X, 3>([C, SEQ, W], 1, d);
    let a = emb.clone().narrow(1, 0, 1);
    let b = emb.clone().narrow(1, 3, 4);
    let c = emb.narrow(1, 7, SEQ - 7);
    Tensor::cat(vec![a, b, c], 1).into_data()
}

/// An expanded tensor alone, materialised by an add.
fn expand_add<X: ClipBackend>(d: &X::Device) -> TensorData {
    let ctx = t::<X, 2>([4, W], 2, d)
        .unsqueeze_dim::<3>(0)
        .expand([C, 4, W]);
    (ctx + t::<X, 3>([C, 4, W], 3, d)).into_data()
}

/// CLIP's positions cut to the prompt length, added over the batch.
fn positions<X: ClipBackend>(d: &X::Device) -> TensorData {
    let pos = t::<X, 2>([77, W], 4, d).narrow(0, 0, SEQ);
    (t::<X, 3>([C, SEQ, W], 5, d) + pos.unsqueeze_dim(0)).into_data()
}

/// CLIP's attention core with the causal mask on an odd length.
fn attention<X: ClipBackend>(d: &X::Device) -> TensorData {
    let (heads, hd) = (4, W / 4);
    let x = t::<X, 2>([C * SEQ, W], 6, d);
    let split = |t: Tensor<X, 2>| t.reshape([C, SEQ, heads, hd]).swap_dims(1, 2);
    let q = split(x.clone().matmul(t::<X, 2>([W, W], 7, d)));
    let k = split(x.clone().matmul(t::<X, 2>([W, W], 8, d)));
    let v = split(x.matmul(t::<X, 2>([W, W], 9, d)));
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(0.25);
    let mask = Tensor::<X, 2, Bool>::tril_mask([SEQ, SEQ], 0, d)
        .unsqueeze::<4>()
        .expand([C, heads, SEQ, SEQ]);
    let ctx = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3).matmul(v);
    ctx.swap_dims(1, 2).reshape([C * SEQ, W]).into_data()
}

/// Matmuls on odd shapes, batched and transposed.
fn matmul_odd<X: ClipBackend>(d: &X::Device) -> TensorData {
    let a = t::<X, 3>([3, 13, 37], 10, d);
    let b = t::<X, 3>([3, 13, 37], 11, d);
    a.matmul(b.swap_dims(1, 2)).into_data()
}

/// The end-token rows (`gather_rows`).
fn gather_rows<X: ClipBackend>(d: &X::Device) -> TensorData {
    let h = t::<X, 3>([C, SEQ, W], 12, d);
    let eot = Tensor::<X, 1, Int>::from_data(TensorData::new(vec![3i64, 12, 7, 0, 9], [C]), d);
    let idx = eot.reshape([C, 1, 1]).expand([C, 1, W]);
    h.gather(1, idx).reshape([C, W]).into_data()
}

/// MMRL's hook at a later layer: SOS, K new tokens, the rest after the old K.
fn mmrl_replace<X: ClipBackend>(d: &X::Device) -> TensorData {
    let x = t::<X, 3>([C, SEQ, W], 13, d);
    let rep = t::<X, 2>([3, W], 14, d)
        .unsqueeze_dim::<3>(0)
        .expand([C, 3, W]);
    let head = x.clone().narrow(1, 0, 1);
    let tail = x.narrow(1, 4, SEQ - 4);
    let y = Tensor::cat(vec![head, rep, tail], 1);
    // and the block that follows reads it through a reshape and a matmul
    y.reshape([C * SEQ, W])
        .matmul(t::<X, 2>([W, W], 15, d))
        .into_data()
}

/// The gradient that reaches CoOp's context through expand and cat.
fn coop_grad<X: ClipBackend>(d: &X::Device) -> TensorData {
    type A<X> = Autodiff<X>;
    let emb = t::<A<X>, 3>([C, SEQ, W], 1, d);
    let ctx = t::<A<X>, 2>([4, W], 2, d).require_grad();
    let head = emb.clone().narrow(1, 0, 1);
    let tail = emb.narrow(1, 5, SEQ - 5);
    let x = Tensor::cat(
        vec![
            head,
            ctx.clone().unsqueeze_dim::<3>(0).expand([C, 4, W]),
            tail,
        ],
        1,
    );
    let y = x.reshape([C * SEQ, W]).matmul(t::<A<X>, 2>([W, W], 16, d));
    let loss = (y.clone() * y).sum();
    let grads = loss.backward();
    ctx.grad(&grads).unwrap().into_data()
}

#[test]
fn the_methods_op_patterns_match_the_cpu() {
    let mut fails = Vec::new();
    check!(fails, "CoOp prompt (narrow, expand, cat)", coop_prompt);
    check!(
        fails,
        "CoOp prompt (repeat instead of expand)",
        coop_prompt_repeat
    );
    check!(fails, "narrow + cat", narrow_cat);
    check!(fails, "expand + add", expand_add);
    check!(fails, "positions narrowed to an odd length", positions);
    check!(fails, "causal attention, odd length", attention);
    check!(fails, "batched matmul, odd shapes", matmul_odd);
    check!(fails, "end-token rows (gather)", gather_rows);
    check!(fails, "MMRL token replacement + matmul", mmrl_replace);
    check!(fails, "CoOp context gradient (autodiff)", coop_grad);
    assert!(fails.is_empty(), "differ from the CPU: {fails:#?}");
}

/// CLIP's vision tower stage by stage (the model code itself), on a CLIP
/// file: embeddings, `pre_layrnorm`, then each block's attention and output.
fn vision_stages<X: ClipBackend>(file: &str, d: &X::Device) -> Vec<(String, TensorData)> {
    let clip = mmrl::model::clip::loader::load_clip::<X>(&common::repo().join(file), d)
        .unwrap()
        .model;
    let (pixels, shape) = common::tensor_at(
        &common::clip_fixture("expected.safetensors"),
        "pixel_values",
    );
    let images = Tensor::<X, 1>::from_floats(pixels.as_slice(), d)
        .reshape([shape[0], shape[1], shape[2], shape[3]]);
    let v = &clip.vision_model;
    let mut out = Vec::new();
    let x = v.embeddings.forward(images);
    out.push(("embeddings".to_string(), x.clone().into_data()));
    let mut x = v.pre_layrnorm.forward(x);
    out.push(("pre_layrnorm".to_string(), x.clone().into_data()));
    for (i, layer) in v.encoder.layers.iter().enumerate() {
        let h = layer.layer_norm1.forward(x.clone());
        let a = layer.self_attn.forward(h, false);
        out.push((format!("block {i} attention"), a.clone().into_data()));
        x = layer.forward(x, false);
        out.push((format!("block {i} output"), x.clone().into_data()));
    }
    out
}

/// Where a CLIP's vision tower first departs from the CPU: MMRL's tiny
/// CLIP (width 64, one head) and the CLIP fixtures' (width 128, two heads).
#[test]
fn vision_tower_stages_match_the_cpu() {
    let mut fails = Vec::new();
    for file in [
        "tests/fixtures/mmrl/tiny_clip.safetensors",
        "tests/fixtures/clip/tiny_openai.safetensors",
    ] {
        let cpu = vision_stages::<Cpu>(file, &Default::default());
        let fused = vision_stages::<common::B>(file, &Default::default());
        let raw = vision_stages::<Raw>(file, &Default::default());
        for ((name, c), ((_, f), (_, r))) in cpu.iter().zip(fused.iter().zip(&raw)) {
            let (df, dr) = (max_diff(c, f), max_diff(c, r));
            println!("{file} {name:<20} relative diff: fused {df:<12.3e} unfused {dr:.3e}");
            if df > TOL || dr > TOL {
                fails.push(format!("{file} {name}: fused {df:e}, unfused {dr:e}"));
            }
        }
    }
    assert!(fails.is_empty(), "differ from the CPU: {fails:#?}");
}

/// The same work from four threads at once gives the serial numbers (Burn's
/// GPU backends give each thread its own stream).
#[test]
fn four_threads_at_once_get_the_serial_numbers() {
    let file = "tests/fixtures/mmrl/tiny_clip.safetensors";
    let serial = vision_stages::<common::B>(file, &Default::default());
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || vision_stages::<common::B>(file, &Default::default())))
        .collect();
    let mut worst = 0f32;
    for t in threads {
        for ((_, a), (_, b)) in serial.iter().zip(&t.join().unwrap()) {
            worst = worst.max(max_diff(a, b));
        }
    }
    println!("four threads vs serial: largest relative diff {worst:e}");
    assert!(
        worst <= 1e-6,
        "threads differ from the serial run by {worst:e}"
    );
}
