//! `mmrl-train`: losses, training, evaluation protocols and checkpoints.

pub mod error;
pub mod mmrl_loss;
pub mod zeroshot;

pub use error::{Error, Result};
