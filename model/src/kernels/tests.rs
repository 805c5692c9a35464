//! The specialised kernels (flex, and flex under autodiff) against their
//! composed forms, over odd shapes, strided inputs and the causal mask.
//!
//! Tolerance: every value within 1e-6 of the composed one, relative to the
//! largest magnitude of the composed result (the two sum products in
//! different orders, and the fused softmax multiplies by `1/Σ` where the
//! composed one divides); for a bf16 weight, within two bf16 roundings.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

use super::*;

type F = Flex;
type A = Autodiff<Flex>;

/// Values uniform in [-3, 3) from `seed` (a 64-bit LCG: Burn's seeded
/// random draw uses one global generator, which tests running in parallel
/// would share).
fn rand<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

#[track_caller]
fn close<Bk: Backend, const D: usize>(got: Tensor<Bk, D>, want: Tensor<Bk, D>, what: &str) {
    close_within(got, want, 1e-6, what);
}

/// Every value within `tol` of `want`'s largest magnitude.
#[track_caller]
fn close_within<Bk: Backend, const D: usize>(
    got: Tensor<Bk, D>,
    want: Tensor<Bk, D>,
    tol: f32,
    what: &str,
) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let g = got.into_data().to_vec::<f32>().unwrap();
    let w = want.into_data().to_vec::<f32>().unwrap();
    let scale = w
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= tol * scale,
            "{what}: element {i}: {a} vs {b} (scale {scale})"
        );
    }
}

fn composed_linear<Bk: Backend>(
    x: Tensor<Bk, 2>,
    w: Tensor<Bk, 2>,
    b: Option<Tensor<Bk, 1>>,
) -> Tensor<Bk, 2> {
    float(composed::fused_linear::<Bk>(prim(x), prim(w), b.map(prim)))
}

fn composed_attention<Bk: ClipBackend>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    causal: bool,
) -> Tensor<Bk, 4> {
    // The composed form with Burn's own softmax (not the kernel's).
    let [batch, heads, seq, head_dim] = q.dims();
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (head_dim as f64).sqrt());
    let scores = if causal {
        let mask = Tensor::<Bk, 2, Bool>::tril_mask([seq, seq], 0, &scores.device());
        scores.mask_fill(
            mask.unsqueeze::<4>().expand([batch, heads, seq, seq]),
            f32::NEG_INFINITY,
        )
    } else {
        scores
    };
    burn::tensor::activation::softmax(scores, 3).matmul(v)
}

#[test]
fn linear_matches_the_product_and_sum() {
    for (i, &(m, k, n)) in [(1, 1, 3), (7, 5, 17), (33, 64, 100), (197, 96, 31)]
        .iter()
        .enumerate()
    {
        let seed = 10 * i as u64;
        let x = rand::<F, 2>([m, k], seed);
        let w = rand::<F, 2>([k, n], seed + 1);
        let b = rand::<F, 1>([n], seed + 2);
        close(
            fused_linear(x.clone(), w.clone(), Some(b.clone())),
            composed_linear(x.clone(), w.clone(), Some(b.clone())),
            "with bias",
        );
        close(
            fused_linear(x.clone(), w.clone(), None),
            composed_linear(x, w.clone(), None),
            "no bias",
        );
        // A transposed (strided) input.
        let xt = rand::<F, 2>([k, m], seed + 3).transpose();
        close(
            fused_linear(xt.clone(), w.clone(), Some(b.clone())),
            composed_linear(xt, w, Some(b)),
            "strided input",
        );
    }
}

#[test]
fn quick_gelu_and_softmax_match_the_composed_ops() {
    for (i, &len) in [1usize, 15, 16, 17, 1000, 40_000].iter().enumerate() {
        let x = rand::<F, 1>([len], i as u64).mul_scalar(10.0);
        close(
            quick_gelu(x.clone()),
            float(composed::quick_gelu::<F>(prim(x.clone()))),
            "quick_gelu",
        );
    }
    for (i, &(rows, last)) in [(1, 1), (3, 7), (64, 197), (5, 513)].iter().enumerate() {
        let x = rand::<F, 3>([1, rows, last], 100 + i as u64).mul_scalar(5.0);
        close(
            softmax_last(x.clone()),
            burn::tensor::activation::softmax(x.clone(), 2),
            "softmax",
        );
        // A strided input: the softmax of a transposed view.
        let xt = rand::<F, 3>([1, last, rows], 200 + i as u64).swap_dims(1, 2);
        close(
            softmax_last(xt.clone()),
            burn::tensor::activation::softmax(xt, 2),
            "softmax, strided",
        );
    }
    // The causal form (the text tower's attention), against Burn's softmax after the mask.
    let x = rand::<F, 4>([2, 3, 7, 7], 400);
    close(
        float::<F, 4>(F::softmax_last(prim(x.clone()), true)),
        float(composed::softmax_last::<F>(prim(x), true)),
        "causal softmax",
    );
    // -inf entries (a mask) give exact zeros.
    let x = Tensor::<F, 2>::from_floats([[0.5, f32::NEG_INFINITY, 2.0]], &Default::default());
    let p = softmax_last(x).into_data().to_vec::<f32>().unwrap();
    assert_eq!(p[1], 0.0);
}

#[test]
fn attention_core_matches_the_composed_form() {
    for (i, &(batch, heads, seq, head_dim)) in
        [(1, 1, 1, 4), (2, 3, 7, 5), (3, 2, 13, 8), (1, 12, 50, 64)]
            .iter()
            .enumerate()
    {
        for causal in [false, true] {
            let seed = 300 + 10 * i as u64;
            // q, k, v as the transformer makes them: views of [batch, seq, heads, head_dim].
            let view = |s| rand::<F, 4>([batch, seq, heads, head_dim], s).swap_dims(1, 2);
            let (q, k, v) = (view(seed), view(seed + 1), view(seed + 2));
            let got = attention_core(q.clone(), k.clone(), v.clone(), causal);
            close(got, composed_attention(q, k, v, causal), "attention");
        }
    }
}

/// `Σ f(inputs) · r` differentiated with respect to every input.
fn grads<const D: usize, const N: usize>(
    inputs: [Tensor<A, 2>; N],
    f: impl Fn([Tensor<A, 2>; N]) -> Tensor<A, D>,
) -> Vec<Tensor<F, 2>> {
    let inputs = inputs.map(|t| t.require_grad());
    let out = f(inputs.clone());
    let r = rand::<A, D>(out.dims(), 99);
    let g = (out * r).sum().backward();
    inputs
        .iter()
        .map(|t| t.grad(&g).expect("a gradient"))
        .collect()
}

#[track_caller]
fn close_all(got: Vec<Tensor<F, 2>>, want: Vec<Tensor<F, 2>>, what: &str) {
    for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
        close(g, w, &format!("{what}, gradient {i}"));
    }
}

/// Gradients through each kernel on the autodiff backend (flex inside)
/// against the composed ops' gradients.
#[test]
fn gradients_match_the_composed_ops() {
    let (x, w, b) = (
        rand::<A, 2>([9, 6], 1),
        rand::<A, 2>([6, 12], 2),
        rand::<A, 2>([1, 12], 3),
    );
    let inputs = || [x.clone(), w.clone(), b.clone()];
    close_all(
        grads(inputs(), |[x, w, b]| {
            fused_linear(x, w, Some(b.reshape([12])))
        }),
        grads(inputs(), |[x, w, b]| {
            composed_linear(x, w, Some(b.reshape([12])))
        }),
        "linear",
    );
    close_all(
        grads([x.clone()], |[x]| quick_gelu(x)),
        grads([x.clone()], |[x]| {
            float::<A, 2>(composed::quick_gelu::<A>(prim(x)))
        }),
        "quick_gelu",
    );
    close_all(
        grads([x.clone()], |[x]| softmax_last(x.mul_scalar(3.0))),
        grads([x.clone()], |[x]| {
            burn::tensor::activation::softmax(x.mul_scalar(3.0), 1)
        }),
        "softmax",
    );
    // Three heads of width 4 over 9 positions, causal and not.
    let heads = |t: Tensor<A, 2>| t.reshape([9, 3, 4]).swap_dims(0, 1).unsqueeze::<4>();
    for causal in [false, true] {
        let qkv = || {
            [
                rand::<A, 2>([9, 12], 5),
                rand::<A, 2>([9, 12], 6),
                rand::<A, 2>([9, 12], 7),
            ]
        };
        close_all(
            grads(qkv(), |[q, k, v]| {
                attention_core(heads(q), heads(k), heads(v), causal)
            }),
            grads(qkv(), |[q, k, v]| {
                composed_attention(heads(q), heads(k), heads(v), causal)
            }),
            "attention",
        );
    }
}

/// A weight and bias stored in bf16 (frozen CLIP, `Precision::Bf16`):
/// flex's product rounds the f32 sum with the bias to bf16 once, the composed
/// form rounds the bf16 product and again after adding the bias; so they
/// agree within two bf16 roundings (2^-7) of the result's magnitude, forward
/// and in the input's gradient, which comes back in f32.
#[test]
fn bf16_weight_linear_matches_the_composed_form() {
    use burn::tensor::DType;
    let two_roundings = 2f32.powi(-7);
    for (i, &(m, k, n)) in [(1, 1, 3), (7, 5, 17), (33, 64, 100)].iter().enumerate() {
        let seed = 40 + 10 * i as u64;
        let x = rand::<F, 2>([m, k], seed);
        let w = rand::<F, 2>([k, n], seed + 1).cast(DType::BF16);
        let b = rand::<F, 1>([n], seed + 2).cast(DType::BF16);
        let y = fused_linear(x.clone(), w.clone(), Some(b.clone()));
        assert_eq!(y.dtype(), DType::F32);
        // The rounding shows: not the f32 product of the same (bf16) values.
        let widen = |t: Tensor<F, 2>| t.cast(DType::F32);
        let exact = fused_linear(
            x.clone(),
            widen(w.clone()),
            Some(b.clone().cast(DType::F32)),
        );
        assert!(
            y.clone().sub(exact).abs().max().into_scalar() > 0.0 || m * n < 8,
            "bf16 rounds"
        );
        let want = composed_linear(x.clone(), w.clone(), Some(b));
        close_within(y, want, two_roundings, "bf16 weight");
        close_within(
            fused_linear(x.clone(), w.clone(), None),
            composed_linear(x, w, None),
            two_roundings,
            "bf16 weight, no bias",
        );
    }
    let x = rand::<A, 2>([9, 6], 1);
    let w = rand::<A, 2>([6, 12], 2).cast(DType::BF16);
    let b = rand::<A, 1>([12], 3).cast(DType::BF16);
    let got = grads([x.clone()], |[x]| {
        fused_linear(x, w.clone(), Some(b.clone()))
    });
    let want = grads([x], |[x]| composed_linear(x, w.clone(), Some(b.clone())));
    assert_eq!(got[0].dtype(), DType::F32);
    close_within(
        got[0].clone(),
        want[0].clone(),
        two_roundings,
        "bf16 weight, gradient",
    );
}

/// flex's attention backward against the composed one, over odd shapes,
/// strided q, k, v and output gradients, causal or not.
#[test]
fn attention_backward_matches_the_composed_form() {
    for (i, &(batch, heads, seq, head_dim)) in [(2, 3, 7, 5), (1, 12, 50, 64)].iter().enumerate() {
        for causal in [false, true] {
            let seed = 500 + 10 * i as u64;
            let view = |s| rand::<F, 4>([batch, seq, heads, head_dim], s).swap_dims(1, 2);
            let (q, k, v, g) = (view(seed), view(seed + 1), view(seed + 2), view(seed + 3));
            let (out, p) = F::attention_core_with_probs(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                causal,
            );
            let (want_out, want_p) = composed::attention_core_with_probs::<F>(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                causal,
            );
            close(float::<F, 4>(out), float(want_out), "output");
            close(
                float::<F, 4>(p.clone()),
                float(want_p.clone()),
                "probabilities",
            );
            let got = F::attention_core_backward(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                p,
                prim(g.clone()),
            );
            let want =
                composed::attention_core_backward::<F>(prim(q), prim(k), prim(v), want_p, prim(g));
            for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(got.into_iter().zip(want)) {
                close(float::<F, 4>(a), float(b), name);
            }
        }
    }
}

/// Inputs that are contiguous but start inside their buffer (a `narrow` of
/// the first dimension): the kernels read them from their offset.
#[test]
fn contiguous_views_with_an_offset() {
    let whole = rand::<F, 2>([5, 7], 600);
    let view = whole.clone().narrow(0, 2, 3);
    close(
        softmax_last(view.clone()),
        burn::tensor::activation::softmax(view.clone(), 1),
        "softmax",
    );
    close(
        quick_gelu(view.clone()),
        float(composed::quick_gelu::<F>(prim(view.clone()))),
        "quick_gelu",
    );
    let g = rand::<F, 2>([5, 7], 601).narrow(0, 1, 3);
    close(
        float::<F, 2>(F::quick_gelu_backward(prim(view.clone()), prim(g.clone()))),
        float(composed::quick_gelu_backward::<F>(
            prim(view.clone()),
            prim(g.clone()),
        )),
        "quick_gelu backward",
    );
    let p = softmax_last(rand::<F, 2>([6, 7], 602)).narrow(0, 3, 3);
    close(
        float::<F, 2>(F::softmax_last_backward(prim(p.clone()), prim(g.clone()))),
        float(composed::softmax_last_backward::<F>(prim(p), prim(g))),
        "softmax backward",
    );
}
