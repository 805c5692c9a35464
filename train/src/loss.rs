//! One loss per method: [`MethodLoss`] turns a method's training forward
//! ([`Method::forward`](mmrl_model::methods::Method::forward)) into the
//! scalar that is minimised, the logits its training accuracy is read from,
//! and its named terms (shown per epoch as Burn metrics).
//!
//! CoOp, the Multi-Modal Adapter and zero-shot CLIP use plain cross entropy (below); MMRL's loss is
//! in [`crate::mmrl_loss`]. A new method adds its own `<name>_loss.rs`.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use mmrl_model::methods::comma::{Comma, CommaOutput};
use mmrl_model::methods::coop::Coop;
use mmrl_model::methods::mm_adapter::MmAdapter;
use mmrl_model::methods::zeroshot::ZeroShot;
use mmrl_model::methods::Method;
use mmrl_model::ClipBackend;

/// One batch's loss.
pub struct Loss<B: Backend> {
    /// What is minimised, `[1]`.
    pub total: Tensor<B, 1>,
    /// The logits training accuracy is measured on, `[batch, classes]`.
    pub logits: Tensor<B, 2>,
    /// The terms named by [`MethodLoss::TERMS`], in that order, each `[1]`
    /// (unweighted, as the reference logs them). Empty when there are none.
    pub terms: Vec<Tensor<B, 1>>,
}

/// A method's training loss.
pub trait MethodLoss<B: ClipBackend>: Method<B> {
    /// Names of the terms [`MethodLoss::loss`] reports besides the total
    /// (each becomes a metric in the epoch line and in the metric logs).
    const TERMS: &'static [&'static str] = &[];

    /// The loss of one batch.
    ///
    /// # Shapes
    /// - `labels`: `[batch]`
    fn loss(&self, output: Self::Output, labels: Tensor<B, 1, Int>) -> Loss<B>;
}

/// Mean cross entropy without label smoothing (PyTorch's `F.cross_entropy`).
///
/// # Shapes
/// - `logits`: `[batch, classes]`, `labels`: `[batch]`, output: `[1]`
pub fn cross_entropy<B: ClipBackend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, labels)
}

/// CoOp: cross entropy of its logits (`trainers/coop.py`, `forward_backward`).
impl<B: ClipBackend> MethodLoss<B> for Coop<B> {
    fn loss(&self, logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Loss<B> {
        Loss {
            total: cross_entropy(logits.clone(), labels),
            logits,
            terms: Vec::new(),
        }
    }
}

/// COMMA: cross entropy plus the weighted knowledge-preservation term
/// (`trainers/comma.py`: `F.cross_entropy(output, label) + self.weight*score`).
impl<B: ClipBackend> MethodLoss<B> for Comma<B> {
    const TERMS: &'static [&'static str] = &["ce", "kp"];

    fn loss(&self, out: CommaOutput<B>, labels: Tensor<B, 1, Int>) -> Loss<B> {
        let ce = cross_entropy(out.logits.clone(), labels);
        Loss {
            total: ce.clone() + out.kp.clone().mul_scalar(out.kp_weight),
            logits: out.logits,
            terms: vec![ce, out.kp],
        }
    }
}

/// Zero-shot CLIP is never trained; its loss is defined for validation only.
impl<B: ClipBackend> MethodLoss<B> for ZeroShot<B> {
    fn loss(&self, logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Loss<B> {
        Loss {
            total: cross_entropy(logits.clone(), labels),
            logits,
            terms: Vec::new(),
        }
    }
}

/// The Multi-Modal Adapter: cross entropy of its logits over the training
/// classes, no regulariser (`dqmis/clip-mma` `pipelines/train.py`).
impl<B: ClipBackend> MethodLoss<B> for MmAdapter<B> {
    fn loss(&self, logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Loss<B> {
        Loss {
            total: cross_entropy(logits.clone(), labels),
            logits,
            terms: Vec::new(),
        }
    }
}
