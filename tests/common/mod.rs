//! Helpers shared by the integration tests: fixture paths and readers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The backend the parity tests run on: the default CPU backend (flex), as
/// `mmrl --device cpu` runs; built with `--features test-wgpu` or
/// `--features test-cuda`, the same tests run on that GPU backend.
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub type B = mmrl::backend::Cpu;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type B = mmrl::backend::Wgpu;
#[cfg(feature = "test-cuda")]
pub type B = mmrl::backend::Cuda;

/// The `--device` of `B`, for tests that run the binary.
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub const DEVICE: &str = "cpu";
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub const DEVICE: &str = "wgpu";
#[cfg(feature = "test-cuda")]
pub const DEVICE: &str = "cuda";

/// How much a comparison on `B` may differ beyond the CPU tolerance it
/// states, from measurements (docs/gpu.md). wgpu runs f32 throughout, in
/// another reduction order: every check within its CPU tolerance (worst 0.35
/// of it). CUDA runs f32 matmuls as TF32 (10-bit mantissa): CLIP's
/// embeddings and logits came within 3.7× their CPU tolerances on an H200.
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub const TOL_SCALE: f32 = 1.0;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub const TOL_SCALE: f32 = 1.0;
#[cfg(feature = "test-cuda")]
pub const TOL_SCALE: f32 = 10.0;

/// On CUDA, f32 matmuls run as TF32 (10 explicit mantissa bits, unit
/// roundoff 2^-11 = 4.9e-4), whose error grows with the values' size: there a
/// comparison with a reference also passes within this fraction of the
/// reference's largest magnitude. Measured on an H200 (2026-11-28, relative to
/// that magnitude): CoOp's context gradient 3.3e-3, MMRL's loss 2.3e-3 and
/// class logits 1.5e-3, CoOp's text features 7e-4, MMRL's hidden states
/// 3.4e-4; 1e-2 leaves 3× the worst. A real fault is far outside it (the
/// wrong hidden states of the second H200 run were off by 56 %).
#[cfg(feature = "test-cuda")]
pub const GPU_REL_TOL: f32 = 1e-2;
#[cfg(not(feature = "test-cuda"))]
pub const GPU_REL_TOL: f32 = 0.0;

/// Asserts `diff <= cpu_tol * TOL_SCALE`. With `MMRL_TEST_MEASURE=<file>` set
/// it also appends `{"check", "backend", "diff", "tol", "scale"}` to that file
/// as a JSON line (`scale`: the reference's largest magnitude, where known),
/// and with `MMRL_TEST_NO_ASSERT=1` it only records: how the GPU tolerances
/// are measured (`scripts/gpu-check.sh`).
pub fn assert_within(check: &str, diff: f32, cpu_tol: f32) {
    within(check, diff, cpu_tol * TOL_SCALE, None);
}

/// Asserts `ours` is within `cpu_tol * TOL_SCALE` of `reference` (largest
/// absolute difference), or on CUDA within `GPU_REL_TOL` of the reference's
/// largest magnitude when that is more; prints and returns the difference.
/// Records like [`assert_within`], with the reference's magnitude as `scale`.
pub fn assert_close_to(check: &str, ours: &[f32], reference: &[f32], cpu_tol: f32) -> f32 {
    let diff = max_abs_diff(ours, reference);
    eprintln!("{check}: max abs diff {diff:e}");
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let tol = (cpu_tol * TOL_SCALE).max(GPU_REL_TOL * scale);
    within(check, diff, tol, Some(scale));
    diff
}

/// With frozen CLIP in bf16 (`--precision bf16`) a comparison with an f32
/// reference passes within a fraction of the reference's largest magnitude,
/// and in direction: bf16 keeps 8 significant bits (unit roundoff 2^-9 =
/// 2.0e-3) and every block rounds its inputs, weights and outputs, in the
/// forward and in the backward. Measured on the tiny test CLIPs (flex, f32
/// reference; 2026-11-28): CLIP's embeddings and logits 0.6-1.6e-2 of their
/// magnitude, MMRL's losses up to 3.7e-2 (the ×100 rep logits' cross-entropy),
/// MMRL's gradients 2.6e-2 to 1.0e-1, at cosines of at least 0.9985 with the
/// reference's. Outputs pass within 0.1, gradients within 0.2 (about twice
/// the worst), each at a cosine of at least 0.99 (seven times the worst
/// shortfall): a dropped or misrouted gradient path is far outside both.
pub const BF16_REL_TOL: f32 = 0.1;
/// [`BF16_REL_TOL`] for gradients.
pub const BF16_GRAD_REL_TOL: f32 = 0.2;
/// The least cosine between a bf16 result and its f32 reference.
pub const BF16_MIN_COSINE: f32 = 0.99;

/// Asserts `ours` is within `rel` of the reference's largest magnitude (on
/// CUDA, `rel + GPU_REL_TOL` of it: TF32's error adds to bf16's) and, for
/// more than one value, at a cosine of at least [`BF16_MIN_COSINE`] with it;
/// prints and returns the difference. Records like [`assert_within`].
pub fn assert_close_rel(check: &str, ours: &[f32], reference: &[f32], rel: f32) -> f32 {
    let diff = max_abs_diff(ours, reference);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let cos = cosine(ours, reference);
    eprintln!(
        "{check}: max abs diff {diff:e} ({:.2e} of {scale:e}), cosine {cos}",
        diff / scale
    );
    within(check, diff, (rel + GPU_REL_TOL) * scale, Some(scale));
    assert!(
        ours.len() < 2 || cos >= BF16_MIN_COSINE || only_recording(),
        "{check}: at a cosine of {cos} with the reference (at least {BF16_MIN_COSINE} on {DEVICE})"
    );
    diff
}

/// The cosine of the angle between `a` and `b` (1 for the same direction).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>();
    (dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()) as f32
}

/// Whether the backend of the tests runs `--precision bf16`; where it does
/// not, its refusal must name the way out (asserted here).
pub fn runs_bf16() -> bool {
    use mmrl::model::clip::Precision;
    match Precision::Bf16.check::<B>(&Default::default()) {
        Ok(()) => true,
        Err(e) => {
            assert!(e.contains("--precision f32"), "{e}");
            eprintln!("not on {DEVICE}: {e}");
            false
        }
    }
}

/// `MMRL_TEST_MEASURE` with `MMRL_TEST_NO_ASSERT`: record, do not stop.
fn only_recording() -> bool {
    std::env::var_os("MMRL_TEST_MEASURE").is_some()
        && std::env::var_os("MMRL_TEST_NO_ASSERT").is_some()
}

fn within(check: &str, diff: f32, tol: f32, scale: Option<f32>) {
    if let Some(path) = std::env::var_os("MMRL_TEST_MEASURE") {
        use std::io::Write;
        let line = serde_json::json!({
            "check": check, "backend": DEVICE, "diff": diff, "tol": tol, "scale": scale,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("MMRL_TEST_MEASURE is writable");
        writeln!(f, "{line}").unwrap();
        if std::env::var_os("MMRL_TEST_NO_ASSERT").is_some() {
            return;
        }
    }
    assert!(
        diff <= tol,
        "{check}: differs from the reference by {diff:e} (tolerance {tol:e} on {DEVICE})"
    );
}

/// The repository root: where the fixtures are. `MMRL_REPO` overrides the
/// build-time path, so that test binaries built here run on another machine.
pub fn repo() -> PathBuf {
    std::env::var_os("MMRL_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `tests/fixtures/clip/<rel>`.
pub fn clip_fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/clip").join(rel)
}

/// The test images under `tests/fixtures/clip/images/`, in the order of
/// the CLIP fixtures' rows (`pixel_values`).
pub const CLIP_IMAGES: [&str; 6] = [
    "gray.png",
    "rgb.jpg",
    "rgb16.png",
    "rgba.png",
    "small.png",
    "wide.jpg",
];

/// [`CLIP_IMAGES`] as paths.
pub fn clip_image_paths() -> Vec<String> {
    CLIP_IMAGES
        .iter()
        .map(|n| clip_fixture(&format!("images/{n}")).display().to_string())
        .collect()
}

/// `tests/fixtures/mmrl/<rel>`.
pub fn mmrl_fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/mmrl").join(rel)
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

/// Runs the `mmrl` binary (`MMRL_BIN` overrides the one cargo built).
pub fn mmrl(args: &[&str]) -> Output {
    mmrl_command(args).output().expect("mmrl runs")
}

/// The `mmrl` binary with `args`, not started.
pub fn mmrl_command(args: &[&str]) -> Command {
    let bin = std::env::var_os("MMRL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mmrl")));
    let mut c = Command::new(bin);
    c.args(args);
    c
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

/// Replaces every trained tensor with its gradient, or zeros where it got
/// none (so that `Method::state` names the gradients as the reference does).
pub struct GradsOf<'a> {
    pub grads: &'a burn::optim::GradientsParams,
}

impl<Bk: burn::tensor::backend::AutodiffBackend> burn::module::ModuleMapper<Bk> for GradsOf<'_> {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::prelude::Tensor<Bk, D>>,
    ) -> burn::module::Param<burn::prelude::Tensor<Bk, D>> {
        let (id, value, mapper) = param.consume();
        let grad = match self.grads.get::<Bk::InnerBackend, D>(id) {
            Some(g) => burn::prelude::Tensor::from_inner(g),
            None => value.zeros_like(),
        };
        burn::module::Param::from_mapped_value(id, grad, mapper)
    }
}

/// `pixel_values` of a fixture file, as an image batch.
pub fn images_at<Bk: burn::prelude::Backend>(
    path: &std::path::Path,
) -> burn::prelude::Tensor<Bk, 4> {
    let (pixels, shape) = tensor_at(path, "pixel_values");
    burn::prelude::Tensor::<Bk, 1>::from_floats(pixels.as_slice(), &Default::default())
        .reshape([shape[0], shape[1], shape[2], shape[3]])
}

/// `labels` of a fixture file.
pub fn labels_at<Bk: burn::prelude::Backend>(
    path: &std::path::Path,
) -> burn::prelude::Tensor<Bk, 1, burn::prelude::Int> {
    let labels: Vec<i64> = tensor_at(path, "labels")
        .0
        .iter()
        .map(|&v| v as i64)
        .collect();
    let n = labels.len();
    burn::prelude::Tensor::from_data(
        burn::prelude::TensorData::new(labels, [n]),
        &Default::default(),
    )
}

/// A JSON array of strings.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s.as_str().expect("strings").to_string())
        .collect()
}
