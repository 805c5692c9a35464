#!/usr/bin/env bash
# Every method's training step (forward, loss, backward, AdamW update) and
# scoring pass at ViT-B/16 shapes on CPU, same batch and classes, one process
# per method (each reports its own peak memory), then the reference MMRL step
# on PyTorch in the same run. Prints JSON lines; see RESULTS.md.
# Needs: python3 with benchmarks/scripts/requirements.txt for the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${ITERS:-3}"
BATCH="${BATCH:-4}"
CLASSES="${CLASSES:-100}"
cargo build --release -p mmrl-benchmarks
BIN="${CARGO_TARGET_DIR:-target}/release/mmrl-bench"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
for method in ${METHODS:-zeroshot coop mmrl comma mm-adapter}; do
  "$BIN" --backend flex --what method-step --method "$method" \
    --batch "$BATCH" --prompts "$CLASSES" --iters "$ITERS"
done
if python3 -c "import torch" 2>/dev/null; then
  python3 benchmarks/scripts/bench_mmrl_step_pytorch.py --batch "$BATCH" --classes "$CLASSES" --iters "$ITERS"
else
  echo "# PyTorch not installed: the reference step was not timed" >&2
fi
