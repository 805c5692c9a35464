"""Expected few-shot draws, computed by CPython's own `random` module.

Writes tests/fixtures/data/pyrandom.json, which tests/fewshot_parity.rs
compares with our port of CPython's Mersenne Twister, `_randbelow` and
`random.sample` (data/src/pyrandom.rs) and with Dassl's few-shot draw
(data/src/few_shot.rs).

Run: python3 tests/scripts/gen_fewshot_fixtures.py   (Python 3.11; stdlib only)

The Dassl algorithm below restates `DatasetBase.generate_fewshot_dataset`
and `split_dataset_by_label` (KaiyangZhou/Dassl.pytorch @ c61a1b5,
dassl/data/datasets/base_dataset.py): group by label in order of first
appearance; per group, `random.sample(group, K)` if it has at least K items,
else the whole group; the train draw follows `random.seed(seed)` and the val
draw (min(K, 4) per class) continues the same stream.
"""
import json
import random
import sys
from collections import OrderedDict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "pyrandom.json"


def fewshot(items, k):
    groups = OrderedDict()
    for path, label in items:
        groups.setdefault(label, []).append(path)
    out = []
    for label, group in groups.items():
        chosen = random.sample(group, k) if len(group) >= k else group
        out.extend(chosen)
    return out


def main():
    seeds = [0, 1, 2, 3, 42, 2**32 + 5, 2**70 + 3, -7]
    streams = []
    for s in seeds:
        r = random.Random(s)
        streams.append({"seed": str(s), "getrandbits32": [r.getrandbits(32) for _ in range(8)]})
    below = []
    for s in [1, 2, 3]:
        for n in [1, 2, 3, 5, 7, 100, 1000, 2**31 + 1, 2**32 - 1]:
            r = random.Random(s)
            below.append({"seed": s, "n": n, "draws": [r._randbelow(n) for _ in range(6)]})
    samples = []
    for s in [1, 2, 3, 7]:
        for n in [1, 4, 5, 6, 16, 20, 21, 22, 40, 50, 100, 149, 150, 500, 5000]:
            for k in [1, 2, 4, 5, 6, 8, 16]:
                if k > n:
                    continue
                r = random.Random(s)
                samples.append({"seed": s, "n": n, "k": k, "result": r.sample(range(n), k)})
    # A split list with interleaved labels, uneven class sizes (some below K),
    # labels not in first-appearance order.
    rng = random.Random(12345)
    sizes = {3: 40, 0: 25, 7: 3, 1: 17, 2: 160, 5: 1, 4: 60}
    items = [(f"c{label}/img_{i:03d}.jpg", label) for label, n in sizes.items() for i in range(n)]
    rng.shuffle(items)
    val_items = [(f"val/c{label}/v_{i:02d}.jpg", label) for label in sorted(sizes) for i in range(6)]
    draws = []
    for seed in [1, 2, 3]:
        for k in [1, 2, 4, 8, 16]:
            random.seed(seed)
            train = fewshot(items, k)
            val = fewshot(val_items, min(k, 4))
            draws.append({"seed": seed, "shots": k, "train": train, "val": val})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "python": sys.version.split()[0],
        "streams": streams,
        "randbelow": below,
        "samples": samples,
        "split": {"train": items, "val": val_items},
        "dassl_fewshot": draws,
    }, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
