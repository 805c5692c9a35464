//! The kernels CLIP's transformer spends its time in, as a Burn backend
//! extension.
//!
//! [`ClipBackend`] is a trait over Burn's `Backend` (Burn's extension
//! mechanism): each operation has a default implementation composed of
//! Burn's tensor operations, which every backend gets (ndarray, wgpu, CUDA),
//! and the default CPU backend, flex, has specialised ones (`flex.rs`):
//!
//! - [`fused_linear`]: `x · W + b` with the bias written into the output before
//!   the GEMM accumulates into it (no second pass over the output); with `W`
//!   and `b` stored in bf16 (frozen CLIP, `clip::Precision::Bf16`), the same
//!   f32 GEMM on the weight widened per call, `x` and the result rounded to
//!   bf16, as bf16 tensor cores compute it;
//! - [`quick_gelu`]: `x · σ(1.702 x)` in one vectorised, threaded pass (the
//!   composed form is three passes with a scalar `exp`);
//! - [`softmax_last`]: softmax over the last dimension, vectorised and threaded;
//! - [`attention_core`]: `softmax(q kᵀ / √d [+ causal mask]) v`, one task per
//!   (batch, head) pair: the two products read q, k and v where they lie (no
//!   transposed copies), the scale is the first GEMM's multiplier, the
//!   masked entries are never exponentiated, and the result is written in
//!   `[batch, seq, heads, head_dim]` order, so the merge of the heads that
//!   follows is free.
//!
//! The autodiff backend (`autodiff.rs`) runs the inner backend's kernels
//! forward and records their backward, each one node of the graph: the
//! linear's gradients (only for tracked inputs: a frozen weight gets none),
//! QuickGELU's derivative, softmax's Jacobian product, and the attention
//! core's `dq`, `dk`, `dv` from the probabilities its forward kept (on flex,
//! one task per (batch, head), written where the heads merge).
//!
//! `MMRL_CPU_KERNELS=composed` in the environment makes flex run the
//! composed forms too (to compare speed, or to rule the kernels out).
//!
//! Every specialised kernel equals its composed form within 1e-6 of the
//! result's largest magnitude (the property tests in `tests`, over odd
//! shapes, strided and offset inputs and the causal mask); the linear with a
//! bf16 weight within two bf16 roundings (2⁻⁷), as the composed form rounds
//! after the product and again after the bias.

mod autodiff;
mod flex;
pub use flex::specialised;
pub mod vecmath;

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorMetadata, TensorPrimitive};

/// A backend with CLIP's kernels. Implemented for every backend this project
/// builds: flex with specialised CPU kernels, the others with the composed
/// defaults, and `Autodiff<B>` with the matching backward.
pub trait ClipBackend: Backend {
    /// `x · weight + bias`: `x` `[m, k]`, `weight` `[k, n]` (Burn's layout),
    /// `bias` `[n]`; output `[m, n]` in `x`'s dtype. A weight and bias stored
    /// in another dtype (frozen CLIP in bf16, `clip::Precision::Bf16`) set
    /// the product's precision, as autocast runs a linear: `x` rounded to
    /// their dtype, the products accumulated in f32, the result rounded to
    /// their dtype and returned in `x`'s.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed::fused_linear::<Self>(x, weight, bias)
    }

    /// QuickGELU, `x · σ(1.702 x)`, element-wise.
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::quick_gelu::<Self>(x)
    }

    /// The gradient through [`ClipBackend::quick_gelu`] at `x` for the output gradient `grad`.
    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::quick_gelu_backward::<Self>(x, grad)
    }

    /// Softmax over the last dimension; with `causal`, of square trailing
    /// `[seq, seq]` blocks whose row `i` keeps only entries `0..=i` (the
    /// others are 0), as a causal attention mask gives.
    fn softmax_last(x: FloatTensor<Self>, causal: bool) -> FloatTensor<Self> {
        composed::softmax_last::<Self>(x, causal)
    }

    /// The gradient through [`ClipBackend::softmax_last`], given its output `p`.
    fn softmax_last_backward(p: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::softmax_last_backward::<Self>(p, grad)
    }

    /// `softmax(q kᵀ / √head_dim [+ causal mask]) v` for `q`, `k`, `v` of shape
    /// `[batch, heads, seq, head_dim]` (any strides); output of the same shape
    /// (its strides may differ).
    fn attention_core(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        composed::attention_core::<Self>(q, k, v, causal)
    }

    /// [`ClipBackend::attention_core`] that also returns the attention
    /// probabilities `[batch, heads, seq, seq]`, for the backward.
    fn attention_core_with_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::attention_core_with_probs::<Self>(q, k, v, causal)
    }

    /// The gradients of `q`, `k` and `v` through [`ClipBackend::attention_core`],
    /// given its probabilities `p` and the output's gradient `grad`.
    fn attention_core_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        p: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        composed::attention_core_backward::<Self>(q, k, v, p, grad)
    }
}

/// An autodiff backend whose inner backend also has CLIP's kernels (what
/// training needs: the trained path on `Self`, frozen work and evaluation on
/// the inner backend).
pub trait ClipAutodiffBackend: ClipBackend + AutodiffBackend<InnerBackend: ClipBackend> {}

impl<B: AutodiffBackend<InnerBackend: ClipBackend> + ClipBackend> ClipAutodiffBackend for B {}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `x · weight + bias` on `[batch·seq, d_in]` or `[batch, seq, d_in]` input.
pub fn fused_linear<B: ClipBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let [_, d_out] = weight.dims();
    let x2 = prim(x.reshape([dims.iter().product::<usize>() / d_in.max(1), d_in]));
    let y = B::fused_linear(x2, prim(weight), bias.map(prim));
    let mut out = dims;
    out[D - 1] = d_out;
    float::<B, 2>(y).reshape(out)
}

/// QuickGELU, `x · σ(1.702 x)`.
pub fn quick_gelu<B: ClipBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::quick_gelu(prim(x)))
}

/// Softmax over the last dimension.
pub fn softmax_last<B: ClipBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::softmax_last(prim(x), false))
}

/// `softmax(q kᵀ / √head_dim [+ causal mask]) v`, all `[batch, heads, seq, head_dim]`.
pub fn attention_core<B: ClipBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    float(B::attention_core(prim(q), prim(k), prim(v), causal))
}

/// The composed forms: the default of every backend, the reference of the
/// specialised kernels' tests, and the fallback of flex for dtypes other
/// than f32.
pub mod composed {
    use super::*;

    /// `x · weight + bias` as a product and a broadcast sum, in the
    /// weight's dtype (`x` cast to it and the result back).
    pub fn fused_linear<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        let (dtype, stored) = (x.dtype(), weight.dtype());
        let y = float::<B, 2>(x).cast(stored).matmul(float(weight));
        let y = match bias {
            Some(b) => y + float::<B, 1>(b).unsqueeze(),
            None => y,
        };
        prim(y.cast(dtype))
    }

    /// A tensor of any rank as a vector, and the shape to give back.
    fn flat<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 1>, burn::tensor::Shape) {
        let shape = x.shape();
        let n = shape.num_elements();
        (float(B::float_reshape(x, [n].into())), shape)
    }

    /// `x · sigmoid(1.702 x)`.
    pub fn quick_gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let (x, shape) = flat::<B>(x);
        let y = x.clone() * sigmoid(x.mul_scalar(vecmath::QUICK_GELU_ALPHA));
        B::float_reshape(prim(y), shape)
    }

    /// `grad · (s + 1.702 x s (1 − s))`, `s = sigmoid(1.702 x)`.
    pub fn quick_gelu_backward<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let (x, shape) = flat::<B>(x);
        let (grad, _) = flat::<B>(grad);
        let s = sigmoid(x.clone().mul_scalar(vecmath::QUICK_GELU_ALPHA));
        let one_minus = s.clone().neg().add_scalar(1.0);
        let d = s.clone() + x.mul_scalar(vecmath::QUICK_GELU_ALPHA) * s * one_minus;
        B::float_reshape(prim(grad * d), shape)
    }

    /// Burn's softmax over the last dimension, after a causal mask (`-inf`
    /// above the diagonal of the trailing `[seq, seq]` blocks) if asked.
    pub fn softmax_last<B: Backend>(x: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
        let shape = x.shape();
        let dims = shape.num_dims();
        let x = if causal {
            let (seq, rows) = (shape[dims - 1], shape.num_elements() / shape[dims - 1]);
            let x = float::<B, 3>(B::float_reshape(x, [rows / seq, seq, seq].into()));
            let mask = Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, &x.device());
            let x = x.mask_fill(
                mask.unsqueeze::<3>().expand([rows / seq, seq, seq]),
                f32::NEG_INFINITY,
            );
            B::float_reshape(prim(x), shape)
        } else {
            x
        };
        B::softmax(x, dims - 1)
    }

    /// `p · (grad − Σ_last p·grad)`.
    pub fn softmax_last_backward<B: Backend>(
        p: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let shape = p.shape();
        let last = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / last.max(1);
        let p = float::<B, 2>(B::float_reshape(p, [rows, last].into()));
        let g = float::<B, 2>(B::float_reshape(grad, [rows, last].into()));
        let dot = (p.clone() * g.clone()).sum_dim(1);
        B::float_reshape(prim(p * (g - dot)), shape)
    }

    /// Two batched products around [`ClipBackend::softmax_last`], which also
    /// applies the causal mask.
    pub fn attention_core<B: ClipBackend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        causal: bool,
    ) -> FloatTensor<B> {
        attention_core_with_probs::<B>(q, k, v, causal).0
    }

    /// The composed attention core and its probabilities.
    pub fn attention_core_with_probs<B: ClipBackend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        causal: bool,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let q = float::<B, 4>(q);
        let head_dim = q.dims()[3];
        let scores = q
            .matmul(float::<B, 4>(k).swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt());
        let p = B::softmax_last(prim(scores), causal);
        (prim(float::<B, 4>(p.clone()).matmul(float(v))), p)
    }

    /// `dv = pᵀ g`, `ds = softmax'(p)·(g vᵀ)`, `dq = ds k / √d`, `dk = dsᵀ q / √d`.
    pub fn attention_core_backward<B: ClipBackend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        p: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> [FloatTensor<B>; 3] {
        let (q, k, v) = (float::<B, 4>(q), float::<B, 4>(k), float::<B, 4>(v));
        let (p, g) = (float::<B, 4>(p), float::<B, 4>(grad));
        let scale = 1.0 / (q.dims()[3] as f64).sqrt();
        let dv = p.clone().swap_dims(2, 3).matmul(g.clone());
        let dp = g.matmul(v.swap_dims(2, 3));
        let ds = float::<B, 4>(B::softmax_last_backward(prim(p), prim(dp)));
        let dq = ds.clone().matmul(k).mul_scalar(scale);
        let dk = ds.swap_dims(2, 3).matmul(q).mul_scalar(scale);
        [prim(dq), prim(dk), prim(dv)]
    }
}

#[cfg(feature = "ndarray")]
impl ClipBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl ClipBackend for burn::backend::Wgpu {}
#[cfg(feature = "cuda")]
impl ClipBackend for burn::backend::Cuda {}
/// CUDA in bf16 throughout (weights, activations; matmuls accumulate in f32):
/// `mmrl-bench --backend cuda-bf16`, next to PyTorch's bf16 encode.
#[cfg(feature = "cuda")]
impl ClipBackend for burn::backend::Cuda<burn::tensor::bf16> {}

/// CUDA without Burn's fusion layer: what `mmrl train` runs on (the `mmrl`
/// crate's `backend::CudaTrain`); the GPU tests compare it with the fused one.
#[cfg(feature = "cuda")]
pub type CudaUnfused =
    burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, f32, i32, u8>;
/// wgpu without Burn's fusion layer (`backend::WgpuTrain`).
#[cfg(feature = "wgpu")]
pub type WgpuUnfused =
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
#[cfg(feature = "cuda")]
impl ClipBackend for CudaUnfused {}
#[cfg(feature = "wgpu")]
impl ClipBackend for WgpuUnfused {}

#[cfg(test)]
mod tests;
