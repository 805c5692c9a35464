#!/usr/bin/env bash
# Frozen CLIP in bf16 (`--precision bf16`) against f32 on the CPU (flex), with
# PyTorch's f32 and bf16 image encode from the same run: ViT-B/16 image encode
# (batch 8) and MMRL's training step and scoring pass with their peak memory
# (batch 4, 100 classes). Prints JSON lines; see RESULTS.md.
# Needs: python3 with benchmarks/scripts/requirements.txt installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${ITERS:-3}"
cargo build --release -p mmrl-benchmarks
BIN="${CARGO_TARGET_DIR:-target}/release/mmrl-bench"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | xargs)"
for p in f32 bf16; do
  "$BIN" --backend flex --what image --batch 8 --iters "$ITERS" --precision "$p"
  python3 benchmarks/scripts/bench_pytorch.py --device cpu --batch 8 --iters "$ITERS" --no-text --dtype "$p"
done
for p in f32 bf16; do
  "$BIN" --backend flex --what method-step --method mmrl --batch 4 --prompts 100 --iters "$ITERS" --precision "$p"
done
