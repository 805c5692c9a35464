#!/usr/bin/env bash
# Sets up a fresh machine and builds the `mmrl` binary (release, CPU).
# Needs a Rust toolchain (rustup) and a C compiler; no downloads at run time.
#
# On Debian/Ubuntu it also installs, where missing, what the wgpu backend
# needs on a machine without a GPU: the Vulkan loader (libvulkan1) and Mesa's
# lavapipe (mesa-vulkan-drivers), a software Vulkan device on which wgpu runs
# the same kernels as on a GPU (the GPU tests run there; see the README's
# "GPUs"). MMRL_SKIP_VULKAN=1 skips this; the CPU backend does not need it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null 2>&1; then
  echo "a C compiler is needed (the JPEG decoder is libjpeg-turbo's): apt-get install build-essential" >&2
  exit 1
fi
scripts/setup-vulkan.sh || echo "note: no Vulkan for the wgpu backend (see above); the CPU backend works without it" >&2
cargo build --release --bin mmrl "$@"
echo "built target/release/mmrl"
