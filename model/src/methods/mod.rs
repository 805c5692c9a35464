//! Methods that adapt CLIP. Each is a module holding its own parameters plus
//! the frozen [`Clip`], and hooks into CLIP's one transformer through
//! [`BlockHook`](crate::clip::BlockHook).
//!
//! Every method implements [`Method`]: its config (its own TOML table), how
//! it is built and loaded, what it computes once per class set, a training
//! forward that returns everything its loss needs, its logits for seen and
//! unseen classes, and its trained tensors under the reference
//! implementation's names. The trainer, `eval`, `predict` and the demo only
//! speak to this trait; adding a method means one new file here, its loss in
//! `mmrl-train`, its config files and one registry line.
//!
//! How the methods this project plans attach to CLIP, all through this one
//! trait:
//! - tokens inserted or replaced before a block of either tower (MMRL,
//!   MaPLe, COMMA, PromptSRC): a [`BlockHook`](crate::clip::BlockHook);
//! - a residual adapter after a block (MMA): a hook on the next block's input
//!   (after the last block, in the method's own pooling);
//! - learned text context (CoOp, KgCoOp): the prompts' embeddings;
//! - low-rank updates of attention projections (CLIP-LoRA): the method owns
//!   the adapted copies of the projections it trains;
//! - an attention adapter over the final features (Multi-Modal Adapter):
//!   the method's own logits;
//! - loss terms against the frozen CLIP (MMRL, KgCoOp, PromptSRC, COMMA):
//!   the zero-shot targets computed in [`Method::set_classes`] and
//!   [`Method::forward`].

use std::path::Path;

use burn::module::{Module, ModuleDisplay};
use burn::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clip::Clip;
use crate::Result;
use crate::{ClipAutodiffBackend, ClipBackend};

pub mod checkpoint;
pub mod comma;
pub mod comma_io;
pub mod coop;
pub mod coop_io;
pub mod mm_adapter;
pub mod mm_adapter_io;
pub mod mmrl;
pub mod mmrl_io;
pub mod zeroshot;

/// A trained tensor as a checkpoint stores it: name (the reference
/// implementation's), shape (PyTorch layout) and f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Which classes a class set holds, relative to training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classes {
    /// The classes the method was trained on (base classes, few-shot, the
    /// cross-dataset source).
    Seen,
    /// Classes never trained on (novel classes, other datasets).
    Unseen,
}

/// A class set's prompts, tokenised (host data; the model crate does not
/// tokenise).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrompts {
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// Row-major token ids, `[classes, seq]`, cut after the longest prompt's
    /// end token (under the causal mask the features are the same).
    pub ids: Vec<i64>,
    /// Tokens per prompt.
    pub seq: usize,
    /// End-token position of each prompt.
    pub eot: Vec<i64>,
    /// Each class name's BPE token count (`_` read as a space; no start or
    /// end token): where prompt learners put the name among their context.
    pub name_lens: Vec<usize>,
}

impl ClassPrompts {
    /// Number of classes.
    pub fn rows(&self) -> usize {
        self.eot.len()
    }

    /// The ids and end positions as tensors.
    ///
    /// # Shapes
    /// - output: (`[classes, seq]`, `[classes]`)
    pub fn tensors<B: ClipBackend>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
        let rows = self.rows();
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(self.ids.clone(), [rows * self.seq]),
            device,
        )
        .reshape([rows, self.seq]);
        let eot = Tensor::from_data(TensorData::new(self.eot.clone(), [rows]), device);
        (ids, eot)
    }
}

/// A hand-written prompt: `template` with `{}` replaced by the class name,
/// every `_` of the name read as a space (`CUSTOM_TEMPLATES` in CoOp's
/// `trainers/zsclip.py` and MMRL's `trainers/mmrl.py`).
pub fn fill_template(template: &str, class: &str) -> String {
    template.replace("{}", &class.replace('_', " "))
}

/// A method's settings: its own table in a run's TOML (`[mmrl]`, `[coop]`).
pub trait MethodConfig:
    Serialize + DeserializeOwned + Clone + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The reference's settings for a dataset (Dassl's name, e.g.
    /// `ImageNet`); the defaults for datasets it does not list. Values a
    /// user sets are applied on top.
    fn for_dataset(_dataset: &str) -> Self {
        Self::default()
    }
}

/// What a method's predictions hold besides the logits it is scored with.
pub struct Prediction<B: Backend> {
    /// The logits the method is scored with, `[batch, classes]`.
    pub logits: Tensor<B, 2>,
    /// Other heads by name (`class`, `rep`), each `[batch, classes]`.
    pub heads: Vec<(&'static str, Tensor<B, 2>)>,
}

/// An adaptation method: one module around a frozen CLIP.
///
/// Every parameter the module exposes to Burn's visitors is trained (the
/// trainer marks them so); frozen parts (CLIP, zero-shot targets) sit in
/// [`Frozen`](crate::Frozen), outside parameters, optimiser and records.
/// The method holds the class set it currently scores (set with
/// [`Method::set_classes`]): its prompts and whatever stays fixed for it
/// (frozen lower layers, zero-shot targets), outside the trained
/// parameters and the records.
pub trait Method<B: ClipBackend>: Module<B> + ModuleDisplay + 'static {
    /// The name on the command line, in configs and in checkpoints.
    const NAME: &'static str;
    /// One line for `--help` and the README.
    const SUMMARY: &'static str;
    /// Its settings (its TOML table is `[NAME]`).
    type Config: MethodConfig;
    /// What the training forward returns for the loss.
    type Output;
    /// The text side of a class set, computed once for scoring.
    type Text: Clone;

    /// The prompt of each class: the template filled in, or the method's
    /// own prompt (CoOp: context placeholders and the name). A method may
    /// append further prompts it needs after the classes' (COMMA: the
    /// template prompts of its knowledge-preservation target); the
    /// tokenised rows reach it in this order.
    fn prompt_texts(config: &Self::Config, classes: &[String], template: &str) -> Vec<String>;

    /// A fresh method (the reference's initialisation) around `clip`, which
    /// it freezes, set to the class set `prompts`.
    fn init(
        config: &Self::Config,
        clip: Clip<B>,
        prompts: &ClassPrompts,
        device: &B::Device,
    ) -> Result<Self>;

    /// A trained method from a checkpoint: one written by `mmrl train` or
    /// the reference implementation's. Set a class set before scoring.
    fn load(config: &Self::Config, clip: Clip<B>, path: &Path, device: &B::Device) -> Result<Self>;

    /// The settings this method runs with (what a checkpoint records).
    fn config(&self) -> Self::Config;

    /// Switches to a class set, computing once what stays fixed for it.
    fn set_classes(self, prompts: &ClassPrompts) -> Result<Self>;

    /// The training forward for one batch of images against the current
    /// class set: every head and feature the loss needs. Frozen work runs
    /// on the inner backend, so no graph is kept for it.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    fn forward(&self, images: Tensor<B, 4>) -> Self::Output
    where
        B: ClipAutodiffBackend;

    /// The training forward when the training images are the same in every
    /// epoch (training without augmentation), each named by its position in
    /// the training set (`ids`): a method may cache frozen per-image work
    /// across epochs (the Multi-Modal Adapter caches CLIP's image features,
    /// so CLIP sees each image once). The default is [`Method::forward`].
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`, `ids`: `batch` positions
    fn forward_fixed(&self, images: Tensor<B, 4>, ids: &[usize]) -> Self::Output
    where
        B: ClipAutodiffBackend,
    {
        let _ = ids;
        self.forward(images)
    }

    /// The current class set's text side, for [`Method::predict`].
    fn text(&self) -> Self::Text;

    /// Logits of images against the current class set.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, size, size]`
    /// - output: `logits` and each head `[batch, classes]`
    fn predict(&self, images: Tensor<B, 4>, text: &Self::Text, classes: Classes) -> Prediction<B>;

    /// The trained tensors under the reference implementation's names and
    /// layouts (class-independent only, as the reference saves them).
    fn state(&self) -> Vec<NamedTensor>;

    /// Number of trained parameters (zero: nothing to train).
    fn num_trainable_params(&self) -> usize;
}
