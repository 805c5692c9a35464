#!/usr/bin/env python3
"""PyTorch reference for `mmrl-bench --what loader`: the training data pipeline alone.

Dassl's CLIP training transform on a list dataset, as `DatasetWrapper` + torch's
`DataLoader` run it (no model):
  PIL `Image.open(path).convert("RGB")`
  -> T.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=BICUBIC)   (MMRL's scale)
  -> T.RandomHorizontalFlip() -> T.ToTensor() -> T.Normalize(CLIP mean, std)
  DataLoader(batch_size=32, shuffle=True, drop_last=len >= 32, num_workers=N,
             persistent_workers=N > 0)

The images are the synthetic photos that `mmrl-bench --what loader --dir DIR` writes
(run it first, or point --dir at any folder of JPEGs). Each epoch is timed from the
first `next()` to the last batch; with persistent workers, the first epoch includes
starting them. Prints one JSON line with images/s per epoch.

Usage:
    python3 benchmarks/scripts/bench_loader_pytorch.py --dir DIR [--workers N] [--epochs 3]
Requirements: torch, torchvision, pillow (tests/scripts/requirements.txt pins them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import PIL
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BATCH = 32


class ListDataset(Dataset):
    """(path, label) items, decoded with PIL and transformed, as Dassl's DatasetWrapper."""

    def __init__(self, items, transform):
        self.items = items
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        img = Image.open(path).convert("RGB")
        return self.transform(img), label


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    paths = sorted(args.dir.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no .jpg files in {args.dir}: run mmrl-bench --what loader --dir {args.dir}")
    items = [(str(p), i % 10) for i, p in enumerate(paths)]
    transform = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    loader = DataLoader(
        ListDataset(items, transform),
        batch_size=BATCH,
        shuffle=True,
        drop_last=len(items) >= BATCH,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    per_epoch = []
    for _ in range(args.epochs):
        t = time.perf_counter()
        n = 0
        for images, labels in loader:
            n += images.shape[0]
        per_epoch.append(n / (time.perf_counter() - t))
    out = {
        "framework": "pytorch",
        "what": "loader",
        "workers": args.workers,
        "images": len(items),
        "mean_jpeg_kb": sum(p.stat().st_size for p in paths) / len(paths) / 1000,
        "batch": BATCH,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "images_per_s": per_epoch,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
