//! `mmrl-data`: CLIP's tokenizer and image preprocessing; datasets, few-shot
//! sampling and batching.

pub mod augment;
pub mod dataset;
pub mod error;
pub mod few_shot;
pub mod loader;
pub mod preprocess;
pub mod pyrandom;
pub mod tokenizer;
pub mod world;

pub use error::{Error, Result};
pub use preprocess::PreprocessConfig;
pub use tokenizer::{ClipTokenizer, TokenBatch};
