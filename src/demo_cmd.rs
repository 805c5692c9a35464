//! `mmrl demo`: the offline end-to-end demo (see `mmrl_train::demo`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use clap::Args;

use mmrl_train::demo::{default_cache_root, run_demo, DemoConfig};

use crate::backend::DeviceKind;
use mmrl_model::ClipBackend;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the table, results.json, the world's pictures and each method's run go.
    #[arg(long, default_value = "demo-output")]
    pub output: PathBuf,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Where the pretrained small CLIP is kept (default: $XDG_CACHE_HOME/mmrl, else ~/.cache/mmrl).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// The shortened demo CI runs: smaller pictures, a smaller CLIP, shorter schedules.
    #[arg(long, conflicts_with = "config")]
    pub quick: bool,
    /// A demo config (JSON, as the `demo.json` a demo writes into its output): change
    /// the world, the small CLIP or a method's schedule and compare.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Pretrains (or reuses) the small CLIP on `Autodiff<B>`, runs the three
/// methods and prints the table.
pub fn demo_cmd<B: ClipBackend>(a: &DemoArgs, device: &B::Device) -> Result<()> {
    let started = Instant::now();
    let cache = match &a.cache {
        Some(c) => c.clone(),
        None => default_cache_root().context(
            "no cache folder: neither XDG_CACHE_HOME nor HOME is set; pass --cache <folder>",
        )?,
    };
    let cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<DemoConfig>(&text).with_context(|| {
                format!(
                    "{} is not a demo config: start from the demo.json a demo run writes",
                    p.display()
                )
            })?
        }
        None if a.quick => DemoConfig::quick(),
        None => DemoConfig::full(),
    };
    let results = run_demo::<Autodiff<B>>(&cfg, &a.output, &cache, device)?;
    println!("\n{}", results.table());
    println!(
        "results: {} (per-method runs in {}/{{zeroshot,coop,mmrl,comma,mm-adapter}}); {:.1} min",
        a.output.join("results.json").display(),
        a.output.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
