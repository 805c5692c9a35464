#!/usr/bin/env bash
# Side-by-side CPU benchmark: Burn (flex, ndarray) and PyTorch (transformers)
# on the same machine, in one run. Prints JSON lines; see RESULTS.md.
# Needs: python3 with benchmarks/scripts/requirements.txt installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${ITERS:-5}"
cargo build --release -p mmrl-benchmarks
BIN="${CARGO_TARGET_DIR:-target}/release/mmrl-bench"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -o -w -E 'avx2|avx512f|amx_tile' /proc/cpuinfo | sort -u | xargs)"
python3 benchmarks/scripts/bench_pytorch.py --device cpu --iters "$ITERS"
"$BIN" --backend flex --iters "$ITERS"
"$BIN" --backend flex --what text --full-context --iters "$ITERS"
"$BIN" --backend ndarray --iters "$ITERS"
"$BIN" --backend flex --what profile
