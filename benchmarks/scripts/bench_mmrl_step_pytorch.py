#!/usr/bin/env python3
"""PyTorch timing of one MMRL training step at ViT-B/16 shapes, as the reference trains.

The step is what yunncheng/MMRL's `MMRLTrainer.forward_backward` does per batch, on
`tests/scripts/mmrl_reference.py` (an independent PyTorch implementation of MMRL whose
outputs, losses and gradients the Rust parity tests compare with):
  * the frozen CLIP's image features of the batch, under no_grad (the image regulariser's
    target; the text target is computed once per run, so it is not timed);
  * MMRL's forward: both towers with the representation tokens, every class prompt padded
    to 77 tokens through all 12 text layers (the reference does not cache the frozen
    lower layers), both heads' logits;
  * the loss (CE of both heads, both regularisers) and backward.
Random weights (timings do not depend on the values), f32, `--threads` threads (default 2,
as the Rust bench on this machine). K = 5, d_r = 512, layers 6..12, as `vit_b16.yaml`.

On `--device cuda`, `--amp` runs the step as the reference trains (`PREC: "amp"`: fp32
master weights, forward and loss under `torch.autocast` fp16, the loss scaled by a
GradScaler); without it, f32 (TF32 matmuls allowed, as Burn's CUDA backend runs them).
The peak of `torch.cuda.max_memory_allocated` is reported as `peak_mib`.

Usage:
    python3 benchmarks/scripts/bench_mmrl_step_pytorch.py [--batch 4] [--classes 100] [--iters 3]
        [--device cpu|cuda] [--amp]
Prints one JSON line, with the same fields as `mmrl-bench --what mmrl-step`.
Requirements: benchmarks/scripts/requirements.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "scripts"))

from mmrl_reference import CLIP, MMRL, MMRLConfig, mmrl_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--amp", action="store_true", help="autocast fp16 + GradScaler (cuda)")
    ap.add_argument(
        "--adamw", action="store_true", help="an AdamW update after the backward (lr 1e-3, wd 5e-4)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=512,
        image_size=224,
        patch_size=16,
        vision_width=768,
        vision_layers=12,
        context_length=77,
        vocab_size=49408,
        text_width=512,
        text_layers=12,
    )
    with torch.no_grad():
        for p in clip.parameters():
            if p.dim() > 0:
                p.normal_(0.0, 0.02)
    clip.eval()
    cfg = MMRLConfig(reg_weight=1.0)
    model = MMRL(clip, cfg).to(dev)
    # Prompts: [SOS, 8 tokens, EOT], padded with zeros to 77, as clip.tokenize pads.
    ids = torch.zeros(args.classes, 77, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1:9] = torch.randint(400, 30000, (args.classes, 8))
    ids[:, 9] = 49407
    ids = ids.to(dev)
    with torch.no_grad():
        zs_text = clip.encode_text(ids)
    pixels = torch.randn(args.batch, 3, 224, 224).to(dev)
    labels = (torch.arange(args.batch) % args.classes).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    amp = args.amp and args.device == "cuda"
    # The update `mmrl-bench --what method-step` times after its backward.
    optim = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4) if args.adamw else None
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            with torch.no_grad():
                zs_image = clip.encode_image(pixels)
            out = model(pixels, ids)
            loss = mmrl_loss(out, labels, zs_image, zs_text, cfg.alpha, cfg.reg_weight)
        for p in params:
            p.grad = None
        if scaler is not None:
            scaler.scale(loss["loss_total"]).backward()
        else:
            loss["loss_total"].backward()
        if optim is not None:
            optim.step()

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    step()
    step()
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": args.device if args.device == "cpu"
                else f"cuda ({torch.cuda.get_device_name(0)})",
                "precision": "amp-fp16" if amp else ("f32" if args.device == "cpu" else "f32/tf32"),
                "peak_mib": torch.cuda.max_memory_allocated() / 2**20
                if args.device == "cuda" else None,
                "model": "ViT-B/16",
                "what": "mmrl-step",
                "adamw": args.adamw,
                "batch": args.batch,
                "classes": args.classes,
                "step_s": median,
                "step_min_s": min(times),
                "images_per_s": args.batch / median,
            }
        )
    )


if __name__ == "__main__":
    main()
