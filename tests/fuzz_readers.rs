//! Every reader of user files fed mutated and random bytes: each must
//! return an error or a value, never panic (not even a panic caught inside
//! a dependency: it prints to the user's terminal), hang, or allocate what
//! a header claims. A mutation fuzzer, deterministic per seed, runs each
//! target for a fixed time (`MMRL_FUZZ_SECS`, default 3 s per target; set
//! it higher for a long local run, and `MMRL_FUZZ_SEED` for another
//! sequence). Inputs are mutated from the real files the tests use (the
//! tiny CLIP's weights and JSON files, the reference implementations'
//! Dassl checkpoints, our own checkpoints, images, split files and CSVs):
//! bit flips and byte overwrites (mostly in the headers at both ends),
//! huge little-endian length fields, truncation, chunk deletion and
//! duplication, and random bytes behind a kept magic number. A finding is
//! saved under the system's temp dir (`mmrl-fuzz-findings/`) and named in
//! the failure.
//!
//! A global allocator refuses any single allocation above 1 GiB (the
//! process aborts naming the size): a reader that trusts a size claimed by
//! a header fails the test even when the machine could have served it. The
//! input being read when that happens is `mmrl-fuzz-current/<target>`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{clip_fixture, mmrl, repo, TempDir};

struct Capped;

const MAX_ALLOCATION: usize = 1 << 30;

// SAFETY: forwards to the system allocator, refusing only oversized
// requests (a null return, which std turns into an abort naming the size).
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// xorshift64*: a small deterministic generator for the mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// A position in `len` bytes, mostly within the first or last 4 KiB, where
/// formats keep their headers (safetensors, pickles) and directories (zip).
fn position(rng: &mut Rng, len: usize) -> usize {
    match rng.below(10) {
        0..=4 => rng.below(len.min(4096)),
        5..=6 => len - 1 - rng.below(len.min(4096)),
        _ => rng.below(len),
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
        }
        let len = b.len();
        match rng.below(9) {
            0 | 1 => {
                let p = position(rng, len);
                b[p] ^= 1 << rng.below(8);
            }
            2 => {
                let p = position(rng, len);
                b[p] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b',', b'0'][rng.below(8)];
            }
            3 => {
                // A huge or negative length field.
                let v: u64 = [
                    u64::MAX,
                    u32::MAX as u64,
                    i32::MAX as u64,
                    1 << 40,
                    len as u64 * 2,
                ][rng.below(5)];
                let p = position(rng, len);
                let n = if rng.below(2) == 0 { 4 } else { 8 };
                for (i, byte) in v.to_le_bytes().iter().take(n).enumerate() {
                    if p + i < len {
                        b[p + i] = *byte;
                    }
                }
            }
            4 => b.truncate(rng.below(len)),
            5 => {
                let p = position(rng, len);
                let n = rng.below((len - p).min(256)) + 1;
                b.drain(p..p + n.min(len - p));
            }
            6 => {
                let p = position(rng, len);
                let n = rng.below((len - p).min(256)) + 1;
                let chunk = b[p..p + n.min(len - p)].to_vec();
                let at = position(rng, len);
                b.splice(at..at, chunk);
            }
            7 => {
                let p = position(rng, len);
                let v = ["99999999999", "-1", "1e308", "null", "[]", "{}", "\"\""][rng.below(7)];
                b.splice(p..p, v.bytes());
            }
            _ => {
                // Random bytes behind the seed's magic number.
                let keep = len.min(8);
                let n = rng.below(512);
                b.truncate(keep);
                b.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    b
}

/// Panics anywhere in the process, caught or not: (location, message).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static RUNS: AtomicUsize = AtomicUsize::new(0);

fn install_panic_recorder() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((loc, msg));
    }));
}

type Reader = Box<dyn Fn(&Path) -> String>;

struct Target {
    name: &'static str,
    /// The file name the input is written to (readers look at extensions).
    file: &'static str,
    seeds: Vec<Vec<u8>>,
    read: Reader,
}

/// Runs every target; returns a description of each finding.
fn fuzz(targets: Vec<Target>, work: &Path) -> Vec<String> {
    let secs: f64 = std::env::var("MMRL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("MMRL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d6d_726c);
    let current = std::env::temp_dir().join("mmrl-fuzz-current");
    let findings_dir = std::env::temp_dir().join("mmrl-fuzz-findings");
    std::fs::create_dir_all(&current).unwrap();
    let mut findings = Vec::new();
    for t in targets {
        let mut rng = Rng(seed ^ (t.name.len() as u64 * 0x9e37_79b9));
        let dir = work.join(t.name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(t.file);
        let start = Instant::now();
        let mut n = 0;
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        while start.elapsed() < Duration::from_secs_f64(secs) {
            let input = mutate(&mut rng, &t.seeds[n % t.seeds.len()]);
            std::fs::write(&path, &input).unwrap();
            std::fs::write(current.join(t.name), &input).unwrap();
            PANICS.lock().unwrap().clear();
            let began = Instant::now();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.read)(&path)));
            let took = began.elapsed();
            let panics = std::mem::take(&mut *PANICS.lock().unwrap());
            let problem = if !panics.is_empty() {
                Some(format!("panicked: {panics:?}"))
            } else if took > Duration::from_secs(5) {
                Some(format!("took {took:?}"))
            } else {
                None
            };
            if let Ok(o) = &outcome {
                *outcomes.entry(o.clone()).or_default() += 1;
            }
            if let Some(problem) = problem {
                std::fs::create_dir_all(&findings_dir).unwrap();
                let saved = findings_dir.join(format!("{}-{n}-{}", t.name, t.file));
                std::fs::write(&saved, &input).unwrap();
                findings.push(format!(
                    "{}: {problem} (input: {})",
                    t.name,
                    saved.display()
                ));
                if findings.iter().filter(|f| f.starts_with(t.name)).count() >= 3 {
                    break;
                }
            }
            n += 1;
        }
        RUNS.fetch_add(n, Ordering::Relaxed);
        // The mutations reach past the first check: more than one outcome.
        let ok = outcomes.get("ok").copied().unwrap_or(0);
        eprintln!(
            "{}: {n} inputs in {:.1} s: {ok} read, {} refused with {} different messages",
            t.name,
            start.elapsed().as_secs_f64(),
            n - ok,
            outcomes.len() - usize::from(ok > 0)
        );
        assert!(n >= 20, "{}: only {n} inputs in {secs} s", t.name);
        assert!(
            outcomes.len() >= 2,
            "{}: every input gave {outcomes:?}",
            t.name
        );
    }
    findings
}

/// "ok" or the error's kind (its first words), so that the outcomes show
/// how far the mutations get.
fn outcome<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            let e = e.to_string();
            // Drop the paths (they differ per target) and keep the gist.
            let e = e.rsplit(": ").next().unwrap_or(&e).to_string();
            e.chars().take(48).collect()
        }
    }
}

/// Every tensor of a weights file, read to the last byte.
fn tensors(path: &Path) -> String {
    outcome(
        mmrl_model::methods::checkpoint::read_state_dict(path).and_then(|t| {
            for s in t.values() {
                s.to_data().map_err(|e| mmrl_model::Error::WeightsFormat {
                    path: path.into(),
                    msg: format!("{e:?}"),
                })?;
            }
            Ok(())
        }),
    )
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 5) as u8, 77]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, 40, (y * 7) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn readers_of_user_files_survive_mutated_and_random_bytes() {
    let tmp = TempDir::new("fuzz");
    let work = tmp.path().to_path_buf();
    // Our own checkpoint, written by `mmrl train` (one epoch of the
    // Multi-Modal Adapter on a tiny dataset).
    let data = work.join("data");
    for (c, rgb) in [[200u8, 30, 30], [30, 200, 30], [30, 30, 200]]
        .iter()
        .enumerate()
    {
        let dir = data.join(format!("c{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4u32 {
            image::RgbImage::from_fn(24 + i, 24, |_, _| image::Rgb(*rgb))
                .save(dir.join(format!("{i}.png")))
                .unwrap();
        }
    }
    let clip = clip_fixture("tiny_hf");
    let run = work.join("run");
    let o = mmrl(&[
        "train",
        "--method",
        "mm-adapter",
        "--dataset",
        "folder",
        "--root",
        data.to_str().unwrap(),
        "--clip",
        clip.to_str().unwrap(),
        "--shots",
        "1",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--set",
        "patience=0",
        "--output",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = read(run.join("seed1/mm-adapter.safetensors"));

    // A split file and a CSV naming images that exist.
    let images = work.join("images");
    std::fs::create_dir_all(images.join("a")).unwrap();
    for i in 0..3 {
        std::fs::write(images.join(format!("a/{i}.png")), png(8, 8)).unwrap();
    }
    let split = br#"{"train": [["a/0.png", 0, "cat"]], "val": [["a/1.png", 1, "dog"]], "test": [["a/2.png", 0, "cat"], ["a/1.png", 1, "dog"]]}"#.to_vec();
    let csv = b"path,label,split\na/0.png,cat,train\na/1.png,dog,val\na/2.png,cat,test\n".to_vec();

    let clip_for_header = clip.clone();
    // OpenAI's merges file, uncompressed (the gzip target mostly meets CRC
    // errors; this one reaches the merges parser).
    let mut merges = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            &read(repo().join("data/assets/bpe_simple_vocab_16e6.txt.gz"))[..],
        ),
        &mut merges,
    )
    .unwrap();
    let images_dir = images.clone();
    let targets = vec![
        Target {
            name: "safetensors",
            file: "w.safetensors",
            seeds: vec![read(
                repo().join("tests/fixtures/mmrl/mmrl_params.safetensors"),
            )],
            read: Box::new(tensors),
        },
        Target {
            name: "dassl-checkpoint",
            file: "model.pth.tar-50",
            seeds: vec![read(
                repo().join("tests/fixtures/coop/prompt_learner/model.pth.tar-50"),
            )],
            read: Box::new(tensors),
        },
        Target {
            name: "our-checkpoint",
            file: "mm-adapter.safetensors",
            seeds: vec![ours],
            read: Box::new(move |p| {
                let header = outcome(mmrl_train::checkpoint::read_header(p, &clip_for_header));
                match (header.as_str(), tensors(p)) {
                    ("ok", t) => t,
                    (h, t) => format!("{h} / {t}"),
                }
            }),
        },
        Target {
            name: "config.json",
            file: "config.json",
            seeds: vec![read(clip.join("config.json"))],
            read: Box::new(|p| outcome(mmrl_model::clip::ClipConfig::from_hf_json(p))),
        },
        Target {
            name: "preprocessor_config.json",
            file: "preprocessor_config.json",
            seeds: vec![read(clip.join("preprocessor_config.json"))],
            read: Box::new(|p| outcome(mmrl_data::PreprocessConfig::from_hf_json(p, 224))),
        },
        Target {
            name: "tokenizer.json",
            file: "tokenizer.json",
            seeds: vec![read(clip.join("tokenizer.json"))],
            read: Box::new(|p| {
                outcome(
                    mmrl_data::ClipTokenizer::from_file(p)
                        .and_then(|t| t.encode_batch(&["a photo of a café, 42 dogs!"])),
                )
            }),
        },
        Target {
            name: "bpe-vocab",
            file: "bpe_simple_vocab_16e6.txt.gz",
            seeds: vec![read(
                repo().join("data/assets/bpe_simple_vocab_16e6.txt.gz"),
            )],
            read: Box::new(|p| {
                outcome(
                    mmrl_data::ClipTokenizer::from_bpe_gz(p)
                        .and_then(|t| t.encode_batch(&["a photo of a café, 42 dogs!"])),
                )
            }),
        },
        Target {
            name: "bpe-merges",
            file: "merges.txt",
            seeds: vec![merges],
            read: Box::new(|p| {
                outcome(
                    mmrl_data::ClipTokenizer::from_path(p)
                        .and_then(|t| t.encode_batch(&["a photo of a café, 42 dogs!"])),
                )
            }),
        },
        Target {
            name: "split-json",
            file: "split_zhou_Test.json",
            seeds: vec![split],
            read: Box::new(move |p| {
                outcome(mmrl_data::dataset::split_file::read_split_file(
                    p,
                    &images_dir,
                ))
            }),
        },
        Target {
            name: "csv",
            file: "data.csv",
            seeds: vec![csv],
            read: Box::new(|p| {
                // The CSV names images relative to its own folder.
                let at = p.parent().unwrap().join("a");
                if !at.exists() {
                    std::fs::create_dir_all(&at).unwrap();
                    for i in 0..3 {
                        std::fs::write(at.join(format!("{i}.png")), png(8, 8)).unwrap();
                    }
                }
                outcome(mmrl_data::dataset::custom::read_csv(p, None))
            }),
        },
        Target {
            name: "image",
            file: "image.bin",
            seeds: vec![png(13, 9), jpeg(16, 12)],
            read: Box::new(|p| outcome(mmrl_data::preprocess::load_rgb8(p))),
        },
    ];
    install_panic_recorder();
    let findings = fuzz(targets, &work);
    let _ = std::panic::take_hook();
    eprintln!("{} inputs in all", RUNS.load(Ordering::Relaxed));
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}
