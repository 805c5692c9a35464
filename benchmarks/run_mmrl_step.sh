#!/usr/bin/env bash
# One MMRL training step at ViT-B/16 shapes on CPU: Burn (the frozen lower image
# layers run twice, as before the method interface, and once, as now) and the
# PyTorch reference step, in one run. Prints JSON lines; see RESULTS.md.
# Needs: python3 with benchmarks/scripts/requirements.txt installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${ITERS:-3}"
cargo build --release -p mmrl-benchmarks
BIN="${CARGO_TARGET_DIR:-target}/release/mmrl-bench"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
for batch in ${BATCHES:-4}; do
  "$BIN" --backend flex --what mmrl-step --batch "$batch" --prompts 100 --iters "$ITERS"
  python3 benchmarks/scripts/bench_mmrl_step_pytorch.py --batch "$batch" --classes 100 --iters "$ITERS"
done
