#!/usr/bin/env python3
"""`mmrl zeroshot` on a random ViT-B/16 CLIP against transformers on the same device.

Builds transformers' CLIPModel at ViT-B/16 size with random weights (seeded; nothing
is downloaded), saves it as a Hugging Face folder, writes 8 random 224x224 PNG images
(224x224, so neither side resizes or crops), and runs:
  * transformers in f32 with TF32 off (the reference), on --device;
  * `mmrl zeroshot --json` on each of --backends (e.g. cuda cpu);
then prints one JSON line: per backend, the largest logit difference from the
reference (CLIP's logit scale is 100, so 1e-2 is 1e-4 in cosine) and whether the
top-1 class agrees on every image.

Usage:
    python3 benchmarks/scripts/gpu_zeroshot_check.py --mmrl target/release/mmrl \\
        [--device cuda] [--backends cuda cpu] [--work DIR]
Requirements: torch, transformers (benchmarks/scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import torch
from transformers import CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pytorch import CIFAR100, clip_tokenizer, vit_b16_config  # noqa: E402

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def write_png(path: Path, rgb: torch.Tensor) -> None:
    """An 8-bit RGB PNG from a [H, W, 3] uint8 tensor (no imaging library needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(rgb[y].flatten().tolist()) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmrl", required=True, help="the mmrl binary")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--backends", nargs="+", default=["cuda", "cpu"])
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    work = args.work or Path(tempfile.mkdtemp(prefix="mmrl-zs-"))
    work.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = CLIPModel(vit_b16_config()).eval()
    with torch.no_grad():  # a sharper scale than the init's 1/0.07, as trained CLIPs have
        model.logit_scale.fill_(4.6052)
    model.save_pretrained(work / "clip", safe_serialization=True)
    model = model.to(args.device)

    g = torch.Generator().manual_seed(0)
    images = []
    for i in range(8):
        rgb = torch.randint(0, 256, (224, 224, 3), generator=g, dtype=torch.uint8)
        p = work / f"img{i}.png"
        write_png(p, rgb)
        images.append((p, rgb))
    pixels = torch.stack([((rgb.float() / 255.0) - MEAN) / STD for _, rgb in images])
    pixels = pixels.permute(0, 3, 1, 2).contiguous().to(args.device)

    classes = [c.replace("_", " ") for c in CIFAR100[: args.classes]]
    tok = clip_tokenizer()
    enc = tok([f"a photo of a {c}." for c in classes], padding="max_length", max_length=77,
              truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"].to(args.device), pixel_values=pixels)
    ref = out.logits_per_image.float().cpu()

    result = {"what": "zeroshot-vit-b16", "reference": f"transformers f32 (no TF32) on {args.device}",
              "images": len(images), "classes": len(classes), "backends": {}}
    for backend in args.backends:
        cmd = [args.mmrl, "zeroshot", "--clip", str(work / "clip"), "--device", backend, "--json",
               "--classes", ",".join(classes), "--images", *[str(p) for p, _ in images]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            result["backends"][backend] = {"error": proc.stderr.strip()[-2000:]}
            continue
        ours = torch.tensor([r["logits"] for r in json.loads(proc.stdout)["results"]])
        diff = (ours - ref).abs().max().item()
        result["backends"][backend] = {
            "max_abs_logit_diff": diff,
            "top1_agrees": bool((ours.argmax(1) == ref.argmax(1)).all()),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
