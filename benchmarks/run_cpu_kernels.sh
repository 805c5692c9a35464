#!/usr/bin/env bash
# The CPU kernels' benchmark (issue: fused kernels for the CPU backend): in one
# run, Burn flex with its specialised kernels, flex with the composed forms
# (MMRL_CPU_KERNELS=composed, i.e. before the kernels) and PyTorch, on
#   (1) ViT-B/16 image encode, batch 8 and 32;
#   (2) text encode of 100 prompts;
#   (3) one MMRL training step at ViT-B/16 shapes (batch 4, 100 classes;
#       forward, loss, backward, AdamW) against the reference step on PyTorch;
#   (4) one epoch of the demo's small-CLIP pretraining, with CPU utilisation.
# Prints the CPU and JSON lines; see RESULTS.md.
# Needs: python3 with benchmarks/scripts/requirements.txt installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${ITERS:-5}"
cargo build --release -p mmrl-benchmarks
BIN="${CARGO_TARGET_DIR:-target}/release/mmrl-bench"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512vl|amx_tile' /proc/cpuinfo | sort -u | xargs)"
# ROUNDS=n alternates PyTorch and mmrl n times per batch size: this VM's speed drifts
# by 20 % over minutes, and alternating puts both sides in the same minutes.
for batch in 8 32; do
  for _ in $(seq "${ROUNDS:-1}"); do
    python3 benchmarks/scripts/bench_pytorch.py --device cpu --iters "$ITERS" --batch "$batch" \
      $([ "${ENCODE_ONLY:-0}" = 1 ] && echo --no-text)
    "$BIN" --backend flex --what image --batch "$batch" --iters "$ITERS"
  done
  [ "${ENCODE_ONLY:-0}" = 1 ] ||
    MMRL_CPU_KERNELS=composed "$BIN" --backend flex --what image --batch "$batch" --iters "$ITERS"
done
# ENCODE_ONLY=1 times the image encode alone (PyTorch's script skips its text row).
[ "${ENCODE_ONLY:-0}" = 1 ] && exit 0
"$BIN" --backend flex --what text --iters "$ITERS"
"$BIN" --backend flex --what text --full-context --iters "$ITERS"
MMRL_CPU_KERNELS=composed "$BIN" --backend flex --what text --full-context --iters "$ITERS"
python3 benchmarks/scripts/bench_mmrl_step_pytorch.py --batch 4 --classes 100 --iters 3 --adamw
"$BIN" --backend flex --what method-step --method mmrl --batch 4 --prompts 100 --iters 3
MMRL_CPU_KERNELS=composed "$BIN" --backend flex --what method-step --method mmrl --batch 4 --prompts 100 --iters 3
"$BIN" --what pretrain-epoch
MMRL_CPU_KERNELS=composed "$BIN" --what pretrain-epoch
