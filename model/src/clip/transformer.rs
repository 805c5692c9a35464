//! The pre-LN residual attention transformer shared by both CLIP towers.
//!
//! Written once; the text and vision towers and every adaptation method run
//! it. Methods that insert or replace tokens at a layer do so through
//! [`BlockHook`], and can run a range of layers ([`Encoder::forward_range`])
//! to cache the frozen lower layers.

use std::ops::Range;

use burn::module::{Initializer, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::config::HiddenAct;
use crate::kernels::{self, ClipBackend};

/// Applies a [`Linear`] to `[..., d_in]` as one `[rows, d_in]` product with
/// the bias inside it ([`kernels::fused_linear`]; Burn's rank-3 linear runs
/// `batch` separate products and adds the bias in a second pass). A layer
/// stored in bf16 ([`super::Precision::Bf16`]) runs in bf16 as autocast runs
/// a linear and returns `x`'s dtype; its gradient reaches `x` the same way.
pub fn linear3<B: ClipBackend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    kernels::fused_linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// Configuration of one [`Encoder`].
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// Residual width.
    pub width: usize,
    /// MLP hidden width.
    pub intermediate: usize,
    /// Number of residual blocks.
    pub layers: usize,
    /// Attention heads (`width / heads` per head).
    pub heads: usize,
    /// MLP activation.
    pub act: HiddenAct,
    /// LayerNorm epsilon.
    pub eps: f64,
}

impl EncoderConfig {
    /// Builds the encoder with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Encoder<B> {
        Encoder {
            layers: (0..self.layers).map(|_| self.init_layer(device)).collect(),
        }
    }

    /// Random weights as transformers' `CLIPPreTrainedModel._init_weights`:
    /// normal weights with per-role std, zero biases.
    fn init_layer<B: Backend>(&self, device: &B::Device) -> EncoderLayer<B> {
        let w = self.width;
        let width = w as f64;
        let in_std = width.powf(-0.5) * (2.0 * self.layers as f64).powf(-0.5);
        let out_std = width.powf(-0.5);
        let fc_std = (2.0 * width).powf(-0.5);
        let lin = |i, o, std| normal_linear(i, o, std, true, device);
        EncoderLayer {
            self_attn: Attention {
                q_proj: lin(w, w, in_std),
                k_proj: lin(w, w, in_std),
                v_proj: lin(w, w, in_std),
                out_proj: lin(w, w, out_std),
                heads: self.heads,
            },
            layer_norm1: LayerNormConfig::new(w).with_epsilon(self.eps).init(device),
            mlp: Mlp {
                fc1: lin(w, self.intermediate, fc_std),
                fc2: lin(self.intermediate, w, in_std),
                quick_gelu: self.act == HiddenAct::QuickGelu,
            },
            layer_norm2: LayerNormConfig::new(w).with_epsilon(self.eps).init(device),
        }
    }
}

/// A linear layer with `N(0, std)` weights and, if any, a zero bias (CLIP's init).
pub fn normal_linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    std: f64,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    if bias {
        l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    }
    l
}

/// Multi-head self-attention with Hugging Face's parameter names
/// (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub heads: usize,
}

impl<B: ClipBackend> Attention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - output: `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let [batch, seq, width] = x.dims();
        let heads = self.heads;
        let head_dim = width / heads;
        let x = x.reshape([batch * seq, width]);
        // [batch·seq, width] -> [batch, heads, seq, head_dim] (a view: the
        // attention kernel reads the heads where they lie)
        let split = |t: Tensor<B, 2>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let q = split(linear3(&self.q_proj, x.clone()));
        let k = split(linear3(&self.k_proj, x.clone()));
        let v = split(linear3(&self.v_proj, x));
        // softmax(q kᵀ / √head_dim [+ causal mask]) v, [batch, heads, seq, head_dim]
        let ctx = kernels::attention_core(q, k, v, causal);
        let ctx = ctx.swap_dims(1, 2).reshape([batch * seq, width]);
        linear3(&self.out_proj, ctx).reshape([batch, seq, width])
    }
}

/// The block's MLP: `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    pub quick_gelu: bool,
}

impl<B: ClipBackend> Mlp<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - output: `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = linear3(&self.fc1, x);
        let h = if self.quick_gelu {
            kernels::quick_gelu(h)
        } else {
            gelu(h)
        };
        linear3(&self.fc2, h)
    }
}

/// One pre-LN residual block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub layer_norm2: LayerNorm<B>,
}

impl<B: ClipBackend> EncoderLayer<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - output: `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), causal);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// Edits the sequence each block receives. Methods such as MMRL and MaPLe
/// insert or replace tokens here; the causal mask follows the new length.
pub trait BlockHook<B: Backend> {
    /// `x`: `[batch, seq, width]` entering block `layer` (0-based); may change `seq`.
    fn before_block(&mut self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let _ = layer;
        x
    }
}

/// The hook that changes nothing.
pub struct NoHook;
impl<B: ClipBackend> BlockHook<B> for NoHook {}

/// A stack of residual blocks.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub layers: Vec<EncoderLayer<B>>,
}

impl<B: ClipBackend> Encoder<B> {
    /// Runs every block.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - output: `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        self.forward_range(x, 0..self.layers.len(), causal, &mut NoHook)
    }

    /// Runs blocks `layers` (0-based, end exclusive), calling `hook` at the
    /// input of each.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, width]`
    /// - output: `[batch, seq', width]` (`seq'` as the hook leaves it)
    pub fn forward_range(
        &self,
        mut x: Tensor<B, 3>,
        layers: Range<usize>,
        causal: bool,
        hook: &mut impl BlockHook<B>,
    ) -> Tensor<B, 3> {
        for i in layers {
            x = hook.before_block(i, x);
            x = self.layers[i].forward(x, causal);
        }
        x
    }
}

impl<B: ClipBackend> Encoder<B> {
    /// Number of blocks.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }
}
