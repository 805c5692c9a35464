#!/usr/bin/env bash
# Builds, on a machine with Rust, everything `scripts/gpu-check.sh --bin DIR`
# runs on an NVIDIA machine without Rust: `mmrl` and `mmrl-bench` with
# `--features cuda`, and the CUDA parity test binaries. Strips them and packs
# them into gpu-pack/gpu-bin.tar.xz (unpack in the repository: gpu-bin/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
T="${CARGO_TARGET_DIR:-target}"
# The test build also builds `mmrl` (with the same features, so nothing twice).
rm -rf gpu-pack && mkdir -p gpu-pack/gpu-bin/tests
cargo test --release --features test-cuda --no-run --message-format=json \
  ${GPU_PACK_TESTS:---test clip_parity --test mmrl_parity --test coop_parity --test cli_zeroshot --test train_run --test gpu_ops} |
  python3 -c 'import json,sys,shutil
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], "gpu-pack/gpu-bin/tests/" + m["target"]["name"])'
cargo build --release -p mmrl-benchmarks --features cuda
cp "$T/release/mmrl" "$T/release/mmrl-bench" gpu-pack/gpu-bin/
strip gpu-pack/gpu-bin/mmrl gpu-pack/gpu-bin/mmrl-bench gpu-pack/gpu-bin/tests/*
# One 256 MiB window: the binaries share most of their code.
tar -C gpu-pack -cf - gpu-bin | xz --lzma2=preset=9,dict=256MiB > gpu-pack/gpu-bin.tar.xz
rm -rf gpu-pack/gpu-bin
ls -l gpu-pack/gpu-bin.tar.xz
