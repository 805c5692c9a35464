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
    #[error("unknown method `{name}`; known: {known}")]
    UnknownMethod { name: String, known: String },
    #[error(
        "no recipe for {method} under the {protocol} protocol (looked for configs/{tried}); \
         give one with --config FILE"
    )]
    NoRecipe {
        method: String,
        protocol: &'static str,
        tried: String,
    },
    #[error("{origin}: {msg}")]
    ConfigSyntax { origin: String, msg: String },
    #[error("{origin}: unknown setting `{key}`; a config holds {known}")]
    UnknownSetting {
        origin: String,
        key: String,
        known: String,
    },
    #[error("[{method}]: {msg}")]
    MethodSettings { method: String, msg: String },
    #[error("--set {assignment}: {msg}")]
    BadAssignment { assignment: String, msg: String },
    #[error("setting `{key}` {msg}")]
    BadSetting { key: &'static str, msg: String },
    #[error("unknown {protocol} target dataset {name:?}; known: {known}")]
    UnknownTarget {
        protocol: &'static str,
        name: String,
        known: String,
    },
    #[error("{path} was written with another config; resume with the same arguments (or choose another --output)")]
    ResumeMismatch { path: std::path::PathBuf },
    #[error(
        "{path} holds a previous run; pass --resume to continue it, or choose another --output"
    )]
    PreviousRun { path: std::path::PathBuf },
    #[error(
        "cannot write {path}: {source}; training stopped. Free space (or restore the folder \
         or its permissions) and run the same command with --resume: it continues from the \
         last complete epoch with the same numbers"
    )]
    WriteFailed {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("training in {path} was interrupted; run the same command with --resume to continue")]
    Interrupted { path: std::path::PathBuf },
    #[error(
        "the demo was interrupted; run the same command again to start it over (a CLIP whose pretraining finished stays cached and is reused)"
    )]
    DemoInterrupted,
    #[error("{path} is not a seed result ({msg}); delete it to rerun the seed")]
    BadSeedResult {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error("{path} is not a readable safetensors checkpoint ({msg}); it may be truncated: use another copy")]
    BadCheckpoint {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error(
        "{holder} is running in this output folder ({path}); wait for it to finish or choose \
         another --output (if no such run exists, delete {path})"
    )]
    RunLocked {
        path: std::path::PathBuf,
        holder: String,
    },
    #[error("{path}: {msg}; run the seed again without --resume")]
    LearnerCheckpoint {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error(
        "{path} records {what} that cannot be read ({msg}); it was written by another mmrl version"
    )]
    BadCheckpointHeader {
        path: std::path::PathBuf,
        what: &'static str,
        msg: String,
    },
    #[error(
        "{path} was trained on other CLIP weights (sha256 {want}…) than {clip} (sha256 {have}…); \
         pass the CLIP weights it was trained with"
    )]
    OtherClip {
        path: std::path::PathBuf,
        clip: std::path::PathBuf,
        want: String,
        have: String,
    },
    #[error("{path} is a {found} checkpoint; pass --method {found}")]
    WrongMethod {
        path: std::path::PathBuf,
        found: String,
    },
    #[error("{path} is not empty and holds no demo output; choose another --output")]
    NotDemoOutput { path: std::path::PathBuf },
    #[error("the pretraining CLIP config is invalid: {msg}")]
    PretrainConfig { msg: String },
    #[error("cannot serialise {what}: {msg}")]
    Serialise { what: &'static str, msg: String },
}
