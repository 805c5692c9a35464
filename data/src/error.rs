//! Errors of the data crate. Each names the file or value at fault.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while reading text, images or datasets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (a full disk, a folder that vanished,
    /// permissions).
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer file is not usable.
    #[error("{path}: not a usable CLIP tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    /// Encoding a text failed.
    #[error("cannot tokenize {text:?}: {msg}")]
    Encode { text: String, msg: String },
    /// A configuration file is not usable.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// A dataset's layout, split file, manifest or class list is not usable;
    /// the message says what to fix.
    #[error("{path}: {msg}")]
    Dataset { path: PathBuf, msg: String },
    /// A request that cannot be served (unknown dataset, bad option value).
    #[error("{0}")]
    Invalid(String),
    /// An image could not be decoded.
    #[error("cannot decode image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
}

impl Error {
    /// A [`Error::Dataset`] for `path`.
    pub fn dataset(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Dataset {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
