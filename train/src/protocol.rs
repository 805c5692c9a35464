//! What a protocol trains on and scores (CoOp/CoCoOp/MMRL scripts): the
//! training class set of a seed's few-shot draw, and each evaluated set
//! with the classes it holds relative to training (seen or unseen), which
//! decides the logits a method scores it with.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use mmrl_data::dataset::{self, Benchmark, Item, Prepared, Request, Source};
use mmrl_data::few_shot::Subsample;
use mmrl_data::loader::Sample;
use mmrl_model::methods::Classes;

use crate::config::{Protocol, TrainConfig};
use crate::{Error, Result};

/// One evaluation of a seed: a class set of a dataset.
#[derive(Debug, Clone)]
pub struct EvalTarget {
    /// Its key in the results (`base`, `novel`, `accuracy`, a dataset stem).
    pub key: String,
    /// `None`: the training dataset.
    pub dataset: Option<Benchmark>,
    pub subsample: Subsample,
    /// Seen: base classes, few-shot, the source; unseen: the rest.
    pub classes: Classes,
}

/// The training class set and the evaluated sets of a protocol (MMRL's
/// `MMRLTrainer.test` rule: fused logits for base classes, few-shot and
/// ImageNet as source; the class head for novel classes and other datasets).
pub fn targets(cfg: &TrainConfig, source: &Source) -> Result<(Subsample, Vec<EvalTarget>)> {
    let own = |key: &str, subsample, classes| EvalTarget {
        key: key.into(),
        dataset: None,
        subsample,
        classes,
    };
    Ok(match cfg.protocol {
        Protocol::Base2novel => (
            Subsample::Base,
            vec![
                own("base", Subsample::Base, Classes::Seen),
                own("novel", Subsample::Novel, Classes::Unseen),
            ],
        ),
        Protocol::Fewshot => (
            Subsample::All,
            vec![own("accuracy", Subsample::All, Classes::Seen)],
        ),
        Protocol::Cross | Protocol::Dg => {
            let defaults: &[Benchmark] = if cfg.protocol == Protocol::Cross {
                &Benchmark::CROSS_TARGETS
            } else {
                &Benchmark::DG_TARGETS
            };
            let targets: Vec<Benchmark> = if cfg.targets.is_empty() {
                defaults.to_vec()
            } else {
                cfg.targets
                    .iter()
                    .map(|t| {
                        Benchmark::from_name(t).ok_or_else(|| Error::UnknownTarget {
                            protocol: cfg.protocol.name(),
                            name: t.clone(),
                            known: dataset::catalog::known_names(),
                        })
                    })
                    .collect::<Result<_>>()?
            };
            let source_key = match source {
                Source::Benchmark(b) => b.info().stem.to_string(),
                _ => "source".into(),
            };
            let mut v = vec![own(&source_key, Subsample::All, Classes::Seen)];
            v.extend(targets.into_iter().map(|t| EvalTarget {
                key: t.info().stem.into(),
                dataset: Some(t),
                subsample: Subsample::All,
                classes: Classes::Unseen,
            }));
            (Subsample::All, v)
        }
    })
}

/// The loader's samples of a split list.
pub fn samples(items: &[Item]) -> Vec<Sample> {
    items
        .iter()
        .map(|i| Sample {
            path: i.path.clone(),
            label: i.label,
        })
        .collect()
}

/// The full split lists of a run's datasets, each read once per run
/// (ImageNet lists 1.28 M files): the training dataset's, and the
/// cross-dataset / DG targets' when first needed.
pub struct RunData<'a> {
    pub splits: dataset::Splits,
    root: &'a Path,
    targets: RefCell<HashMap<Benchmark, dataset::Splits>>,
}

impl<'a> RunData<'a> {
    /// Reads the training dataset's lists.
    pub fn read(source: &Source, root: &'a Path, classnames: Option<&Path>) -> Result<Self> {
        Ok(RunData {
            splits: dataset::read_splits(source, root, classnames, true)?,
            root,
            targets: RefCell::new(HashMap::new()),
        })
    }

    /// A seed's few-shot draw of the training dataset for `subsample`;
    /// `warn`: print the dataset's warnings (once per run is enough).
    pub fn select(
        &self,
        shots: usize,
        seed: u64,
        subsample: Subsample,
        warn: bool,
    ) -> Result<Prepared> {
        let req = Request {
            shots,
            seed,
            subsample,
            manifest: None,
        };
        let p = dataset::prepare(&self.splits, &req)?;
        if warn {
            for w in &p.warnings {
                eprintln!("warning: {w}");
            }
        }
        Ok(p)
    }

    /// The data of an evaluated set and its template (`template` for the
    /// training dataset; another dataset's own).
    pub fn target(
        &self,
        t: &EvalTarget,
        train: &Prepared,
        train_subsample: Subsample,
        shots: usize,
        seed: u64,
        template: &str,
    ) -> Result<(Prepared, String)> {
        match t.dataset {
            None if t.subsample == train_subsample => Ok((train.clone(), template.into())),
            None => Ok((
                self.select(shots, seed, t.subsample, false)?,
                template.into(),
            )),
            Some(b) => {
                if !self.targets.borrow().contains_key(&b) {
                    let read = dataset::read_splits(&Source::Benchmark(b), self.root, None, true)?;
                    self.targets.borrow_mut().insert(b, read);
                }
                let cache = self.targets.borrow();
                let req = Request {
                    shots: 0,
                    seed,
                    subsample: Subsample::All,
                    manifest: None,
                };
                let p = dataset::prepare(&cache[&b], &req)?;
                let tpl = p.template.clone();
                Ok((p, tpl))
            }
        }
    }
}
