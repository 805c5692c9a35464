//! Errors of the model crate. Each names the file, key or value at fault.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while building or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `config.json` is not valid JSON of the expected shape.
    #[error("{path} is not a valid CLIP config.json: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config's numbers do not describe a buildable model.
    #[error("invalid CLIP config in {path}: {msg}")]
    InvalidConfig { path: PathBuf, msg: String },
    /// The weights file could not be parsed (truncated, corrupt, wrong format).
    #[error("cannot read weights from {path}: {msg}")]
    WeightsFormat { path: PathBuf, msg: String },
    /// The tensor names match no known CLIP layout.
    #[error("{path}: unknown weights layout: {msg}")]
    UnknownLayout { path: PathBuf, msg: String },
    /// A tensor the model needs is not in the file.
    #[error("{path}: missing tensor `{key}` (needed for `{param}`){hint}")]
    MissingTensor {
        path: PathBuf,
        key: String,
        param: String,
        hint: String,
    },
    /// The file has tensors the model does not use.
    #[error("{path}: unexpected tensor(s) {keys}: the file does not match this CLIP architecture")]
    UnexpectedTensors { path: PathBuf, keys: String },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?} for `{param}`")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        param: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype we cannot convert to f32.
    #[error("{path}: tensor `{key}` has unsupported dtype {dtype}")]
    DType {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    /// A method's setting is out of range or does not fit the CLIP it is
    /// built on.
    #[error("[{method}] {key}: {msg}")]
    MethodConfig {
        /// The method's name (its TOML table).
        method: &'static str,
        /// The setting at fault.
        key: &'static str,
        /// What is wrong and what would be right.
        msg: String,
    },
    /// A class set's prompts do not fit the method.
    #[error("{method}: the class prompts do not fit: {msg}")]
    Prompts { method: &'static str, msg: String },
    /// The path is neither a weights file nor a Hugging Face model folder.
    #[error("{path}: {msg}")]
    BadPath { path: PathBuf, msg: String },
}
