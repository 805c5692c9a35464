//! Errors of the training and evaluation crate.

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while classifying, training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] mmrl_data::Error),
    #[error(transparent)]
    Model(#[from] mmrl_model::Error),
    #[error(
        "the class list is empty: give at least one class (--classes a,b,c or --classes-file)"
    )]
    NoClasses,
    #[error("class {0} of the list is empty")]
    EmptyClassName(usize),
    #[error("class `{0}` appears twice in the class list")]
    DuplicateClass(String),
    #[error("template {0:?} has no `{{}}` where the class name goes, e.g. \"a photo of a {{}}.\"")]
    Template(String),
    #[error(
        "the tokenizer has {tokenizer} tokens but the model's token embedding has {model}: \
         pass the tokenizer that belongs to these weights with --tokenizer"
    )]
    VocabMismatch { tokenizer: usize, model: usize },
    #[error("{path}: {msg}")]
    Config {
        path: std::path::PathBuf,
        msg: String,
    },
}
