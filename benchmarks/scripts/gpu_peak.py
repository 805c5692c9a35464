#!/usr/bin/env python3
"""Runs a command and adds the GPU memory it used to each JSON line it prints.

    python3 benchmarks/scripts/gpu_peak.py -- CMD [ARGS...]

`nvidia-smi` is polled every 50 ms while CMD runs; the peak of `memory.used` on
GPU 0, less the reading before CMD started, is added to every JSON object CMD
prints on stdout as `peak_gpu_mib` (other lines pass through). This counts what
the process allocated from the driver (its memory pool and context), which is
what decides whether a run fits; PyTorch's own `max_memory_allocated` counts
only live tensors and is reported next to it by the PyTorch scripts.
Exit status: CMD's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time


def used_mib() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=10,
        )
        return float(out.stdout.strip().splitlines()[0])
    except Exception:  # no nvidia-smi, or it failed: no figure
        return None


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    base = used_mib()
    peak = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            v = used_mib()
            if v is not None and (peak[0] is None or v > peak[0]):
                peak[0] = v
            time.sleep(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    done.set()
    t.join()
    extra = None if base is None or peak[0] is None else peak[0] - base
    for line in proc.stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            print(line)
            continue
        if isinstance(obj, dict):
            obj["peak_gpu_mib"] = extra
            line = json.dumps(obj)
        print(line, flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
