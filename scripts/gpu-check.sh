#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: is mmrl right on CUDA, and how fast is it next
# to PyTorch on the same GPU? Prints one JSON summary and writes it, with every
# log, under $OUT (default: gpu-check-out/). BUDGET (seconds, default 480)
# bounds the whole run.
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
# On a fresh machine most of the time goes into compiling kernels: NVRTC, on
# one CPU core per process, 1-2.5 kernels a second on an H200's host, most of
# them matmul variants that autotuning times (third H200 run: 250 kernels for
# the tiny MMRL gradient test, more than 250 for one ViT-B/16 MMRL step).
# So the script works in two phases:
#   A. in parallel, one process per job, each in its own directory with its own
#      `cubecl.toml` (its own autotune cache and log, its own cache of compiled
#      kernels, a log of the kernels it compiles): the parity tests on CUDA
#      (tiny CLIP: the op patterns and vision tower against the CPU, CLIP, MMRL
#      (one process per test), CoOp, the zeroshot CLI, a short training run
#      against the CPU run, 50 training steps with flat memory), `mmrl zeroshot`
#      on a random ViT-B/16 against transformers, and one warm-up call of each
#      burn benchmark, which fills its kernel cache and may run on into phase B;
#      every measured difference goes to $OUT/measured.jsonl.
#   B. the speed figures, one run at a time: one MMRL training step (batch 4,
#      100 classes) on the backend `mmrl train` uses (without fusion), in f32
#      (TF32) and with frozen CLIP in bf16 (`--precision bf16`), against the
#      PyTorch reference step (AMP, as the reference trains, and f32/TF32);
#      ViT-B/16 image encode (batch 256) and text encode (100 prompts), f32
#      (TF32) and bf16; peak GPU memory. Burn's runs wait for their warm-up and
#      reuse its compiled kernels, so they time steady state.
#   Then: any parity test that failed in A runs again alone, and
#   `mmrl demo --device cuda` runs if time is left.
# FUSED_STEP=1 also times the step on the fused backend. CONTROLS=1 adds, to
# phase A, the conditions under which the second H200 run saw wrong numbers:
# two mmrl_parity processes started at once that share one autotune cache (as
# every process run from one project directory does), and one that runs its
# tests on 8 threads (the third run, with them, saw none). PACK_LOGS=1 packs
# $OUT/logs into $OUT/logs.tgz (for machines that hand back few files).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-$REPO/gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BIN=""
if [ "${1:-}" = "--bin" ]; then BIN="$(cd "$2" && pwd)"; fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
export LD_LIBRARY_PATH="$CUDA_PATH/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
START=$(date +%s)
BUDGET="${BUDGET:-480}" # seconds for the whole script; the demo gets what is left
# Job directories, compiled kernels and the ViT-B/16 weights: large, of no use
# afterwards.
SCRATCH="${SCRATCH:-${TMPDIR:-/tmp}/mmrl-gpu-check}"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
LOGS="$OUT/logs"
rm -rf "$LOGS" && mkdir -p "$LOGS"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
: > "$OUT/measured.jsonl"
: > "$OUT/speed.jsonl"

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

# A job: a directory under $SCRATCH with its own cubecl.toml, so its autotune
# results and compiled kernels (PTX) stay its own; its logs go to $OUT/logs/
# (NAME.log, NAME.autotune.log, NAME.kernels.log: one line per compiled kernel).
# CubeCL reads cubecl.toml from the working directory (or the nearest parent
# that has one); without one, every process started under one Cargo project
# shares `target/autotune`.
jobdir() { # name [autotune cache dir]
  local d="$SCRATCH/jobs/$1" tune=${2:-$SCRATCH/jobs/$1/autotune}
  mkdir -p "$d"
  cat > "$d/cubecl.toml" <<TOML
[autotune]
level = "minimal"
cache = { file = "$tune" }
[autotune.logger]
file = "$LOGS/$1.autotune.log"
[compilation]
cache = { file = "$d/kernels" }
[compilation.logger]
level = "basic"
file = "$LOGS/$1.kernels.log"
TOML
}
# Starts a job in the background: name, time limit, command... (run in its
# directory); its pid is PID[name].
declare -A PID
job() {
  local name=$1 limit=$2; shift 2
  local d="$SCRATCH/jobs/$name"
  [ -f "$d/cubecl.toml" ] || jobdir "$name"
  (
    cd "$d" || exit
    s=$(date +%s)
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    echo "$? $(($(date +%s) - s))" > "$d/rc"
  ) &
  PID[$name]=$!
}
jobrc() { cut -d' ' -f1 "$SCRATCH/jobs/$1/rc" 2>/dev/null || echo '"missing"'; }
jobsec() { cut -d' ' -f2 "$SCRATCH/jobs/$1/rc" 2>/dev/null || echo null; }
kernels() { grep -c . "$LOGS/$1.kernels.log" 2>/dev/null || echo 0; }
# One JSON row for a job: what, job, rc, seconds, kernels compiled, and for
# test binaries the summary and the failed tests.
jobrow() {
  local what=$1 j=$2 summary failed
  summary=$(grep -E '^test result' "$LOGS/$j.log" 2>/dev/null | tail -1)
  failed=$(grep -E '^    [a-z_0-9:]+$' "$LOGS/$j.log" 2>/dev/null | tr -d ' ' | sort -u | paste -sd, -)
  record "{\"what\":\"$what\",\"job\":\"$j\",\"rc\":$(jobrc "$j"),\"seconds\":$(jobsec "$j"),\"kernels\":$(kernels "$j"),\"summary\":\"$summary\",\"failed\":\"$failed\"}"
}

log "1. devices"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1
record "$(python3 -c 'import json,sys; n,d,m=[x.strip() for x in open(sys.argv[1]).read().splitlines()[0].split(",")]; print(json.dumps({"what":"gpu","name":n,"driver":d,"memory":m}))' "$OUT/nvidia-smi.txt" 2>/dev/null || echo '{"what":"gpu","error":"nvidia-smi failed"}')"
jobdir devices
(cd "$SCRATCH/jobs/devices" && timeout 120 "$BIN/mmrl" devices --json > "$OUT/devices.json" 2> "$LOGS/devices.log")
record "{\"what\":\"devices\",\"rc\":$?,\"report\":$(cat "$OUT/devices.json" 2>/dev/null || echo null)}"
if grep -qs "right format" "$LOGS/devices.log" "$OUT/devices.json"; then
  echo "CubeCL refused the jobs' cubecl.toml ($LOGS/devices.log): fix jobdir() in $0" >&2
  exit 1
fi

log "2. phase A: parity tests, ViT-B/16 zeroshot, benchmark warm-ups, in parallel"
export MMRL_TEST_MEASURE="$OUT/measured.jsonl"
TESTS=(gpu_ops clip_parity mmrl_parity coop_parity cli_zeroshot train_run)
SPLIT=" mmrl_parity " # binaries whose tests run as one process each
JOBS_A=()
for t in "${TESTS[@]}"; do
  if [ ! -x "$BIN/tests/$t" ]; then record "{\"what\":\"parity\",\"job\":\"$t\",\"rc\":\"missing\"}"; continue; fi
  if [[ "$SPLIT" == *" $t "* ]]; then
    for name in $("$BIN/tests/$t" --list 2>/dev/null | sed -n 's/: test$//p'); do
      job "$t.$name" 360 "$BIN/tests/$t" "$name" --exact --nocapture
      JOBS_A+=("$t.$name")
    done
  else
    filter=()
    [ "$t" = train_run ] && filter=(on_gpu)
    job "$t" 360 "$BIN/tests/$t" "${filter[@]}" --test-threads=1 --nocapture
    JOBS_A+=("$t")
  fi
done
job zeroshot 300 python3 "$REPO/benchmarks/scripts/gpu_zeroshot_check.py" --mmrl "$BIN/mmrl" \
  --device cuda --backends cuda cpu --work "$SCRATCH/zeroshot"
CONTROL_JOBS=()
if [ "${CONTROLS:-0}" = 1 ] && [ -x "$BIN/tests/mmrl_parity" ]; then
  # Two processes, one autotune cache between them; one on 8 threads.
  jobdir shared-1 "$SCRATCH/shared-tune"
  jobdir shared-2 "$SCRATCH/shared-tune"
  job shared-1 360 "$BIN/tests/mmrl_parity" --test-threads=1
  job shared-2 360 "$BIN/tests/mmrl_parity" --test-threads=1
  job threads 360 "$BIN/tests/mmrl_parity" --test-threads=8
  CONTROL_JOBS=(shared-1 shared-2 threads)
fi
# The warm-ups may run on until phase B needs them (each run waits for its own).
WARM=$((BUDGET - 120))
job warm-step "$WARM" "$BIN/mmrl-bench" --backend cuda --what mmrl-step --batch 4 --prompts 100 --iters 1
job warm-step-bf16 "$WARM" "$BIN/mmrl-bench" --backend cuda --precision bf16 --what mmrl-step --batch 4 --prompts 100 --iters 1
if [ "${FUSED_STEP:-0}" = 1 ]; then
  job warm-step-fused "$WARM" "$BIN/mmrl-bench" --backend cuda-fused --what mmrl-step --batch 4 --prompts 100 --iters 1
fi
job warm-encode-f32 "$WARM" "$BIN/mmrl-bench" --backend cuda --what all --batch 256 --prompts 100 --iters 1
job warm-encode-bf16 "$WARM" "$BIN/mmrl-bench" --backend cuda-bf16 --what all --batch 256 --prompts 100 --iters 1
for j in "${JOBS_A[@]}" zeroshot "${CONTROL_JOBS[@]}"; do wait "${PID[$j]}"; done
unset MMRL_TEST_MEASURE
for j in "${JOBS_A[@]}"; do jobrow parity "$j"; done
if [ "$(jobrc zeroshot)" = 0 ]; then
  record "$(tail -1 "$LOGS/zeroshot.log")"
else
  record "{\"what\":\"zeroshot-vit-b16\",\"rc\":$(jobrc zeroshot),\"seconds\":$(jobsec zeroshot)}"
fi
rm -rf "$SCRATCH/zeroshot"
for j in "${CONTROL_JOBS[@]}"; do jobrow control "$j"; done

log "3. phase B: speed, one run at a time"
PEAK="python3 $REPO/benchmarks/scripts/gpu_peak.py --"
bench() { # name, warm-up job whose kernels to reuse (or -), limit, command...
  local name=$1 warm=$2 limit=$3 dir="$SCRATCH" l
  shift 3
  if [ "$warm" != - ]; then
    dir="$SCRATCH/jobs/$warm"
    wait "${PID[$warm]}" 2>/dev/null
    jobrow warm-up "$warm"
    # Phase A's autotune ran on a loaded machine: tune again, alone (the
    # compiled kernels are kept).
    rm -rf "$dir/autotune"
  fi
  l=$(left)
  [ "$l" -lt "$limit" ] && limit=$l
  if [ "$limit" -le 20 ]; then
    record "{\"what\":\"speed\",\"run\":\"$name\",\"skipped\":\"out of time\"}"
    return
  fi
  (cd "$dir" && timeout "$limit" $PEAK "$@" >> "$OUT/speed.jsonl" 2>> "$LOGS/speed.log") ||
    record "{\"what\":\"speed\",\"run\":\"$name\",\"error\":\"rc $?\"}"
}
STEP="$REPO/benchmarks/scripts/bench_mmrl_step_pytorch.py"
ENCODE="$REPO/benchmarks/scripts/bench_pytorch.py"
# PyTorch first, while burn's warm-ups may still be compiling (on the CPU: the
# GPU is idle meanwhile); then burn, each run after its own warm-up.
bench torch-step-amp-4-100 - 120 python3 "$STEP" --device cuda --amp --batch 4 --classes 100 --iters 5
bench torch-step-f32-4-100 - 120 python3 "$STEP" --device cuda --batch 4 --classes 100 --iters 5
bench torch-encode-f32 - 120 python3 "$ENCODE" --device cuda --batch 256 --iters 10
bench torch-encode-bf16 - 120 python3 "$ENCODE" --device cuda --batch 256 --iters 10 --dtype bf16
bench burn-step-4-100 warm-step 150 "$BIN/mmrl-bench" --backend cuda --what mmrl-step --batch 4 --prompts 100 --iters 5
bench burn-step-bf16-4-100 warm-step-bf16 150 "$BIN/mmrl-bench" --backend cuda --precision bf16 --what mmrl-step --batch 4 --prompts 100 --iters 5
if [ "${FUSED_STEP:-0}" = 1 ]; then
  bench burn-step-fused-4-100 warm-step-fused 150 "$BIN/mmrl-bench" --backend cuda-fused --what mmrl-step --batch 4 --prompts 100 --iters 5
fi
bench burn-encode-f32 warm-encode-f32 150 "$BIN/mmrl-bench" --backend cuda --what all --batch 256 --prompts 100 --iters 10
bench burn-encode-bf16 warm-encode-bf16 150 "$BIN/mmrl-bench" --backend cuda-bf16 --what all --batch 256 --prompts 100 --iters 10
grep -E '^\{' "$OUT/speed.jsonl" | while read -r line; do record "$line"; done

log "4. failed parity tests again, alone"
export MMRL_TEST_MEASURE="$OUT/measured-alone.jsonl"
for j in "${JOBS_A[@]}"; do
  [ "$(jobrc "$j")" = 0 ] && continue
  if [ "$(left)" -le 40 ]; then
    record "{\"what\":\"parity-alone\",\"job\":\"$j\",\"skipped\":\"out of time\"}"
    continue
  fi
  t=${j%%.*}
  args=(--test-threads=1)
  [ "$j" != "$t" ] && args=("${j#*.}" --exact)
  [ "$t" = train_run ] && args=(on_gpu)
  s=$(date +%s)
  (cd "$SCRATCH/jobs/$j" && timeout "$(left)" "$BIN/tests/$t" "${args[@]}" --nocapture > "$LOGS/$j.alone.log" 2>&1)
  rc=$?
  summary=$(grep -E '^test result' "$LOGS/$j.alone.log" | tail -1)
  record "{\"what\":\"parity-alone\",\"job\":\"$j\",\"rc\":$rc,\"seconds\":$(($(date +%s) - s)),\"summary\":\"$summary\"}"
done
unset MMRL_TEST_MEASURE

log "5. demo on CUDA"
L=$(left)
if [ "$L" -gt 60 ]; then
  jobdir demo
  s=$(date +%s)
  (cd "$SCRATCH/jobs/demo" && timeout "$L" "$BIN/mmrl" demo --device cuda --output "$OUT/demo" > "$LOGS/demo.log" 2>&1)
  rc=$?
  record "{\"what\":\"demo\",\"rc\":$rc,\"seconds\":$(($(date +%s) - s)),\"kernels\":$(kernels demo),\"results\":$(cat "$OUT/demo/results.json" 2>/dev/null || echo null)}"
else
  record "{\"what\":\"demo\",\"skipped\":\"only ${L}s left of BUDGET=$BUDGET\"}"
fi
# Anything still running (a warm-up whose timed run was skipped) stops here.
pkill -f "^$BIN/" 2>/dev/null
wait 2>/dev/null
rm -rf "$SCRATCH"

python3 -c 'import json,sys
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(json.dumps({"gpu_check": rows, "seconds": int(sys.argv[2])}, indent=1))' "$RESULTS" "$(($(date +%s) - START))" | tee "$OUT/summary.json"
if [ "${PACK_LOGS:-0}" = 1 ]; then
  tar -C "$OUT" -czf "$OUT/logs.tgz" logs && rm -rf "$LOGS"
fi
