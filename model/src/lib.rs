//! `mmrl-model`: CLIP and the methods that adapt it, as Burn modules written
//! once and generic over `B: Backend`, plus weight loading.

pub mod clip;
pub mod error;
pub mod frozen;
pub mod init;
pub mod kernels;
pub mod methods;

pub use error::{Error, Result};
pub use frozen::Frozen;
pub use kernels::{ClipAutodiffBackend, ClipBackend};
