//! `mmrl-train`: losses, training, evaluation protocols and checkpoints.

pub mod demo;
pub mod error;
pub mod method;
pub mod mmrl_loss;
pub mod pretrain;
pub mod renderer;
pub mod run;
pub mod schedule;
pub mod zeroshot;

pub use error::{Error, Result};
