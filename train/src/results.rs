//! A run's numbers: per seed, their means and population standard
//! deviations over seeds, and the files they are written to
//! (`results.json`, `results.md`, `results.csv`, atomically).

use std::path::Path;

use mmrl_data::dataset::split_file;
use serde::{Deserialize, Serialize};

use crate::config::{Protocol, TrainConfig};
use crate::Result;

/// One seed's numbers (accuracies in percent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedResult {
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novel: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Last epoch's training accuracy, when trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Training accuracy stayed near chance.
    #[serde(default)]
    pub diverged: bool,
    /// Cross-dataset / DG: accuracy per dataset and the targets' `average`.
    #[serde(flatten)]
    pub datasets: std::collections::BTreeMap<String, f64>,
}

/// Harmonic mean of base and novel accuracy.
pub fn harmonic_mean(b: f64, n: f64) -> f64 {
    if b + n == 0.0 {
        0.0
    } else {
        2.0 * b * n / (b + n)
    }
}

/// Mean and population std (ddof 0, as `parse_test_res.py`).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The run's whole outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub method: String,
    pub dataset: String,
    pub protocol: Protocol,
    pub shots: usize,
    pub seeds: Vec<SeedResult>,
    pub mean: serde_json::Value,
    pub std: serde_json::Value,
}

/// Means and standard deviations over the seeds, as the paper tables report them.
pub fn summarise(cfg: &TrainConfig, dataset: &str, seeds: Vec<SeedResult>) -> RunReport {
    let pick =
        |f: fn(&SeedResult) -> Option<f64>| -> Vec<f64> { seeds.iter().filter_map(f).collect() };
    let (mean, std) = match cfg.protocol {
        Protocol::Base2novel => {
            let (bm, bs) = mean_std(&pick(|s| s.base));
            let (nm, ns) = mean_std(&pick(|s| s.novel));
            let (_, hs) = mean_std(&pick(|s| s.hm));
            (
                serde_json::json!({"base": bm, "novel": nm, "hm": harmonic_mean(bm, nm)}),
                serde_json::json!({"base": bs, "novel": ns, "hm": hs}),
            )
        }
        Protocol::Fewshot => {
            let (m, s) = mean_std(&pick(|s| s.accuracy));
            (
                serde_json::json!({"accuracy": m}),
                serde_json::json!({"accuracy": s}),
            )
        }
        Protocol::Cross | Protocol::Dg => {
            let keys: Vec<String> = seeds
                .first()
                .map(|s| s.datasets.keys().cloned().collect())
                .unwrap_or_default();
            let (mut mean, mut std) = (serde_json::Map::new(), serde_json::Map::new());
            for k in keys {
                let v: Vec<f64> = seeds
                    .iter()
                    .filter_map(|s| s.datasets.get(&k).copied())
                    .collect();
                let (m, sd) = mean_std(&v);
                mean.insert(k.clone(), m.into());
                std.insert(k, sd.into());
            }
            (
                serde_json::Value::Object(mean),
                serde_json::Value::Object(std),
            )
        }
    };
    RunReport {
        method: cfg.method.clone(),
        dataset: dataset.into(),
        protocol: cfg.protocol,
        shots: cfg.shots,
        seeds,
        mean,
        std,
    }
}

/// `results.json`, `results.md` (paper-style) and `results.csv`, atomically.
pub fn write_results(dir: &Path, r: &RunReport) -> Result<()> {
    let json = serde_json::to_value(r).map_err(|e| crate::Error::Serialise {
        what: "results",
        msg: e.to_string(),
    })?;
    split_file::write_json_atomic(&dir.join("results.json"), &json)?;
    let cols: Vec<String> = match r.protocol {
        Protocol::Base2novel => vec!["base".into(), "novel".into(), "hm".into()],
        Protocol::Fewshot => vec!["accuracy".into()],
        Protocol::Cross | Protocol::Dg => r
            .mean
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let val = |s: &SeedResult, c: &str| -> f64 {
        match c {
            "base" => s.base,
            "novel" => s.novel,
            "hm" => s.hm,
            "accuracy" => s.accuracy,
            other => s.datasets.get(other).copied(),
        }
        .unwrap_or(f64::NAN)
    };
    let mut md = format!(
        "# {} on {} ({:?}, {} shots)\n\n| seed | {} |\n|---|{}\n",
        r.method,
        r.dataset,
        r.protocol,
        r.shots,
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    let mut csv = format!("method,dataset,protocol,shots,seed,{}\n", cols.join(","));
    for s in &r.seeds {
        let v: Vec<String> = cols.iter().map(|c| format!("{:.2}", val(s, c))).collect();
        md.push_str(&format!(
            "| {}{} | {} |\n",
            s.seed,
            if s.diverged { " (diverged)" } else { "" },
            v.join(" | ")
        ));
        let v: Vec<String> = cols.iter().map(|c| format!("{}", val(s, c))).collect();
        csv.push_str(&format!(
            "{},{},{:?},{},{},{}\n",
            r.method,
            r.dataset,
            r.protocol,
            r.shots,
            s.seed,
            v.join(",")
        ));
    }
    let ms: Vec<String> = cols
        .iter()
        .map(|c| {
            let m = r.mean[c.as_str()].as_f64().unwrap_or(f64::NAN);
            let s = r.std[c.as_str()].as_f64().unwrap_or(f64::NAN);
            format!("{m:.2} ± {s:.2}")
        })
        .collect();
    md.push_str(&format!("| **mean ± std** | {} |\n", ms.join(" | ")));
    split_file::write_atomic(&dir.join("results.md"), md.as_bytes())?;
    split_file::write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    Ok(())
}

impl SeedResult {
    /// One seed's result from its scores: `(key, accuracy)` per evaluated
    /// set in protocol order, the training set's first (`base`, `novel`;
    /// `accuracy`; the cross-dataset source, then the targets).
    pub fn new(
        seed: u64,
        protocol: Protocol,
        scores: &[(String, f64)],
        train_accuracy: Option<f64>,
        diverged: bool,
    ) -> Self {
        let mut r = SeedResult {
            seed,
            base: None,
            novel: None,
            hm: None,
            accuracy: None,
            train_accuracy,
            diverged,
            datasets: Default::default(),
        };
        let acc = |i: usize| scores.get(i).map(|s| s.1).unwrap_or(f64::NAN);
        match protocol {
            Protocol::Base2novel => {
                r.base = Some(acc(0));
                r.novel = Some(acc(1));
                r.hm = Some(harmonic_mean(acc(0), acc(1)));
            }
            Protocol::Fewshot => r.accuracy = Some(acc(0)),
            Protocol::Cross | Protocol::Dg => {
                for (key, a) in scores {
                    r.datasets.insert(key.clone(), *a);
                }
                let targets: Vec<f64> = scores.iter().skip(1).map(|s| s.1).collect();
                if !targets.is_empty() {
                    r.datasets.insert(
                        "average".into(),
                        targets.iter().sum::<f64>() / targets.len() as f64,
                    );
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_and_hm_are_the_papers() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((harmonic_mean(80.0, 70.0) - 2.0 * 80.0 * 70.0 / 150.0).abs() < 1e-12);
    }
}
