//! `mmrl-train`: losses, training, evaluation protocols and checkpoints.

pub mod error;
pub mod zeroshot;

pub use error::{Error, Result};
