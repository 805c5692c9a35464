#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: is mmrl right on CUDA, and how fast is it next
# to PyTorch on the same GPU? Prints one JSON summary and writes it, with every
# log, under $OUT (default: gpu-check-out/). BUDGET (seconds, default 540)
# bounds the whole run. On a fresh machine most of the time goes into
# compiling kernels (NVRTC, once per process and kernel; the first H200 run
# spent 75-140 s per tiny parity binary on it), so the fast, most wanted
# sections run first and autotuning is kept minimal.
#
#   scripts/gpu-check.sh                 # builds with cargo first (needs Rust)
#   scripts/gpu-check.sh --bin DIR       # binaries built elsewhere (see below)
#
# DIR holds `mmrl` and `mmrl-bench` built with `--features cuda`, and the CUDA
# parity test binaries under DIR/tests/ (gpu_ops, clip_parity, mmrl_parity,
# coop_parity, cli_zeroshot, train_run), as `scripts/gpu-pack.sh` packs them on a machine
# with Rust for one without. Needs python3 with torch and transformers, the
# CUDA toolkit (NVRTC and headers; CUDA_PATH, default /usr/local/cuda).
#
# Sections, each with its own time limit (a failure is recorded, the rest runs):
#   1. devices   `mmrl devices --json`
#   2. zeroshot  `mmrl zeroshot` on a random ViT-B/16 against transformers
#   3. speed     ViT-B/16 image encode (batch 256) and text encode (100 prompts),
#                f32 (TF32) and bf16; one MMRL training step (batch 4 / 100
#                classes, batch 32 / 1000 classes) against the PyTorch reference
#                step (AMP, as the reference trains, and f32/TF32); peak GPU memory
#   4. parity    the parity tests on CUDA, one at a time (tiny CLIP: the op
#                patterns and vision tower against the CPU, CLIP, MMRL, CoOp,
#                zeroshot CLI, a short training run against the CPU run); every
#                measured difference goes to $OUT/measured.jsonl
#   5. demo      `mmrl demo --device cuda` (time and table), if time is left
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-$REPO/gpu-check-out}"
mkdir -p "$OUT"
BIN=""
if [ "${1:-}" = "--bin" ]; then BIN="$(cd "$2" && pwd)"; fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
export LD_LIBRARY_PATH="$CUDA_PATH/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
START=$(date +%s)
BUDGET="${BUDGET:-540}" # seconds for the whole script; the demo gets what is left
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
: > "$OUT/measured.jsonl"

log() { printf '\n==> %s (%ds)\n' "$*" "$(($(date +%s) - START))" >&2; }
record() { echo "$1" >> "$RESULTS"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

if [ -z "$BIN" ]; then
  log "building (release, --features cuda: scripts/gpu-pack.sh)"
  scripts/gpu-pack.sh || exit 1
  tar -xJf gpu-pack/gpu-bin.tar.xz
  BIN="$REPO/gpu-bin"
fi
export MMRL_REPO="$REPO" MMRL_BIN="$BIN/mmrl"

log "1. devices"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1
record "$(python3 -c 'import json,sys; n,d,m=[x.strip() for x in open(sys.argv[1]).read().splitlines()[0].split(",")]; print(json.dumps({"what":"gpu","name":n,"driver":d,"memory":m}))' "$OUT/nvidia-smi.txt" 2>/dev/null || echo '{"what":"gpu","error":"nvidia-smi failed"}')"
timeout 150 "$BIN/mmrl" devices --json > "$OUT/devices.json" 2> "$OUT/devices.log"
record "{\"what\":\"devices\",\"rc\":$?,\"report\":$(cat "$OUT/devices.json" 2>/dev/null || echo null)}"

log "2. zeroshot ViT-B/16 vs transformers"
timeout 240 python3 benchmarks/scripts/gpu_zeroshot_check.py --mmrl "$BIN/mmrl" --device cuda \
  --backends cuda cpu --work "$OUT/zeroshot" > "$OUT/zeroshot.json" 2> "$OUT/zeroshot.log"
rc=$?
if [ $rc -eq 0 ]; then record "$(tail -1 "$OUT/zeroshot.json")"; else record "{\"what\":\"zeroshot-vit-b16\",\"rc\":$rc}"; fi
rm -rf "$OUT/zeroshot"

log "3. speed"
PEAK="python3 benchmarks/scripts/gpu_peak.py --"
export CUBECL_AUTOTUNE_LEVEL=minimal
bench() { # name, limit, command...
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PEAK "$@" >> "$OUT/speed.jsonl" 2>> "$OUT/speed.log" ||
    record "{\"what\":\"speed\",\"run\":\"$name\",\"error\":\"rc $?\"}"
}
: > "$OUT/speed.jsonl"
bench burn-encode-f32 240 "$BIN/mmrl-bench" --backend cuda --what all --batch 256 --prompts 100 --iters 10
bench burn-encode-bf16 180 "$BIN/mmrl-bench" --backend cuda-bf16 --what all --batch 256 --prompts 100 --iters 10
bench torch-encode-f32 120 python3 benchmarks/scripts/bench_pytorch.py --device cuda --batch 256 --iters 10
bench torch-encode-bf16 120 python3 benchmarks/scripts/bench_pytorch.py --device cuda --batch 256 --iters 10 --dtype bf16
for shape in "4 100" "32 1000"; do
  set -- $shape
  bench "burn-step-$1-$2" 240 "$BIN/mmrl-bench" --backend cuda --what mmrl-step --batch "$1" --prompts "$2" --iters 5
  bench "torch-step-amp-$1-$2" 120 python3 benchmarks/scripts/bench_mmrl_step_pytorch.py --device cuda --amp --batch "$1" --classes "$2" --iters 5
  bench "torch-step-f32-$1-$2" 120 python3 benchmarks/scripts/bench_mmrl_step_pytorch.py --device cuda --batch "$1" --classes "$2" --iters 5
done
grep -E '^\{' "$OUT/speed.jsonl" | while read -r line; do record "$line"; done

log "4. parity tests on CUDA"
export MMRL_TEST_MEASURE="$OUT/measured.jsonl"
export CUBECL_AUTOTUNE_LEVEL=minimal # correctness only: no time spent tuning kernels
# One binary at a time, one test at a time: tests started at once on the GPU gave
# wrong numbers (benchmarks/RESULTS.md, second CUDA run); gpu_ops compares the
# methods' op patterns and CLIP's vision tower stage by stage with the CPU.
for t in gpu_ops clip_parity mmrl_parity coop_parity cli_zeroshot train_run; do
  [ -x "$BIN/tests/$t" ] || { record "{\"what\":\"parity\",\"test\":\"$t\",\"rc\":\"missing\"}"; continue; }
  filter=()
  [ "$t" = train_run ] && filter=(on_gpu)
  s=$(date +%s)
  timeout 150 "$BIN/tests/$t" "${filter[@]}" --test-threads=1 --nocapture \
    > "$OUT/test-$t.log" 2>&1
  rc=$?
  summary=$(grep -E '^test result' "$OUT/test-$t.log" | tail -1)
  record "{\"what\":\"parity\",\"test\":\"$t\",\"rc\":$rc,\"seconds\":$(($(date +%s) - s)),\"summary\":\"$summary\"}"
done
unset MMRL_TEST_MEASURE CUBECL_AUTOTUNE_LEVEL

log "5. demo on CUDA"
L=$(left)
if [ "$L" -gt 60 ]; then
  s=$(date +%s)
  timeout "$L" "$BIN/mmrl" demo --device cuda --output "$OUT/demo" > "$OUT/demo.log" 2>&1
  rc=$?
  record "{\"what\":\"demo\",\"rc\":$rc,\"seconds\":$(($(date +%s) - s)),\"results\":$(cat "$OUT/demo/results.json" 2>/dev/null || echo null)}"
else
  record "{\"what\":\"demo\",\"skipped\":\"only ${L}s left of BUDGET=$BUDGET\"}"
fi

python3 -c 'import json,sys
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(json.dumps({"gpu_check": rows, "seconds": int(sys.argv[2])}, indent=1))' "$RESULTS" "$(($(date +%s) - START))" | tee "$OUT/summary.json"
