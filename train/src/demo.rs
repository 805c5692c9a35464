//! The offline demo: a small CLIP pretrained on the generated world of
//! [`mmrl_data::world`] (or reused from the cache), then zero-shot CLIP,
//! CoOp, MMRL, COMMA and the Multi-Modal Adapter under base-to-novel on the
//! world's colour × shape task, over seeds, through the same runs as
//! `mmrl train` (one run per core at a time).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use mmrl_data::dataset::{split_file, Source};
use mmrl_data::preprocess::PreprocessConfig;
use mmrl_data::world::{self, TaskSizes};
use mmrl_data::ClipTokenizer;
use mmrl_model::clip::config::ClipConfig;
use mmrl_model::clip::loader::load_clip;
use mmrl_model::clip::save::save_hf;

use crate::checkpoint::clip_hash;
use crate::config::{recipe_for, Protocol, TrainConfig};
use crate::pretrain::{pretrain, PretrainConfig};
use crate::run::{self, RunPaths};
use crate::{Error, Result};
use mmrl_model::ClipAutodiffBackend;

/// Changes whenever the world's pictures or captions, CLIP's initialisation
/// or the pretraining code change, so that a cached CLIP made by older code
/// is rebuilt.
pub const WORLD_VERSION: u32 = 1;

/// The marker of a demo output folder (the resolved demo config). Its
/// `results.json` is the demo's table; each method's run is a subfolder.
pub const MARKER: &str = "demo.json";

/// Everything that decides the demo's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    pub pretrain: PretrainConfig,
    /// Seed of the task's pictures.
    pub task_seed: u64,
    /// Images per class and split.
    pub task: TaskSizes,
    pub seeds: Vec<u64>,
    pub zeroshot: TrainConfig,
    pub coop: TrainConfig,
    pub mmrl: TrainConfig,
    pub comma: TrainConfig,
    #[serde(rename = "mm-adapter")]
    pub mm_adapter: TrainConfig,
}

impl DemoConfig {
    /// The demo the README runs: a few minutes on a 2-core CPU.
    pub fn full() -> Self {
        let seeds = vec![1, 2, 3];
        // A method's shipped base-to-novel recipe, on the demo's seeds.
        let method = |m: &str| {
            let (name, text) = recipe_for(m, Protocol::Base2novel, None, 16)
                .expect("every registered method ships a base2novel recipe");
            TrainConfig {
                seeds: seeds.clone(),
                test_batch_size: 200,
                ..TrainConfig::from_toml(text, Path::new(name)).expect("shipped recipes parse")
            }
        };
        DemoConfig {
            pretrain: PretrainConfig {
                // ViT with 8-pixel patches on 32-pixel pictures; 2 heads of 32.
                clip: ClipConfig::small(64, 3, 2, 32, 8),
                seed: 1,
                epochs: 14,
                steps_per_epoch: 125,
                batch_size: 64,
                lr: 1e-3,
                warmup_steps: 100,
                weight_decay: 0.05,
                valid_batches: 4,
            },
            task_seed: 1,
            task: TaskSizes {
                train: 32,
                val: 4,
                test: 25,
            },
            zeroshot: method("zeroshot"),
            coop: Self::coop(method("coop")),
            // MMRL's reference schedule (10 epochs, batch 4, AdamW 1e-3).
            mmrl: method("mmrl"),
            // COMMA's reference schedule (5 epochs, batch 4, SGD 0.0035); its
            // prompt depth of 9 is clamped to the small CLIP's 3 layers.
            comma: method("comma"),
            // Its reference optimiser and early stopping on the common protocol.
            mm_adapter: method("mm-adapter"),
            seeds,
        }
    }

    /// CoOp as its own paper trains it (16 random context vectors, as in
    /// `configs/coop/fewshot.toml`) on the base classes, with a quarter of
    /// its 200 epochs: the demo's published numbers were measured with this
    /// CoOp. The reference base-to-novel recipe (context initialised from
    /// "a photo of a") is `configs/coop/base2novel.toml`.
    fn coop(recipe: TrainConfig) -> TrainConfig {
        let mut c = recipe;
        c.epochs = 50;
        c.methods.insert(
            "coop".into(),
            toml::Value::try_from(mmrl_model::methods::coop::CoopConfig::default())
                .expect("configs serialise"),
        );
        c
    }

    /// The demo CI runs: the same world, CLIP and schedules (a shorter
    /// pretraining gives a CLIP whose base/novel behaviour differs, so CI
    /// checks the CLIP the demo uses), scored on 15 instead of 25 test
    /// pictures per class.
    pub fn quick() -> Self {
        let mut c = Self::full();
        c.task.test = 15;
        c
    }

    /// The classes' count in the base and the novel half.
    pub fn class_counts() -> (usize, usize) {
        let n = world::task_classes().len();
        (n.div_ceil(2), n / 2)
    }
}

/// What a cached CLIP folder holds besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheRecord {
    world_version: u32,
    pretrain: PretrainConfig,
    /// [`clip_hash`] of the folder.
    sha256: String,
}

/// The cache folder of the CLIP pretrained with `cfg`.
pub fn cache_dir(cache_root: &Path, cfg: &PretrainConfig) -> PathBuf {
    let mut h = Sha256::new();
    h.update(WORLD_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(cfg).expect("configs serialise"));
    let key = format!("{:x}", h.finalize());
    cache_root.join(format!("demo-clip-{}", &key[..16]))
}

/// Why a cached CLIP cannot be used, or `None` when it can.
pub fn cache_problem(dir: &Path, cfg: &PretrainConfig) -> Option<String> {
    let record = dir.join("pretrain.json");
    let text = match std::fs::read_to_string(&record) {
        Ok(t) => t,
        Err(_) => return Some("not built yet".into()),
    };
    let rec: CacheRecord = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => return Some(format!("{} is unreadable ({e})", record.display())),
    };
    if rec.world_version != WORLD_VERSION || rec.pretrain != *cfg {
        return Some("it was pretrained with other settings".into());
    }
    match clip_hash(dir) {
        Ok(h) if h == rec.sha256 => None,
        Ok(_) => Some("its weights do not match their recorded SHA-256".into()),
        Err(e) => Some(format!("its weights cannot be read ({e})")),
    }
}

/// The pretrained CLIP's folder: reused from `cache_root` when its record
/// and hash check out, else pretrained now (into a temporary folder, moved
/// into place when complete).
pub fn cached_clip<B: ClipAutodiffBackend>(
    cfg: &PretrainConfig,
    cache_root: &Path,
    tokenizer: &ClipTokenizer,
    device: &B::Device,
) -> Result<PathBuf> {
    let dir = cache_dir(cache_root, cfg);
    let problem = match cache_problem(&dir, cfg) {
        None => {
            println!("using the pretrained CLIP cached in {}", dir.display());
            return Ok(dir);
        }
        Some(p) => p,
    };
    println!(
        "pretraining a small CLIP on the generated world ({} epochs of {} steps; cache {}: {problem})",
        cfg.epochs,
        cfg.steps_per_epoch,
        dir.display()
    );
    let building = dir.with_extension(format!("building-{}", std::process::id()));
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| mmrl_data::Error::io(&building, e))?;
    }
    std::fs::create_dir_all(&building).map_err(|e| mmrl_data::Error::io(&building, e))?;
    let clip = match pretrain::<B>(cfg, tokenizer, &building.join("log"), device) {
        Ok(clip) => clip,
        Err(e) => {
            // Nothing half-built stays in the cache.
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    save_hf(&clip, &cfg.clip, &building)?;
    let record = CacheRecord {
        world_version: WORLD_VERSION,
        pretrain: cfg.clone(),
        sha256: clip_hash(&building)?,
    };
    split_file::write_json_atomic(
        &building.join("pretrain.json"),
        &serde_json::to_value(&record).expect("records serialise"),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| mmrl_data::Error::io(&dir, e))?;
    }
    std::fs::rename(&building, &dir).map_err(|e| mmrl_data::Error::io(&dir, e))?;
    Ok(dir)
}

/// One method's means over the seeds, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BaseNovel {
    pub base: f64,
    pub novel: f64,
    pub hm: f64,
}

/// `results.json` of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoResults {
    pub seeds: Vec<u64>,
    /// Accuracy of a uniform guess on each half.
    pub chance: Chance,
    pub methods: DemoMethods,
}

/// Chance accuracy, in percent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Chance {
    pub base: f64,
    pub novel: f64,
}

/// Each method's means, in the demo's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoMethods {
    pub zeroshot: BaseNovel,
    pub coop: BaseNovel,
    pub mmrl: BaseNovel,
    pub comma: BaseNovel,
    #[serde(rename = "mm-adapter")]
    pub mm_adapter: BaseNovel,
}

/// Prepares `output` for the demo: a new or empty folder, or a previous
/// demo's output (whose runs are replaced). Anything else is refused.
fn claim_output(output: &Path, cfg: &DemoConfig) -> Result<()> {
    let nonempty = std::fs::read_dir(output).is_ok_and(|mut d| d.next().is_some());
    if nonempty {
        if !output.join(MARKER).is_file() {
            return Err(Error::NotDemoOutput {
                path: output.into(),
            });
        }
        for sub in ["world", "zeroshot", "coop", "mmrl", "comma", "mm-adapter"] {
            let p = output.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| mmrl_data::Error::io(&p, e))?;
            }
        }
        let _ = std::fs::remove_file(output.join("results.json"));
    }
    std::fs::create_dir_all(output).map_err(|e| mmrl_data::Error::io(output, e))?;
    split_file::write_json_atomic(
        &output.join(MARKER),
        &serde_json::to_value(cfg).expect("configs serialise"),
    )?;
    Ok(())
}

/// Runs the whole demo; writes `output/results.json`, `output/world/` (the
/// task's pictures) and one run folder per method. Ctrl-C stops it at the
/// next batch with [`Error::DemoInterrupted`] (the demo has no `--resume`:
/// run again, it starts over); a failed write (a full disk) names the file.
pub fn run_demo<B: ClipAutodiffBackend>(
    cfg: &DemoConfig,
    output: &Path,
    cache_root: &Path,
    device: &B::Device,
) -> Result<DemoResults> {
    demo_steps::<B>(cfg, output, cache_root, device).map_err(|e| match e {
        Error::Interrupted { .. } => Error::DemoInterrupted,
        // The demo starts over rather than resuming: no `--resume` hint.
        Error::WriteFailed { path, source } => mmrl_data::Error::Write { path, source }.into(),
        e => e,
    })
}

fn demo_steps<B: ClipAutodiffBackend>(
    cfg: &DemoConfig,
    output: &Path,
    cache_root: &Path,
    device: &B::Device,
) -> Result<DemoResults> {
    claim_output(output, cfg)?;
    let tokenizer = ClipTokenizer::bundled();
    println!("[1/6] the small CLIP");
    let clip_dir = cached_clip::<B>(&cfg.pretrain, cache_root, &tokenizer, device)?;
    let loaded = load_clip::<B::InnerBackend>(&clip_dir, device)?;
    let side = loaded.config.vision_config.image_size;
    let world_dir = output.join("world");
    let classnames = world::write_task(&world_dir, cfg.task_seed, cfg.task, side)?;
    let (n_base, n_novel) = DemoConfig::class_counts();
    println!(
        "    task: {} colour × shape classes ({n_base} base, {n_novel} novel), pictures in {}",
        n_base + n_novel,
        world_dir.display()
    );
    let pre = PreprocessConfig::for_image_size(side);
    // The methods in the table's order.
    let methods = [
        ("zeroshot", &cfg.zeroshot),
        ("coop", &cfg.coop),
        ("mmrl", &cfg.mmrl),
        ("comma", &cfg.comma),
        ("mm-adapter", &cfg.mm_adapter),
    ];
    // The small models' ops are too small to keep every core busy, so the
    // runs share the cores: one worker per core, each taking the next
    // method when free, costliest first (measured on 2 cores, one thread
    // each: COMMA 4.3 min, MMRL 3.8, CoOp 1.9, the Multi-Modal Adapter 0.4,
    // zero-shot seconds), so that the workers finish close together. Each
    // run has its own folder and seeds its own initialisation
    // (`run::run`), so the numbers are those of one run after another.
    let order = [3, 2, 1, 4, 0];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.clamp(1, methods.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let outcomes: std::sync::Mutex<Vec<Option<Result<BaseNovel>>>> =
        std::sync::Mutex::new(vec![None, None, None, None, None]);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            // Each worker holds its own handles to the (shared) weights.
            let (clip, tokenizer, pre) = (loaded.model.clone(), tokenizer.clone(), pre.clone());
            let (device, world_dir, classnames, clip_dir) =
                (device.clone(), &world_dir, &classnames, &clip_dir);
            let (next, failed, outcomes, methods) = (&next, &failed, &outcomes, &methods);
            // Each worker's parallel ops run on its own share of the cores
            // (one core each on 2 cores), not on one pool all workers queue on.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads((cores / workers).max(1))
                .build();
            let work = move || loop {
                use std::sync::atomic::Ordering::SeqCst;
                let Some(&i) = order.get(next.fetch_add(1, SeqCst)) else {
                    break;
                };
                if failed.load(SeqCst) {
                    break;
                }
                let (name, mcfg) = methods[i];
                println!(
                    "[{}/6] {name}, base-to-novel, seeds {:?}",
                    i + 2,
                    mcfg.seeds
                );
                let paths = RunPaths {
                    dataset: Source::Folder,
                    root: world_dir.clone(),
                    classnames: Some(classnames.clone()),
                    clip: clip_dir.clone(),
                    output: output.join(name),
                    resume: false,
                    interrupt_after_epoch: None,
                };
                let outcome =
                    run::run::<B>(mcfg, &paths, &clip, &tokenizer, &pre, &device).map(|report| {
                        let get = |k: &str| {
                            report
                                .mean
                                .get(k)
                                .and_then(|v| v.as_f64())
                                .unwrap_or(f64::NAN)
                        };
                        println!("{name}: done");
                        BaseNovel {
                            base: get("base"),
                            novel: get("novel"),
                            hm: get("hm"),
                        }
                    });
                failed.fetch_or(outcome.is_err(), SeqCst);
                outcomes.lock().expect("no worker panics holding it")[i] = Some(outcome);
            };
            scope.spawn(move || match pool {
                Ok(pool) if workers > 1 => pool.install(work),
                _ => work(),
            });
        }
    });
    // A failure ends the demo with its error (workers start no further
    // method after one; those have no outcome).
    let means = outcomes
        .into_inner()
        .expect("no worker panics holding it")
        .into_iter()
        .flatten()
        .collect::<Result<Vec<BaseNovel>>>()?;
    let results = DemoResults {
        seeds: cfg.seeds.clone(),
        chance: Chance {
            base: 100.0 / n_base as f64,
            novel: 100.0 / n_novel as f64,
        },
        methods: DemoMethods {
            zeroshot: means[0],
            coop: means[1],
            mmrl: means[2],
            comma: means[3],
            mm_adapter: means[4],
        },
    };
    split_file::write_json_atomic(
        &output.join("results.json"),
        &serde_json::to_value(&results).expect("results serialise"),
    )?;
    Ok(results)
}

impl DemoResults {
    /// The base / novel / HM table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "base-to-novel on the generated world, mean of seeds {:?} (accuracy, %)\n\n",
            self.seeds
        );
        s.push_str(
            "| method     |  base | novel |    HM |\n|------------|------:|------:|------:|\n",
        );
        let m = &self.methods;
        for (name, r) in [
            ("zero-shot", m.zeroshot),
            ("CoOp", m.coop),
            ("MMRL", m.mmrl),
            ("COMMA", m.comma),
            ("MM-Adapter", m.mm_adapter),
        ] {
            s.push_str(&format!(
                "| {name:<10} | {:>5.1} | {:>5.1} | {:>5.1} |\n",
                r.base, r.novel, r.hm
            ));
        }
        s.push_str(&format!(
            "| chance     | {:>5.1} | {:>5.1} |       |\n",
            self.chance.base, self.chance.novel
        ));
        s
    }
}

/// `$XDG_CACHE_HOME/mmrl`, else `$HOME/.cache/mmrl`.
pub fn default_cache_root() -> Option<PathBuf> {
    let nonempty = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    nonempty("XDG_CACHE_HOME")
        .map(|p| p.join("mmrl"))
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache").join("mmrl")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_round_trips_through_demo_json_with_each_methods_recipe() {
        let c = DemoConfig::full();
        let json = serde_json::to_string_pretty(&c).unwrap();
        let back: DemoConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            (c.mmrl.epochs, c.mmrl.batch_size, c.coop.epochs),
            (10, 4, 50)
        );
        // The demo's CoOp: 16 random context vectors, as published.
        let coop: mmrl_model::methods::coop::CoopConfig = c.coop.method_config("coop", "").unwrap();
        assert_eq!((coop.n_ctx, coop.ctx_init.as_str()), (16, ""));
    }

    #[test]
    fn a_cache_with_other_settings_or_changed_weights_is_stale() {
        let root = std::env::temp_dir().join(format!("mmrl-demo-cache-{}", std::process::id()));
        let cfg = DemoConfig::quick().pretrain;
        let dir = cache_dir(&root, &cfg);
        assert_eq!(cache_problem(&dir, &cfg).as_deref(), Some("not built yet"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let record = CacheRecord {
            world_version: WORLD_VERSION,
            pretrain: cfg.clone(),
            sha256: clip_hash(&dir).unwrap(),
        };
        std::fs::write(
            dir.join("pretrain.json"),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();
        assert_eq!(cache_problem(&dir, &cfg), None);
        let mut other = cfg.clone();
        other.epochs += 1;
        assert_ne!(cache_dir(&root, &other), dir);
        assert!(cache_problem(&dir, &other)
            .unwrap()
            .contains("other settings"));
        std::fs::write(dir.join("model.safetensors"), b"weightz").unwrap();
        assert!(cache_problem(&dir, &cfg).unwrap().contains("SHA-256"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
