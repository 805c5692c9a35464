//! The precision frozen CLIP is held and run in (`--precision`).
//!
//! [`Precision::Bf16`] stores the weights of every transformer block (the
//! attention's `q`/`k`/`v`/`out` projections and the MLP's `fc1`/`fc2`,
//! weights and biases, in both towers) and the token embedding table in
//! bfloat16: 148.1 M of ViT-B/16 CLIP's 149.6 M parameters, half the memory.
//! Each block's linear layers then run in bf16 as autocast runs them (the
//! input rounded to bf16, the products accumulated in f32, the result
//! rounded to bf16 and returned in f32: [`crate::kernels::fused_linear`]);
//! everything between them stays in f32: the residual stream, LayerNorm, the
//! attention scores and softmax, QuickGELU, the projections, the patch
//! embedding and the positional embeddings (1.5 M parameters). A method's
//! trained parameters, its losses and their gradients are f32, as are the
//! optimiser's state and the checkpoints.
//!
//! The reference trainers run CLIP under PyTorch's AMP (fp16 autocast over
//! fp32 master weights); they test in fp32, and [`Precision::F32`] is the
//! default here. bf16 keeps f32's exponent range, so it needs no loss
//! scaling. Its unit roundoff is 2⁻⁹: on the tiny test CLIPs the logits move
//! by 1–2 % of their largest magnitude and the gradients keep their
//! direction (cosines above 0.998 with f32's; the bf16 tests in `tests/`).
//!
//! Where it runs: CUDA (bf16 tensor cores) and the CPU (a flex kernel of
//! ours: 4–6 % slower than f32 there, with half the weights' memory). wgpu
//! has no bf16 type in its shaders; [`Precision::check`] says so before
//! anything runs.

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use super::model::Clip;
use super::transformer::Encoder;

/// How frozen CLIP's weights are stored and its block products computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default; on CUDA the products may use TF32).
    #[default]
    F32,
    /// The blocks' weights and the token embeddings in bfloat16, the rest f32.
    Bf16,
}

impl Precision {
    /// Every value, as the command line and configs spell them.
    pub const NAMES: [&'static str; 2] = ["f32", "bf16"];

    /// The name the command line and configs use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The dtype frozen weights are stored in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Whether backend `B` can run this precision on `device`; the error
    /// says what to use instead.
    pub fn check<B: Backend>(self, device: &B::Device) -> Result<(), String> {
        if self == Precision::F32 || B::supports_dtype(device, self.dtype()) {
            return Ok(());
        }
        Err(format!(
            "--precision {self} is not supported on this device ({device:?}): its backend has no \
             general {:?} arithmetic (wgpu's shaders, for one, have no bf16 type). Run it on \
             CUDA (--device cuda) or the CPU (--device cpu), or use --precision f32",
            self.dtype()
        ))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(format!(
                "unknown precision {s:?}: use one of {}",
                Precision::NAMES.join(", ")
            )),
        }
    }
}

fn cast_param<B: Backend, const D: usize>(
    p: Param<Tensor<B, D>>,
    dtype: DType,
) -> Param<Tensor<B, D>> {
    p.map(|t| t.cast(dtype))
}

fn cast_linear<B: Backend>(l: Linear<B>, dtype: DType) -> Linear<B> {
    Linear {
        weight: cast_param(l.weight, dtype),
        bias: l.bias.map(|b| cast_param(b, dtype)),
    }
}

fn cast_encoder<B: Backend>(mut e: Encoder<B>, dtype: DType) -> Encoder<B> {
    e.layers = e
        .layers
        .into_iter()
        .map(|mut l| {
            let a = &mut l.self_attn;
            for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.out_proj] {
                *p = cast_linear(p.clone(), dtype);
            }
            l.mlp.fc1 = cast_linear(l.mlp.fc1, dtype);
            l.mlp.fc2 = cast_linear(l.mlp.fc2, dtype);
            l
        })
        .collect();
    e
}

impl<B: Backend> Clip<B> {
    /// This CLIP with its frozen weights in `precision` (see the module's
    /// documentation for which); f32 casts them back.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        let dtype = precision.dtype();
        let text = &mut self.text_model;
        text.encoder = cast_encoder(text.encoder.clone(), dtype);
        let tokens = &mut text.embeddings.token_embedding;
        *tokens = Embedding {
            weight: cast_param(tokens.weight.clone(), dtype),
        };
        self.vision_model.encoder = cast_encoder(self.vision_model.encoder.clone(), dtype);
        self
    }

    /// The precision of the blocks' weights (what [`Clip::with_precision`] set).
    pub fn precision(&self) -> Precision {
        match self
            .text_model
            .embeddings
            .token_embedding
            .weight
            .val()
            .dtype()
        {
            DType::BF16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// Bytes held by the parameters, each at its dtype's size.
    pub fn parameter_bytes(&self) -> usize {
        use burn::module::ModuleVisitor;
        struct Bytes(usize);
        impl<B: Backend> ModuleVisitor<B> for Bytes {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let t = param.val();
                self.0 += t.shape().num_elements() * t.dtype().size();
            }
        }
        let mut v = Bytes(0);
        self.visit(&mut v);
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipConfig;
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;

    type B = burn::backend::Flex;

    fn tiny() -> Clip<B> {
        let mut c = ClipConfig::small(16, 2, 2, 8, 4);
        c.text_config.vocab_size = 50;
        c.text_config.max_position_embeddings = 8;
        c.projection_dim = 8;
        c.init(&Default::default())
    }

    #[test]
    fn names_parse_and_print_back() {
        for n in Precision::NAMES {
            assert_eq!(n.parse::<Precision>().unwrap().name(), n);
        }
        assert_eq!("BFloat16".parse::<Precision>(), Ok(Precision::Bf16));
        let e = "fp8".parse::<Precision>().unwrap_err();
        assert!(e.contains("\"fp8\"") && e.contains("f32, bf16"), "{e}");
    }

    #[test]
    fn bf16_casts_the_block_weights_and_token_table_only_and_halves_them() {
        let clip = tiny();
        let f32_bytes = clip.parameter_bytes();
        let clip = clip.with_precision(Precision::Bf16);
        assert_eq!(clip.precision(), Precision::Bf16);
        let l = &clip.vision_model.encoder.layers[1];
        assert_eq!(l.mlp.fc2.weight.val().dtype(), DType::BF16);
        assert_eq!(
            l.self_attn.q_proj.bias.as_ref().unwrap().val().dtype(),
            DType::BF16
        );
        assert_eq!(clip.visual_projection.weight.val().dtype(), DType::F32);
        assert_eq!(
            clip.text_model.final_layer_norm.gamma.val().dtype(),
            DType::F32
        );
        let (text, vision) = (&clip.text_model, &clip.vision_model);
        let blocks = |e: &Encoder<B>| -> usize {
            e.layers
                .iter()
                .map(|l| {
                    let a = &l.self_attn;
                    [
                        &a.q_proj,
                        &a.k_proj,
                        &a.v_proj,
                        &a.out_proj,
                        &l.mlp.fc1,
                        &l.mlp.fc2,
                    ]
                    .iter()
                    .map(|p| {
                        p.weight.val().shape().num_elements()
                            + p.bias
                                .as_ref()
                                .map_or(0, |b| b.val().shape().num_elements())
                    })
                    .sum::<usize>()
                })
                .sum()
        };
        let halved = blocks(&text.encoder)
            + blocks(&vision.encoder)
            + text
                .embeddings
                .token_embedding
                .weight
                .val()
                .shape()
                .num_elements();
        assert_eq!(clip.parameter_bytes(), f32_bytes - 2 * halved);
        let back = clip.with_precision(Precision::F32);
        assert_eq!(back.precision(), Precision::F32);
        assert_eq!(back.parameter_bytes(), f32_bytes);
    }

    #[test]
    fn bf16_clip_runs_in_f32_around_its_blocks_and_passes_gradients() {
        type AB = Autodiff<B>;
        let device = Default::default();
        let clip = tiny();
        let images =
            Tensor::<B, 4>::random([2, 3, 8, 8], burn::tensor::Distribution::Default, &device);
        let f32_out = clip.encode_image(images.clone());
        let bf = clip.clone().with_precision(Precision::Bf16);
        let bf_out = bf.encode_image(images.clone());
        assert_eq!(bf_out.dtype(), DType::F32);
        let scale = f32_out.clone().abs().max().into_scalar();
        let diff = (f32_out - bf_out).abs().max().into_scalar();
        // bf16 rounding (2⁻⁸) shows, and stays a rounding.
        assert!(diff > 0.0 && diff < 0.05 * scale, "diff {diff} of {scale}");

        // A gradient reaches a tracked input through the bf16 blocks, in f32.
        let clip_ad = <Clip<AB> as AutodiffModule<AB>>::from_inner(bf);
        let x = Tensor::<AB, 4>::from_inner(images).require_grad();
        let loss = clip_ad.encode_image(x.clone()).powi_scalar(2).sum();
        let grads = loss.backward();
        let g = x.grad(&grads).expect("the input has a gradient");
        assert_eq!(g.dtype(), DType::F32);
        assert!(g.abs().max().into_scalar() > 0.0);
    }
}
