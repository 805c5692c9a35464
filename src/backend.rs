//! The backends the binary can run on, chosen at run time with `--device`.

use std::fmt;

/// The default CPU backend: Burn's flex (the fastest CPU option measured,
/// `benchmarks/RESULTS.md`). Always built.
pub type Cpu = burn::backend::Flex;
/// Burn's ndarray CPU backend; built with the `ndarray` feature (default).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray<f32>;
/// Any GPU through wgpu (Vulkan, Metal, DX12); built with `--features wgpu`.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;
/// NVIDIA GPUs through CUDA; built with `--features cuda`.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// wgpu without Burn's fusion layer: what `train` and `demo` run on.
///
/// burn-fusion 0.21 loses track of a tensor now and then while Burn's Learner
/// trains on a fused device ("Should have handle for tensor" on a `DSU-…`
/// thread, then the checkpointer's channel closes: tracel-ai/burn#4347, open).
/// Measured here: `train_run::training_on_gpu_matches_the_cpu_run` on wgpu
/// panicked in 2 of 5 runs on the fused backend. Inference (`zeroshot`,
/// `eval`, `predict`) keeps fusion, which its parity tests cover.
#[cfg(feature = "wgpu")]
pub type WgpuTrain = mmrl_model::kernels::WgpuUnfused;
/// CUDA without Burn's fusion layer, for training (see [`WgpuTrain`]).
#[cfg(feature = "cuda")]
pub type CudaTrain = mmrl_model::kernels::CudaUnfused;

/// `--device` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DeviceKind {
    /// CPU (Burn's flex backend).
    #[default]
    Cpu,
    /// CPU through Burn's ndarray backend.
    Ndarray,
    /// Any GPU through wgpu.
    Wgpu,
    /// NVIDIA GPU through CUDA.
    Cuda,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Ndarray => "ndarray",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// Runs `$body` with `B` bound to the backend `$kind` selects and `device`
/// set to its default device; fails clearly when the binary lacks it, or
/// when a GPU backend cannot run here (`devices::require`). `train: $kind`
/// picks the GPU backends without fusion ([`WgpuTrain`], [`CudaTrain`]).
#[macro_export]
macro_rules! with_backend {
    // Training: the GPU backends without Burn's fusion layer (`WgpuTrain`).
    (train: $kind:expr, |$b:ident, $device:ident| $body:expr) => {
        $crate::with_backend!(@pick $kind, WgpuTrain, CudaTrain, |$b, $device| $body)
    };
    (@pick $kind:expr, $wgpu:ident, $cuda:ident, |$b:ident, $device:ident| $body:expr) => {{
        use $crate::backend::DeviceKind;
        match $kind {
            DeviceKind::Cpu => {
                type $b = $crate::backend::Cpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "ndarray")]
            DeviceKind::Ndarray => {
                type $b = $crate::backend::NdArray;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => match $crate::devices::require(DeviceKind::Wgpu) {
                Err(e) => Err(e),
                Ok(()) => {
                    type $b = $crate::backend::$wgpu;
                    let $device = Default::default();
                    $body
                }
            },
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => match $crate::devices::require(DeviceKind::Cuda) {
                Err(e) => Err(e),
                Ok(()) => {
                    type $b = $crate::backend::$cuda;
                    let $device = Default::default();
                    $body
                }
            },
            #[allow(unreachable_patterns)]
            other => Err(anyhow::anyhow!(
                "this mmrl binary was built without the {other} backend; rebuild with \
                 `cargo build --release --features {other}` (see the README)"
            )),
        }
    }};
    ($kind:expr, |$b:ident, $device:ident| $body:expr) => {
        $crate::with_backend!(@pick $kind, Wgpu, Cuda, |$b, $device| $body)
    };
}
