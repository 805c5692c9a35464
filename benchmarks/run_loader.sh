#!/usr/bin/env bash
# Training data pipeline throughput: mmrl's ImageLoader (flex) next to torchvision +
# torch's DataLoader, on the same synthetic photos. Prints JSON lines; see RESULTS.md.
# Needs: python3 with torch, torchvision, pillow.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${DIR:-${TMPDIR:-/tmp}/mmrl-bench-loader/photos}"
IMAGES="${IMAGES:-256}"
cargo build --release -p mmrl-benchmarks
BIN="${CARGO_TARGET_DIR:-target}/release/mmrl-bench"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
"$BIN" --what loader --images "$IMAGES" --epochs 0 --dir "$DIR" >/dev/null   # writes the photos once
for w in 1 2; do
  python3 benchmarks/scripts/bench_loader_pytorch.py --dir "$DIR" --workers "$w"
  "$BIN" --what loader --images "$IMAGES" --workers "$w" --dir "$DIR"
  "$BIN" --what loader --images "$IMAGES" --workers "$w" --cache --dir "$DIR"
done
