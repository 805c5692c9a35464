//! One readable line per epoch: loss, accuracy, learning rate, the method's
//! loss terms and images/s for training, then the validation line (when
//! the run validates). Burn's own renderers print a
//! line per batch when the output is not a terminal.

use std::collections::HashMap;
use std::time::Instant;

use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// Prints `epoch e/E train ...` and `epoch e/E valid ...` lines.
pub struct EpochLines {
    label: String,
    names: HashMap<MetricId, String>,
    train: Vec<(String, String)>,
    /// `train` as of the last batch rendered: Burn hands the renderer a new
    /// epoch's first metrics before it renders that batch, so the finished
    /// epoch's line is printed from this copy.
    train_rendered: Vec<(String, String)>,
    valid: Vec<(String, String)>,
    epoch: Option<usize>,
    epochs: usize,
    items: usize,
    started: Instant,
    train_printed: bool,
}

impl EpochLines {
    /// `label` prefixes every line (e.g. `seed 1`).
    pub fn new(label: impl Into<String>) -> Self {
        EpochLines {
            label: label.into(),
            names: HashMap::new(),
            train: Vec::new(),
            train_rendered: Vec::new(),
            valid: Vec::new(),
            epoch: None,
            epochs: 0,
            items: 0,
            started: Instant::now(),
            train_printed: false,
        }
    }

    fn record(
        names: &HashMap<MetricId, String>,
        list: &mut Vec<(String, String)>,
        state: MetricState,
    ) {
        let (entry, shown) = match state {
            MetricState::Generic(e) => {
                let f = e.serialized_entry.formatted.clone();
                (e, f)
            }
            MetricState::Numeric(e, _) => {
                let f = e.serialized_entry.formatted.clone();
                (e, f)
            }
        };
        let name = names
            .get(&entry.metric_id)
            .cloned()
            .unwrap_or_else(|| "metric".into());
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = shown,
            None => list.push((name, shown)),
        }
    }

    fn line(&self, split: &str, list: &[(String, String)], extra: &str) -> String {
        let metrics: Vec<String> = list
            .iter()
            .map(|(n, v)| format!("{n} {}", v.trim()))
            .collect();
        format!(
            "{} epoch {}/{} {split}: {}{extra}",
            self.label,
            self.epoch.unwrap_or(0),
            self.epochs,
            metrics.join(", ")
        )
    }

    /// Prints the training line of the epoch being rendered, from the
    /// metrics as of its last batch.
    fn flush_train(&mut self) {
        if !self.train_printed && self.epoch.is_some() {
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let extra = format!(", {:.1} images/s", self.items as f64 / secs);
            println!("{}", self.line("train", &self.train_rendered, &extra));
            self.train_printed = true;
        }
    }

    fn flush_valid(&mut self) {
        if !self.valid.is_empty() {
            println!("{}", self.line("valid", &self.valid, ""));
            self.valid.clear();
        }
    }
}

impl MetricsRendererTraining for EpochLines {
    fn update_train(&mut self, state: MetricState) {
        Self::record(&self.names, &mut self.train, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        Self::record(&self.names, &mut self.valid, state);
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        self.epochs = item.global_progress.items_total;
        if self.epoch != Some(epoch) {
            // `train` already holds the new epoch's first batch.
            self.flush_train();
            self.flush_valid();
            self.epoch = Some(epoch);
            self.items = 0;
            self.started = Instant::now();
            self.train_printed = false;
        }
        if let Some(p) = item.progress {
            self.items = p.items_processed;
        }
        self.train_rendered = self.train.clone();
    }

    fn render_valid(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {
        self.flush_train();
    }

    fn on_train_end(
        &mut self,
        _summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.flush_train();
        self.flush_valid();
        Ok(())
    }
}

impl MetricsRendererEvaluation for EpochLines {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for EpochLines {
    fn manual_close(&mut self) {
        self.flush_train();
        self.flush_valid();
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}
