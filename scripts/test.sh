#!/usr/bin/env bash
# The project's checks, in the order CI runs them: formatting, lints, the
# workspace tests on the CPU backend, parity tests and a short training run on
# the wgpu backend (on lavapipe, Mesa's software Vulkan device, where the
# machine has no GPU), and lints of the CUDA code paths (the CUDA backend
# compiles without a GPU; its tests run in scripts/gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace, CPU)"
cargo test --workspace

step "tests on wgpu (a subset: every kernel is compiled on first use, see docs/gpu.md)"
if scripts/setup-vulkan.sh; then
  # Autotuning would time every kernel variant on a software device.
  export CUBECL_AUTOTUNE_LEVEL=minimal
  cargo run --quiet --features test-wgpu --bin mmrl -- devices
  W=(cargo test --features test-wgpu)
  "${W[@]}" --test mmrl_parity
  "${W[@]}" --test clip_parity -- hf_folder
  "${W[@]}" --test coop_parity -- gradient_of_the_context
  "${W[@]}" --test cli_zeroshot -- hf_folder
  "${W[@]}" --test train_run -- training_on_gpu_matches_the_cpu_run
else
  echo "SKIPPED: no Vulkan device and none could be installed (scripts/setup-vulkan.sh)" >&2
fi

step "cargo clippy --features test-cuda (the CUDA code paths, and the benchmarks' GPU backends)"
cargo clippy --workspace --all-targets --features test-cuda,mmrl-benchmarks/cuda,mmrl-benchmarks/wgpu -- -D warnings
