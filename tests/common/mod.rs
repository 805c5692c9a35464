//! Helpers shared by the integration tests: fixture paths and readers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The default CPU backend (flex), as `mmrl --device cpu` runs.
pub type B = mmrl::backend::Cpu;

/// `tests/fixtures/clip/<rel>`.
pub fn clip_fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(rel)
}

/// `tests/fixtures/mmrl/<rel>`.
pub fn mmrl_fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mmrl")
        .join(rel)
}

/// A tensor of a CLIP fixture safetensors file: (values as f32, shape).
pub fn tensor(file: &str, key: &str) -> (Vec<f32>, Vec<usize>) {
    tensor_at(&clip_fixture(file), key)
}

/// A tensor of any safetensors file: (values as f32, shape).
pub fn tensor_at(path: &std::path::Path, key: &str) -> (Vec<f32>, Vec<usize>) {
    let file = path.display();
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("{file} has no {key}"));
    let shape = view.shape().to_vec();
    let data = view.data();
    let values = match view.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        safetensors::Dtype::U8 => data.iter().map(|&b| b as f32).collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    (values, shape)
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture's JSON description of the expected outputs.
pub fn expected_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(clip_fixture("expected.json")).unwrap()).unwrap()
}

/// Runs the `mmrl` binary.
pub fn mmrl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmrl"))
        .args(args)
        .output()
        .expect("mmrl runs")
}

/// Asserts a failed run: exit code 2, no panic, stderr mentioning every `needle`.
pub fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

/// A fresh folder under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mmrl-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
