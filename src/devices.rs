//! `mmrl devices`: the backends this binary was built with, the device each
//! one sees, and, where one cannot run, what is missing and how to install it.
//!
//! Each GPU backend is probed by running one small kernel on its default
//! device, in a thread with a time limit: that is what `--device wgpu|cuda`
//! will do first, so "works" here means it works there.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::path::{Path, PathBuf};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::sync::mpsc;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

#[cfg(any(feature = "wgpu", feature = "cuda"))]
/// How long a backend may take to start and run its first kernel (shader
/// compilation on a software device takes seconds, not minutes).
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// Prints every backend's status, as a table or one JSON object.
pub fn devices_cmd(as_json: bool) -> Result<()> {
    let report = vec![cpu(), ndarray(), wgpu(), cuda()];
    if as_json {
        println!("{}", json!({ "backends": report }));
        return Ok(());
    }
    for b in &report {
        let name = b["backend"].as_str().unwrap_or("?");
        let status = if !b["built"].as_bool().unwrap_or(false) {
            "not built"
        } else if b["works"].as_bool().unwrap_or(false) {
            "works"
        } else {
            "FAILS"
        };
        println!(
            "{name:<8} {status:<10} {}",
            b["device"].as_str().unwrap_or("")
        );
        for key in ["details", "error"] {
            if let Some(text) = b[key].as_str() {
                println!("{:<19} {text}", "");
            }
        }
        if let Some(fixes) = b["fix"].as_array() {
            for f in fixes {
                println!("{:<19} fix: {}", "", f.as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

/// Fails with what is missing, and how to install it, when the GPU backend
/// `kind` cannot run on this machine (the GPU runtimes would panic on a
/// missing driver in the middle of a command). CPU backends always pass.
pub fn require(kind: crate::backend::DeviceKind) -> Result<()> {
    use crate::backend::DeviceKind;
    let report = match kind {
        DeviceKind::Wgpu => wgpu(),
        DeviceKind::Cuda => cuda(),
        DeviceKind::Cpu | DeviceKind::Ndarray => return Ok(()),
    };
    if report["works"].as_bool().unwrap_or(false) || !report["built"].as_bool().unwrap_or(false) {
        // Not built: `with_backend!` names the missing feature itself.
        return Ok(());
    }
    let mut msg = format!(
        "the {kind} backend cannot run on this machine: {}",
        report["error"].as_str().unwrap_or("its test kernel failed")
    );
    for fix in report["fix"].as_array().into_iter().flatten() {
        msg.push_str(&format!("\n  fix: {}", fix.as_str().unwrap_or("")));
    }
    msg.push_str("\n  (`mmrl devices` shows every backend; `--device cpu` always runs)");
    Err(anyhow::anyhow!(msg))
}

fn cpu() -> Value {
    let (model, flags) = cpu_info();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    json!({
        "backend": "cpu", "built": true, "works": true,
        "device": format!("{model} ({threads} threads)"),
        "details": format!("Burn's flex backend; SIMD: {}", flags.join(" ")),
    })
}

fn ndarray() -> Value {
    if cfg!(feature = "ndarray") {
        json!({"backend": "ndarray", "built": true, "works": true, "device": "CPU (Burn's ndarray backend)"})
    } else {
        not_built("ndarray")
    }
}

fn not_built(backend: &str) -> Value {
    json!({
        "backend": backend, "built": false, "works": false, "device": "",
        "fix": [format!("rebuild with `cargo build --release --features {backend}` (README: GPUs)")],
    })
}

/// The CPU's model name and the SIMD extensions the kernels can use.
fn cpu_info() -> (String, Vec<&'static str>) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = text
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mut flags = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            flags.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            flags.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            flags.push("avx512f");
        }
    }
    #[cfg(target_arch = "aarch64")]
    flags.push("neon");
    if flags.is_empty() {
        flags.push("none detected");
    }
    (model, flags)
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
/// Runs `probe` in its own thread with a time limit; a panic (how the GPU
/// runtimes report a missing driver) becomes its message.
fn run_probe<T: Send + 'static>(
    probe: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let previous = std::panic::take_hook();
    let (msg_tx, msg_rx) = mpsc::channel::<String>();
    let msg_tx = std::sync::Mutex::new(msg_tx);
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        if let Ok(tx) = msg_tx.lock() {
            let _ = tx.send(msg);
        }
    }));
    std::thread::spawn(move || {
        let _ = tx.send(probe());
    });
    let result = match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(v) => Ok(v),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no answer within {} s (the driver hangs?)",
            PROBE_TIMEOUT.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(msg_rx
            .try_recv()
            .unwrap_or_else(|_| "the backend stopped without a message".into())),
    };
    std::panic::set_hook(previous);
    result
}

/// Runs one reduction on `B`'s default device; the value must come back.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn trial_kernel<B: burn::tensor::backend::Backend>() -> std::result::Result<(), String> {
    use burn::tensor::{ElementConversion, Tensor};
    let device = B::Device::default();
    let t = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &device);
    let s: f32 = (t.clone() * t).sum().into_scalar().elem();
    if (s - 30.0).abs() < 1e-4 {
        Ok(())
    } else {
        Err(format!("a test kernel gave {s} instead of 30"))
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
/// The first of `names` found in the dynamic linker's usual directories.
fn find_library(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/lib64",
        "/usr/local/lib",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.into());
    }
    if let Ok(cuda) = std::env::var("CUDA_PATH") {
        dirs.push(Path::new(&cuda).join("lib64"));
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.exists())
}

fn wgpu() -> Value {
    #[cfg(not(feature = "wgpu"))]
    {
        not_built("wgpu")
    }
    #[cfg(feature = "wgpu")]
    {
        use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, WgpuDevice};
        let probe = run_probe(|| {
            let setup =
                init_setup::<AutoGraphicsApi>(&WgpuDevice::DefaultDevice, Default::default());
            let info = setup.adapter.get_info();
            let described = format!(
                "{} ({:?}, {:?}; driver {} {})",
                info.name, info.backend, info.device_type, info.driver, info.driver_info
            );
            (described, trial_kernel::<crate::backend::Wgpu>())
        });
        let mut out = json!({"backend": "wgpu", "built": true});
        match probe {
            Ok((device, Ok(()))) => {
                out["works"] = true.into();
                out["device"] = device.into();
            }
            Ok((device, Err(e))) => {
                out["works"] = false.into();
                out["device"] = device.into();
                out["error"] = e.into();
            }
            Err(e) => {
                out["works"] = false.into();
                out["device"] = "no adapter".into();
                out["error"] = e.into();
                out["fix"] = wgpu_fixes().into();
            }
        }
        out
    }
}

/// What a machine without a working wgpu adapter lacks (Linux: Vulkan).
#[cfg(feature = "wgpu")]
fn wgpu_fixes() -> Vec<String> {
    let mut fixes = Vec::new();
    if find_library(&["libvulkan.so.1", "libvulkan.so"]).is_none() {
        fixes.push(
            "no Vulkan loader (libvulkan.so.1): `apt-get install libvulkan1` \
             (or run scripts/setup.sh)"
                .to_string(),
        );
    }
    let icd_dirs = [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ];
    let has_icd = std::env::var_os("VK_ICD_FILENAMES").is_some()
        || std::env::var_os("VK_DRIVER_FILES").is_some()
        || icd_dirs.iter().any(|d| {
            std::fs::read_dir(d)
                .map(|mut e| e.next().is_some())
                .unwrap_or(false)
        });
    if !has_icd {
        fixes.push(format!(
            "no Vulkan driver (ICD) in {}: for a GPU, install its vendor's driver; \
             without one, `apt-get install mesa-vulkan-drivers` gives lavapipe, a \
             software Vulkan device (slow, but the same kernels)",
            icd_dirs.join(", ")
        ));
    }
    if fixes.is_empty() {
        fixes.push(
            "a Vulkan loader and driver are installed but no adapter answered: \
             `vulkaninfo --summary` (package vulkan-tools) shows what Vulkan sees"
                .to_string(),
        );
    }
    fixes
}

fn cuda() -> Value {
    #[cfg(not(feature = "cuda"))]
    {
        not_built("cuda")
    }
    #[cfg(feature = "cuda")]
    {
        let mut out = json!({"backend": "cuda", "built": true, "device": nvidia_smi()});
        match run_probe(trial_kernel::<crate::backend::Cuda>) {
            Ok(Ok(())) => out["works"] = true.into(),
            Ok(Err(e)) | Err(e) => {
                out["works"] = false.into();
                out["error"] = e.into();
                out["fix"] = cuda_fixes().into();
            }
        }
        out
    }
}

/// The GPUs `nvidia-smi` lists (name, driver, memory), when it is installed.
#[cfg(feature = "cuda")]
fn nvidia_smi() -> String {
    std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| format!("GPU {l}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| "no NVIDIA GPU listed (nvidia-smi absent or failing)".into())
}

/// What a machine where CUDA fails lacks: the driver, NVRTC, the headers.
#[cfg(feature = "cuda")]
fn cuda_fixes() -> Vec<String> {
    let mut fixes = Vec::new();
    if find_library(&["libcuda.so.1", "libcuda.so"]).is_none() {
        fixes.push("no CUDA driver (libcuda.so.1): install the NVIDIA driver".to_string());
    }
    if find_library(&["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"]).is_none() {
        fixes.push(
            "no NVRTC (libnvrtc.so), which compiles the kernels at run time: install the \
             CUDA toolkit and put its lib64 on LD_LIBRARY_PATH \
             (export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH)"
                .to_string(),
        );
    }
    let cuda_path = std::env::var("CUDA_PATH").unwrap_or_else(|_| "/usr/local/cuda".into());
    if !Path::new(&cuda_path).join("include/cuda.h").exists() {
        fixes.push(format!(
            "no CUDA headers under {cuda_path}/include (NVRTC needs them): install the CUDA \
             toolkit and set CUDA_PATH to it (export CUDA_PATH=/usr/local/cuda)"
        ));
    }
    if fixes.is_empty() {
        fixes.push(
            "driver, NVRTC and headers were found: check `nvidia-smi`, and that the toolkit \
             matches the build (CUDARC_CUDA_VERSION at build time)"
                .to_string(),
        );
    }
    fixes
}
