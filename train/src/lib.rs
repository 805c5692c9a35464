//! `mmrl-train`: losses, training, evaluation protocols and checkpoints.

pub mod error;
pub mod method;
pub mod mmrl_loss;
pub mod renderer;
pub mod run;
pub mod schedule;
pub mod zeroshot;

pub use error::{Error, Result};
