//! The one training step every method shares: [`Trainee`] wraps a method
//! for Burn's Learner (`TrainStep` / `InferenceStep`), [`StepOutput`] carries
//! the loss, the logits and the method's loss terms to Burn's metrics, and
//! [`LossTermMetric`] shows each term in the epoch line and the metric logs.
//!
//! No value is read back to the host inside the step: Burn's metric thread
//! reads the loss, logits and every term in one transaction per batch.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::Transaction;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    AccuracyInput, Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata,
    MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use mmrl_data::loader::ImageBatch;
use mmrl_model::methods::Classes;

use crate::loss::{cross_entropy, MethodLoss};
use mmrl_model::{ClipAutodiffBackend, ClipBackend};

/// A method as Burn's Learner trains it. The method holds its class set
/// (the training classes), so the step needs nothing else.
#[derive(Module, Debug)]
pub struct Trainee<B: Backend, M: Module<B>> {
    /// The method.
    pub model: M,
    /// Training images are the same every epoch (no augmentation): the
    /// step calls [`Method::forward_fixed`](mmrl_model::methods::Method::forward_fixed)
    /// with each image's position, so the method may cache frozen work.
    pub fixed: bool,
    _backend: PhantomData<B>,
}

impl<B: ClipBackend, M: Module<B>> Trainee<B, M> {
    /// Wraps a method set to its training classes.
    pub fn new(model: M) -> Self {
        Trainee {
            model,
            fixed: false,
            _backend: PhantomData,
        }
    }

    /// Declares the training images fixed (no augmentation).
    pub fn fixed_images(self, fixed: bool) -> Self {
        Trainee { fixed, ..self }
    }
}

impl<B, M> TrainStep for Trainee<B, M>
where
    B: ClipAutodiffBackend,
    M: MethodLoss<B> + AutodiffModule<B>,
    M::InnerModule: burn::module::ModuleDisplay,
{
    type Input = ImageBatch<B>;
    type Output = StepOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<StepOutput<B>> {
        let output = if self.fixed {
            self.model.forward_fixed(batch.images, &batch.indices)
        } else {
            self.model.forward(batch.images)
        };
        let loss = self.model.loss(output, batch.labels.clone());
        let grads = loss.total.backward();
        let terms = (!loss.terms.is_empty()).then(|| Tensor::cat(loss.terms, 0).detach());
        TrainOutput::new(
            self,
            grads,
            StepOutput {
                loss: loss.total,
                output: loss.logits,
                targets: batch.labels,
                terms,
            },
        )
    }
}

/// Validation (only when the config asks for it, `val_every`): the seen
/// classes' logits and their cross entropy.
impl<B: ClipBackend, M: MethodLoss<B>> InferenceStep for Trainee<B, M> {
    type Input = ImageBatch<B>;
    type Output = StepOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> StepOutput<B> {
        let text = self.model.text();
        let logits = self
            .model
            .predict(batch.images, &text, Classes::Seen)
            .logits;
        StepOutput {
            loss: cross_entropy(logits.clone(), batch.labels.clone()),
            output: logits,
            targets: batch.labels,
            terms: None,
        }
    }
}

/// A method built on the inner backend (where its class set's frozen work
/// runs), moved to the autodiff backend with every parameter it exposes
/// marked as trained. A method's frozen parts (CLIP) sit in
/// [`Frozen`](mmrl_model::Frozen), which mappers do not see, so they stay
/// frozen. (A parameter made on a backend without autodiff does not
/// remember that it is trainable: `from_inner` alone would freeze it.)
pub fn trainable<B: ClipAutodiffBackend, M: AutodiffModule<B>>(inner: M::InnerModule) -> M {
    struct RequireGrad;
    impl<B: ClipBackend> ModuleMapper<B> for RequireGrad {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.require_grad(), mapper)
        }
    }
    M::from_inner(inner).map(&mut RequireGrad)
}

/// One batch's loss, logits, labels and loss terms.
pub struct StepOutput<B: Backend> {
    /// `[1]`
    pub loss: Tensor<B, 1>,
    /// `[batch, classes]`
    pub output: Tensor<B, 2>,
    /// `[batch]`
    pub targets: Tensor<B, 1, Int>,
    /// `[terms]`, in [`MethodLoss::TERMS`] order.
    pub terms: Option<Tensor<B, 1>>,
}

impl<B: ClipBackend> ItemLazy for StepOutput<B> {
    type ItemSync = StepOutput<burn::backend::Flex>;

    /// One device read per batch for everything the metrics need.
    fn sync(self) -> Self::ItemSync {
        let mut tx = Transaction::default()
            .register(self.output)
            .register(self.loss)
            .register(self.targets);
        if let Some(t) = self.terms {
            tx = tx.register(t);
        }
        let mut data = tx.execute().into_iter();
        let device = Default::default();
        let mut next = || data.next().expect("one datum per registered tensor");
        let output = Tensor::from_data(next(), &device);
        let loss = Tensor::from_data(next(), &device);
        let targets = Tensor::from_data(next(), &device);
        let terms = data.next().map(|d| Tensor::from_data(d, &device));
        StepOutput {
            loss,
            output,
            targets,
            terms,
        }
    }
}

impl<B: ClipBackend> Adaptor<AccuracyInput<B>> for StepOutput<B> {
    fn adapt(&self) -> AccuracyInput<B> {
        AccuracyInput::new(self.output.clone(), self.targets.clone())
    }
}

impl<B: ClipBackend> Adaptor<LossInput<B>> for StepOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

/// The loss terms of one batch (already on the host when a metric reads them).
pub struct LossTermsInput<B: Backend> {
    terms: Option<Tensor<B, 1>>,
    batch: usize,
}

impl<B: ClipBackend> Adaptor<LossTermsInput<B>> for StepOutput<B> {
    fn adapt(&self) -> LossTermsInput<B> {
        LossTermsInput {
            terms: self.terms.clone(),
            batch: self.targets.dims()[0],
        }
    }
}

/// One named term of a method's loss, averaged over the epoch as Burn's
/// loss metric is (weighted by batch size).
#[derive(Clone)]
pub struct LossTermMetric<B: Backend> {
    index: usize,
    name: MetricName,
    state: NumericMetricState,
    _backend: PhantomData<B>,
}

impl<B: ClipBackend> LossTermMetric<B> {
    /// The term at `index` of [`MethodLoss::TERMS`], shown as `name`.
    pub fn new(index: usize, name: &str) -> Self {
        LossTermMetric {
            index,
            name: Arc::new(name.to_string()),
            state: NumericMetricState::default(),
            _backend: PhantomData,
        }
    }
}

impl<B: ClipBackend> Metric for LossTermMetric<B> {
    type Input = LossTermsInput<B>;

    fn update(&mut self, input: &LossTermsInput<B>, _: &MetricMetadata) -> SerializedEntry {
        let value = input
            .terms
            .as_ref()
            .and_then(|t| {
                t.clone()
                    .narrow(0, self.index, 1)
                    .into_data()
                    .iter::<f64>()
                    .next()
            })
            .unwrap_or(f64::NAN);
        self.state.update(
            value,
            input.batch,
            FormatOptions::new(self.name()).precision(4),
        )
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl<B: ClipBackend> Numeric for LossTermMetric<B> {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamWConfig, Optimizer};
    use mmrl_model::clip::{Clip, ClipConfig};
    use mmrl_model::methods::mmrl::{Mmrl, MmrlConfig};
    use mmrl_model::methods::{ClassPrompts, Method};

    type B = burn::backend::Autodiff<burn::backend::Flex>;
    type Inner = burn::backend::Flex;

    /// A module's weights as JSON, through its record: equal strings mean
    /// bit-identical weights.
    fn weights<M: Module<Inner>>(m: M) -> String {
        let item = burn::record::Record::<Inner>::into_item::<burn::record::FullPrecisionSettings>(
            m.into_record(),
        );
        serde_json::to_string(&item).unwrap()
    }

    fn tiny_clip(device: &burn::tensor::Device<B>) -> Clip<Inner> {
        let mut c = ClipConfig::small(8, 2, 1, 8, 4);
        c.text_config.vocab_size = 20;
        c.text_config.max_position_embeddings = 8;
        c.projection_dim = 4;
        c.init(device)
    }

    #[test]
    fn training_steps_lower_the_loss_report_every_term_and_leave_clip_bit_identical() {
        let device = Default::default();
        B::seed(&device, 3);
        mmrl_model::init::seed(3);
        let cfg = MmrlConfig {
            rep_dim: 6,
            n_rep_tokens: 2,
            ..MmrlConfig::default()
        };
        // `no_grad` maps every parameter, which initialises the lazily
        // initialised ones: the clone then holds the same values.
        let clip = tiny_clip(&device).no_grad();
        let before = clip.clone();
        // Three classes, prompts [SOS, a, b, EOT, pad].
        let prompts = ClassPrompts {
            classes: vec!["a".into(), "b".into(), "c".into()],
            ids: vec![18, 2, 3, 19, 0, 18, 4, 5, 19, 0, 18, 6, 7, 19, 0],
            seq: 5,
            eot: vec![3, 3, 3],
            name_lens: vec![1, 1, 1],
        };
        // Built and set to its classes on the inner backend, as the trainer does.
        let inner = <Mmrl<Inner> as Method<Inner>>::init(&cfg, clip, &prompts, &device).unwrap();
        let mut trainee = Trainee::<B, Mmrl<B>>::new(trainable(inner));
        let images = Tensor::<B, 4>::random(
            [6, 3, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [6]),
            &device,
        );
        let batch = ImageBatch {
            images,
            labels,
            indices: (0..6).collect(),
        };
        let mut optim = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(5e-4)
            .init();
        let r0 = trainee
            .model
            .representation_learner
            .compound_rep_tokens
            .val()
            .into_data();
        let mut losses = Vec::new();
        for _ in 0..30 {
            let out = TrainStep::step(&trainee, batch.clone());
            let item = out.item.sync();
            losses.push(item.loss.into_scalar().elem::<f32>());
            let terms = item.terms.expect("MMRL reports its terms");
            assert_eq!(terms.dims(), [4]);
            trainee = optim.step(1e-2, trainee, out.grads);
        }
        assert!(losses[29] < losses[0] * 0.8, "loss falls: {losses:?}");
        let r1 = trainee
            .model
            .representation_learner
            .compound_rep_tokens
            .val()
            .into_data();
        assert_ne!(r0, r1, "R is trained");
        // The frozen CLIP is bit-identical: compare every weight through its record.
        let after = trainee.model.clip.0.valid();
        assert!(weights(before) == weights(after), "CLIP changed");
        assert_eq!(
            Module::num_params(&trainee),
            trainee.model.num_trainable_params()
        );
        // The terms metric reads its term; the step's output adapts to it.
        let out = TrainStep::step(&trainee, batch).item.sync();
        let mut metric = LossTermMetric::new(2, "reg_image");
        let input: LossTermsInput<burn::backend::Flex> = out.adapt();
        let meta = MetricMetadata {
            progress: burn::data::dataloader::Progress {
                items_processed: 1,
                items_total: 1,
            },
            global_progress: burn::data::dataloader::Progress {
                items_processed: 1,
                items_total: 1,
            },
            iteration: Some(1),
            lr: None,
        };
        metric.update(&input, &meta);
        let want = out
            .terms
            .unwrap()
            .narrow(0, 2, 1)
            .into_scalar()
            .elem::<f64>();
        assert!((metric.value().current() - want).abs() < 1e-12);
    }

    /// COMMA through the trainer's step with AdamW (weight decay on): the
    /// loss falls; the context, `proj` and the deep text prompts are
    /// trained; CLIP stays bit-identical; the vision-prompt generators stay
    /// bit-identical too unless `train_generators` (the reference's `.data`
    /// cut: they never receive a gradient, so even weight decay leaves them).
    fn train_comma(train_generators: bool) -> (Vec<f32>, [bool; 4]) {
        use mmrl_model::methods::comma::{Comma, CommaConfig};
        let device = Default::default();
        B::seed(&device, 5);
        mmrl_model::init::seed(5);
        let cfg = CommaConfig {
            prompt_depth: 2,
            train_generators,
            ..CommaConfig::default()
        };
        let clip = tiny_clip(&device).no_grad();
        let before = clip.clone();
        // Three classes: the learned prompts [SOS, c, c, name, EOT], then
        // the KP target's template prompts [SOS, t, name, EOT, pad].
        let prompts = ClassPrompts {
            classes: vec!["a".into(), "b".into(), "c".into()],
            ids: vec![
                18, 10, 11, 2, 19, 18, 10, 11, 3, 19, 18, 10, 11, 4, 19, //
                18, 12, 2, 19, 0, 18, 12, 3, 19, 0, 18, 12, 4, 19, 0,
            ],
            seq: 5,
            eot: vec![4, 4, 4, 3, 3, 3],
            name_lens: vec![1, 1, 1],
        };
        // `no_grad` draws the lazily initialised parameters (the generators'
        // Linear layers), so the copy below holds their values.
        let inner = <Comma<Inner> as Method<Inner>>::init(&cfg, clip, &prompts, &device)
            .unwrap()
            .no_grad();
        assert_eq!(inner.depth(), 2);
        let start = inner.prompt_learner.clone();
        let mut trainee = Trainee::<B, Comma<B>>::new(trainable(inner));
        let batch = ImageBatch {
            images: Tensor::<B, 4>::random(
                [6, 3, 8, 8],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            ),
            labels: Tensor::<B, 1, Int>::from_data(
                TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [6]),
                &device,
            ),
            indices: (0..6).collect(),
        };
        let mut optim = AdamWConfig::new().with_weight_decay(5e-4).init();
        let mut losses = Vec::new();
        for _ in 0..30 {
            let out = TrainStep::step(&trainee, batch.clone());
            let item = out.item.sync();
            losses.push(item.loss.into_scalar().elem::<f32>());
            assert_eq!(item.terms.expect("COMMA reports its terms").dims(), [2]);
            trainee = optim.step(1e-2, trainee, out.grads);
        }
        let after = trainee.model.valid();
        assert!(
            weights(before) == weights(after.clip.0.clone()),
            "CLIP changed"
        );
        let (a, b) = (&start, &after.prompt_learner);
        let generators = |p: &mmrl_model::methods::comma::PromptLearner<Inner>| {
            weights(p.compound_prompt_projections_image_base.clone())
                + &weights(p.compound_prompt_projections_image.clone())
        };
        let changed = [
            a.ctx.val().into_data() != b.ctx.val().into_data(),
            weights(a.proj.clone()) != weights(b.proj.clone()),
            a.compound_prompts_text.val().into_data() != b.compound_prompts_text.val().into_data(),
            generators(a) != generators(b),
        ];
        (losses, changed)
    }

    #[test]
    fn comma_trains_its_prompts_and_leaves_clip_and_the_generators_bit_identical() {
        let (losses, changed) = train_comma(false);
        assert!(losses[29] < losses[0] * 0.8, "loss falls: {losses:?}");
        assert_eq!(
            changed,
            [true, true, true, false],
            "ctx, proj, text prompts, generators"
        );
        // The paper's variant trains the generators as well.
        let (_, changed) = train_comma(true);
        assert_eq!(
            changed,
            [true, true, true, true],
            "ctx, proj, text prompts, generators"
        );
    }
}
