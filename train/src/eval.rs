//! Scoring a class set: micro accuracy over a loader (Dassl's
//! `Classification` evaluator), the method's logits computed per batch.

use burn::prelude::*;
use mmrl_data::loader::ImageLoader;

use crate::Result;
use mmrl_model::ClipBackend;

/// Correct predictions and total over a loader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub correct: usize,
    pub total: usize,
}

impl Tally {
    /// Micro accuracy in percent (Dassl's `Classification` evaluator).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }
}

fn count_correct<B: ClipBackend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> usize {
    let pred = logits.argmax(1).squeeze_dim::<1>(1);
    pred.equal(labels).int().sum().into_scalar().elem::<i64>() as usize
}

/// Scores every batch of `loader` with `logits_of` (text features are
/// computed once by the caller). Stops with the loader's error, if any.
pub fn evaluate<B: ClipBackend>(
    loader: &ImageLoader<B>,
    mut logits_of: impl FnMut(Tensor<B, 4>) -> Tensor<B, 2>,
) -> Result<Tally> {
    use burn::data::dataloader::DataLoader;
    let mut t = Tally::default();
    for batch in loader.iter() {
        t.total += batch.indices.len();
        t.correct += count_correct(logits_of(batch.images), batch.labels);
    }
    if let Some(e) = loader.take_error() {
        return Err(e.into());
    }
    Ok(t)
}
