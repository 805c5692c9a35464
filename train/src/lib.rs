//! `mmrl-train`: losses, training, evaluation protocols and checkpoints.
//!
//! - [`registry`]: the one list of methods, by name.
//! - [`loss`]: one loss per method ([`mmrl_loss`] for MMRL).
//! - [`step`]: the one training step, Burn metrics for loss terms.
//! - [`config`]: run settings, recipes, `--set`.
//! - [`protocol`]: what a protocol trains on and scores.
//! - [`fit`]: one seed on Burn's Learner.
//! - [`lock`]: one run per output folder; [`durable`]: training's log and
//!   checkpoint writers, failing cleanly.
//! - [`run`]: a run over seeds; [`results`]: its tables; [`checkpoint`]:
//!   self-describing checkpoints; [`eval`]: accuracy over a loader.

pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod durable;
pub mod error;
pub mod eval;
pub mod fit;
pub mod lock;
pub mod loss;
pub mod mmrl_loss;
pub mod pretrain;
pub mod protocol;
pub mod registry;
pub mod renderer;
pub mod results;
pub mod run;
pub mod schedule;
pub mod signals;
pub mod step;
pub mod zeroshot;

pub use error::{Error, Result};
