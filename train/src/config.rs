//! A run's settings ([`TrainConfig`]), the recipes they start from (one TOML
//! per method × protocol, × dataset or shots where the reference differs),
//! and `--set key=value` overrides.

use std::collections::BTreeMap;
use std::path::Path;

use mmrl_model::clip::Precision;
use mmrl_model::methods::MethodConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/recipes.rs"));

/// The evaluation protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Train on the base half of the classes; test on base and novel.
    Base2novel,
    /// Train and test on all classes with K shots.
    Fewshot,
    /// Train on all classes of the source (ImageNet); test on the source
    /// and, with their own class names and templates, the 10 other datasets.
    Cross,
    /// As `cross`, tested on ImageNet-V2, -Sketch, -A and -R.
    Dg,
}

impl Protocol {
    /// The name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Base2novel => "base2novel",
            Protocol::Fewshot => "fewshot",
            Protocol::Cross => "cross",
            Protocol::Dg => "dg",
        }
    }

    /// `base2novel` (`b2n`), `fewshot` (`fs`), `cross` (`cd`) or `dg`.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "base2novel" | "b2n" => Some(Protocol::Base2novel),
            "fewshot" | "fs" => Some(Protocol::Fewshot),
            "cross" | "cd" => Some(Protocol::Cross),
            "dg" => Some(Protocol::Dg),
            _ => None,
        }
    }
}

/// The optimiser (`OPTIM.NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW, betas 0.9/0.999 (PyTorch's), `eps`, decoupled `weight_decay`.
    Adamw,
    /// SGD with `momentum`, dampening 0 and L2 `weight_decay` (PyTorch's).
    Sgd,
    /// Adam, betas 0.9/0.999, `eps`, L2 `weight_decay` added to the
    /// gradient (PyTorch's `torch.optim.Adam`; the Multi-Modal Adapter's).
    Adam,
}

/// How the learning rate moves over the epochs (`OPTIM.LR_SCHEDULER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduler {
    /// Dassl's: `warmup_epochs` at `warmup_lr`, then a per-epoch cosine
    /// from `lr` to 0 over `epochs`.
    #[default]
    Cosine,
    /// `lr` throughout (after any warm-up epochs).
    Constant,
}

/// Everything that decides a run's numbers: printed at start and saved
/// with the run (`config.toml`). A run starts from a recipe
/// ([`recipe_for`]); `--config` replaces it, flags and `--set` override it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The method (`mmrl train --method`; the registry's names).
    pub method: String,
    pub protocol: Protocol,
    /// Images per class in the few-shot draw.
    pub shots: usize,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub test_batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// AdamW's epsilon.
    pub eps: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// `cosine` (Dassl's) or `constant`.
    pub lr_scheduler: LrScheduler,
    /// Epochs at the constant `warmup_lr` before the cosine (Dassl's
    /// `WARMUP_EPOCH`, constant warm-up, recounted).
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    /// Augment training images (Dassl's RandomResizedCrop and flip); false:
    /// CLIP's test transform, the same image every epoch, so methods cache
    /// their frozen per-image work (the Multi-Modal Adapter's reference).
    pub augment: bool,
    /// RandomResizedCrop's scale range.
    pub crop_scale: (f64, f64),
    /// Score the validation split every N epochs during training; 0 (the
    /// reference, `TEST.FINAL_MODEL last_step`): never.
    pub val_every: usize,
    /// Early stopping (0: off, the Dassl recipes): validate after every
    /// epoch, stop after this many epochs without a higher validation
    /// accuracy, and keep the best validation epoch's weights (the
    /// Multi-Modal Adapter's reference: 10).
    pub patience: usize,
    /// Frozen CLIP's precision (`--precision`): `f32`, or `bf16`: the
    /// blocks' weights and the token embeddings stored in bfloat16 and the
    /// blocks' products run in it, everything else (and everything trained,
    /// the losses, the optimiser) in f32. CUDA and the CPU; not wgpu.
    pub precision: Precision,
    /// Decoding threads.
    pub workers: usize,
    /// Keep decoded images in memory after the first epoch.
    pub cache_images: bool,
    /// Log and skip unreadable images instead of stopping the run.
    pub skip_bad_images: bool,
    /// Prompt template; empty: the dataset's (`CUSTOM_TEMPLATES`).
    pub template: String,
    /// Cross-dataset / domain-generalisation targets (CLI names, under the
    /// same --root); empty: the protocol's ten / four.
    pub targets: Vec<String>,
    /// Each method's own table (`[mmrl]`, `[coop]`): its settings, over
    /// the reference's per-dataset defaults. Only the run's method's is used.
    #[serde(flatten)]
    pub methods: BTreeMap<String, toml::Value>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: "mmrl".into(),
            protocol: Protocol::Base2novel,
            shots: 16,
            seeds: vec![1, 2, 3],
            epochs: 10,
            batch_size: 4,
            test_batch_size: 250,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 5e-4,
            eps: 1e-8,
            momentum: 0.9,
            lr_scheduler: LrScheduler::Cosine,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
            augment: true,
            crop_scale: (0.5, 1.0),
            val_every: 0,
            patience: 0,
            precision: Precision::F32,
            workers: 2,
            cache_images: true,
            skip_bad_images: false,
            template: String::new(),
            targets: Vec::new(),
            methods: BTreeMap::new(),
        }
    }
}

/// The recipe files tried for a run, most specific first:
/// `<method>/<protocol>_<dataset>.toml`, `<method>/<protocol>_<shots>shot.toml`,
/// `<method>/<protocol>.toml` (domain generalisation then falls back to the
/// cross-dataset files: both use the same ImageNet model), then
/// `<method>/default.toml`. `dataset` is the CLI name (`imagenet`).
pub fn recipe_candidates(
    method: &str,
    protocol: Protocol,
    dataset: Option<&str>,
    shots: usize,
) -> Vec<String> {
    let mut protocols = vec![protocol];
    if protocol == Protocol::Dg {
        protocols.push(Protocol::Cross);
    }
    let mut out = Vec::new();
    for p in protocols {
        let p = p.name();
        if let Some(d) = dataset {
            out.push(format!("{method}/{p}_{d}.toml"));
        }
        out.push(format!("{method}/{p}_{shots}shot.toml"));
        out.push(format!("{method}/{p}.toml"));
    }
    out.push(format!("{method}/default.toml"));
    out
}

/// The shipped recipe for a run, chosen as the reference scripts choose
/// their yaml files (see [`recipe_candidates`]): its name and contents.
pub fn recipe_for(
    method: &str,
    protocol: Protocol,
    dataset: Option<&str>,
    shots: usize,
) -> Result<(&'static str, &'static str)> {
    let tried = recipe_candidates(method, protocol, dataset, shots);
    tried
        .iter()
        .find_map(|c| RECIPES.iter().find(|(name, _)| name == c).copied())
        .ok_or_else(|| Error::NoRecipe {
            method: method.into(),
            protocol: protocol.name(),
            tried: tried.join(", "),
        })
}

/// Overlays `user`'s keys on `base` (both TOML tables; nested tables merge).
fn merge(base: &mut toml::Table, user: &toml::Table) {
    for (k, v) in user {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl TrainConfig {
    /// Parses a TOML config; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| Error::ConfigSyntax {
            origin: origin.display().to_string(),
            msg: e.to_string(),
        })?;
        cfg.check_sections(&origin.display().to_string())?;
        Ok(cfg)
    }

    /// Every table besides the run settings must be a registered method's.
    fn check_sections(&self, origin: &str) -> Result<()> {
        let known = crate::registry::names();
        for (key, value) in &self.methods {
            if !known.contains(&key.as_str()) || !value.is_table() {
                return Err(Error::UnknownSetting {
                    origin: origin.into(),
                    key: key.clone(),
                    known: format!(
                        "the run settings ({}) or a method's table ([{}])",
                        Self::setting_names().join(", "),
                        known.join("], [")
                    ),
                });
            }
        }
        Ok(())
    }

    /// The names of the run settings (the top-level keys).
    pub fn setting_names() -> Vec<String> {
        match toml::Value::try_from(TrainConfig::default()) {
            Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// As TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }

    /// The method's settings for `dataset` (Dassl's name): the reference's
    /// per-dataset values ([`MethodConfig::for_dataset`]) with this
    /// config's `[method]` table on top.
    pub fn method_config<C: MethodConfig>(&self, method: &str, dataset: &str) -> Result<C> {
        let bad = |msg: String| Error::MethodSettings {
            method: method.into(),
            msg,
        };
        let mut base = match toml::Value::try_from(C::for_dataset(dataset)) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        if let Some(user) = self.methods.get(method) {
            let user = user
                .as_table()
                .ok_or_else(|| bad("must be a table of settings".into()))?;
            merge(&mut base, user);
        }
        toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))
    }

    /// Writes the method's resolved settings into its table, so the printed
    /// and saved config shows every value the run uses.
    pub fn resolve_method<C: MethodConfig>(&mut self, method: &str, dataset: &str) -> Result<C> {
        let c: C = self.method_config(method, dataset)?;
        let value = toml::Value::try_from(&c).map_err(|e| Error::MethodSettings {
            method: method.into(),
            msg: e.to_string(),
        })?;
        self.methods.insert(method.into(), value);
        Ok(c)
    }

    /// Applies `key=value` (TOML syntax for the value, e.g. `epochs=2`,
    /// `mmrl.reg_weight=0.5`, `seeds=[1,2]`, `template="a photo of a {}."`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let bad = |msg: String| Error::BadAssignment {
            assignment: assignment.into(),
            msg,
        };
        let (key, parsed) = parse_assignment(assignment, "epochs=5 or mmrl.alpha=0.5")?;
        let mut doc: toml::Value = toml::Value::try_from(&*self).expect("configs serialise");
        let mut slot = &mut doc;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let table = slot
                .as_table_mut()
                .ok_or_else(|| bad(format!("{part} is not a section")))?;
            if i + 1 == parts.len() {
                table.insert(part.to_string(), parsed.clone());
                break;
            }
            slot = table
                .entry(part.to_string())
                .or_insert(toml::Value::Table(Default::default()));
        }
        let new: TrainConfig = doc
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        new.check_sections("--set")?;
        *self = new;
        Ok(())
    }

    /// Checks the numbers that would otherwise fail deep inside a run.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, msg: &str| Error::BadSetting {
            key,
            msg: msg.into(),
        };
        if self.seeds.is_empty() {
            return Err(bad("seeds", "is empty; give e.g. --seeds 1,2,3"));
        }
        if self.epochs == 0 {
            return Err(bad("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 || self.test_batch_size == 0 {
            return Err(bad("batch_size", "and test_batch_size must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(bad("lr", "must be a finite number > 0"));
        }
        let (lo, hi) = self.crop_scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(bad("crop_scale", "must be [lo, hi] with 0 < lo <= hi <= 1"));
        }
        Ok(())
    }
}

/// Splits `key=value`; the value is read as TOML (`5`, `[1, 2]`, `"x"`),
/// else taken as a bare string (`template=a photo of a {}.`).
fn parse_assignment<'a>(assignment: &'a str, example: &str) -> Result<(&'a str, toml::Value)> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| Error::BadAssignment {
            assignment: assignment.into(),
            msg: format!("is not key=value, e.g. {example}"),
        })?;
    let value = value.trim();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.trim(), parsed))
}

/// A method's settings with `key=value` overrides (`alpha=0.2` or
/// `mmrl.alpha=0.2`; TOML values), as `eval` and `predict` take them over
/// what a checkpoint records.
pub fn override_settings<C: MethodConfig>(config: &C, method: &str, sets: &[String]) -> Result<C> {
    let mut table = match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    for assignment in sets {
        let (key, parsed) = parse_assignment(assignment, &format!("{method}.alpha=0.5"))?;
        let key = key
            .strip_prefix(method)
            .and_then(|k| k.strip_prefix('.'))
            .unwrap_or(key);
        table.insert(key.to_string(), parsed);
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::MethodSettings {
            method: method.into(),
            msg: e.message().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmrl_model::methods::mmrl::MmrlConfig;

    #[test]
    fn every_shipped_recipe_parses_and_round_trips() {
        assert!(RECIPES.len() >= 10, "{}", RECIPES.len());
        for (name, text) in RECIPES {
            let c = TrainConfig::from_toml(text, Path::new(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                TrainConfig::from_toml(&c.to_toml(), Path::new(name)).unwrap(),
                c,
                "{name}"
            );
            let method = name.split('/').next().unwrap();
            assert_eq!(c.method, method, "{name}");
            assert!(c.validate().is_ok(), "{name}");
        }
    }

    #[test]
    fn recipes_are_chosen_as_the_reference_scripts_choose_them() {
        let pick = |m, p, d: Option<&str>, s| recipe_for(m, p, d, s).unwrap().0;
        use Protocol::*;
        assert_eq!(
            pick("mmrl", Base2novel, Some("imagenet"), 16),
            "mmrl/base2novel_imagenet.toml"
        );
        assert_eq!(
            pick("mmrl", Base2novel, Some("eurosat"), 16),
            "mmrl/base2novel.toml"
        );
        assert_eq!(
            pick("mmrl", Fewshot, Some("imagenet"), 4),
            "mmrl/fewshot_imagenet.toml"
        );
        assert_eq!(pick("mmrl", Fewshot, None, 4), "mmrl/fewshot.toml");
        assert_eq!(pick("mmrl", Dg, Some("imagenet"), 16), "mmrl/cross.toml");
        assert_eq!(
            pick("coop", Fewshot, Some("dtd"), 1),
            "coop/fewshot_1shot.toml"
        );
        assert_eq!(
            pick("coop", Fewshot, Some("dtd"), 2),
            "coop/fewshot_2shot.toml"
        );
        assert_eq!(
            pick("coop", Fewshot, Some("dtd"), 4),
            "coop/fewshot_4shot.toml"
        );
        assert_eq!(pick("coop", Fewshot, Some("dtd"), 16), "coop/fewshot.toml");
        assert_eq!(
            pick("coop", Fewshot, Some("imagenet"), 1),
            "coop/fewshot_imagenet.toml"
        );
        assert_eq!(
            pick("zeroshot", Cross, Some("imagenet"), 16),
            "zeroshot/default.toml"
        );
        let e = recipe_for("nope", Fewshot, None, 16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope/fewshot.toml") && e.contains("--config"),
            "{e}"
        );
    }

    #[test]
    fn set_overrides_and_method_tables_resolve_over_dataset_defaults() {
        let mut c = TrainConfig::default();
        c.set("mmrl.reg_weight=0.2").unwrap();
        c.set("seeds=[4,5]").unwrap();
        c.set("template=a photo of a {}.").unwrap();
        assert_eq!(c.seeds, vec![4, 5]);
        assert_eq!(c.template, "a photo of a {}.");
        let m: MmrlConfig = c.method_config("mmrl", "EuroSAT").unwrap();
        assert_eq!((m.rep_dim, m.reg_weight), (2048, 0.2));
        let m: MmrlConfig = TrainConfig::default()
            .method_config("mmrl", "EuroSAT")
            .unwrap();
        assert_eq!((m.rep_dim, m.reg_weight), (2048, 0.01));
        let e = c.set("epochs=ten").unwrap_err().to_string();
        assert!(e.contains("epochs=ten"), "{e}");
        c.set("mmrl.alpah=0.2").unwrap();
        let e = c
            .method_config::<MmrlConfig>("mmrl", "EuroSAT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[mmrl]") && e.contains("alpah"), "{e}");
        let e = TrainConfig::from_toml("nope = 1", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml") && e.contains("nope") && e.contains("epochs"),
            "{e}"
        );
    }
}
