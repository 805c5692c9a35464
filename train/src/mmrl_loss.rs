//! MMRL's training loss (reference `MMRL_Loss`, `trainers/mmrl.py`):
//!
//! `α · CE(class logits) + (1 − α) · CE(rep logits)
//!  + λ · (1 − mean_batch cos(class image features, frozen CLIP image features))
//!  + λ · (1 − mean_classes cos(text features, frozen CLIP text features))`
//!
//! CE is mean-reduced without label smoothing; the same λ weights both
//! regularisers; the representation features get no regulariser.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use mmrl_model::clip::l2_normalize;
use mmrl_model::methods::mmrl::{Mmrl, MmrlImageFeatures, MmrlLogits, MmrlOutput};

use crate::loss::{Loss, MethodLoss};
use mmrl_model::ClipBackend;

/// Each term of the loss and their weighted sum.
pub struct MmrlLoss<B: Backend> {
    /// The weighted total, `[1]`.
    pub total: Tensor<B, 1>,
    /// CE of the class logits, `[1]`.
    pub ce_class: Tensor<B, 1>,
    /// CE of the representation logits, `[1]`.
    pub ce_rep: Tensor<B, 1>,
    /// `1 − mean cos(class image features, frozen image features)`, `[1]`.
    pub reg_image: Tensor<B, 1>,
    /// `1 − mean cos(text features, frozen text features)`, `[1]`.
    pub reg_text: Tensor<B, 1>,
}

/// `1 − mean cos(a, b)` over rows.
///
/// # Shapes
/// - `a`, `b`: `[rows, dim]`
/// - output: `[1]`
pub fn one_minus_mean_cos<B: ClipBackend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 1> {
    let cos = (l2_normalize(a) * l2_normalize(b)).sum_dim(1); // [rows, 1]
    cos.mean().neg().add_scalar(1.0)
}

/// The loss weights: `alpha` (`ALPHA`, 0.7) and λ (`REG_WEIGHT`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmrlLossWeights {
    pub alpha: f64,
    pub reg_weight: f64,
}

/// The MMRL loss.
///
/// # Shapes
/// - `logits.class`, `logits.rep`: `[batch, classes]`; `labels`: `[batch]`
/// - `image.class`, `zs_image`: `[batch, projection_dim]`
/// - `text`, `zs_text`: `[classes, projection_dim]`
pub fn mmrl_loss<B: ClipBackend>(
    logits: &MmrlLogits<B>,
    labels: Tensor<B, 1, Int>,
    image: &MmrlImageFeatures<B>,
    text: Tensor<B, 2>,
    zs_image: Tensor<B, 2>,
    zs_text: Tensor<B, 2>,
    weights: MmrlLossWeights,
) -> MmrlLoss<B> {
    let MmrlLossWeights { alpha, reg_weight } = weights;
    let ce = CrossEntropyLossConfig::new().init(&labels.device());
    let ce_class = ce.forward(logits.class.clone(), labels.clone());
    let ce_rep = ce.forward(logits.rep.clone(), labels);
    let reg_image = one_minus_mean_cos(image.class.clone(), zs_image);
    let reg_text = one_minus_mean_cos(text, zs_text);
    let total = ce_class.clone().mul_scalar(alpha)
        + ce_rep.clone().mul_scalar(1.0 - alpha)
        + reg_image.clone().mul_scalar(reg_weight)
        + reg_text.clone().mul_scalar(reg_weight);
    MmrlLoss {
        total,
        ce_class,
        ce_rep,
        reg_image,
        reg_text,
    }
}

/// MMRL trains on [`mmrl_loss`] with the model's α and λ; its training
/// accuracy is read from the fused logits.
impl<B: ClipBackend> MethodLoss<B> for Mmrl<B> {
    const TERMS: &'static [&'static str] = &["ce_class", "ce_rep", "reg_image", "reg_text"];

    fn loss(&self, out: MmrlOutput<B>, labels: Tensor<B, 1, Int>) -> Loss<B> {
        let weights = MmrlLossWeights {
            alpha: self.alpha,
            reg_weight: self.reg_weight,
        };
        let loss = mmrl_loss(
            &out.logits,
            labels,
            &out.image,
            out.text,
            out.zs_image,
            out.zs_text,
            weights,
        );
        Loss {
            total: loss.total,
            logits: out.logits.fused(self.alpha),
            terms: vec![loss.ce_class, loss.ce_rep, loss.reg_image, loss.reg_text],
        }
    }
}
