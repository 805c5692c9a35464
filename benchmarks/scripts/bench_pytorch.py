#!/usr/bin/env python3
"""PyTorch reference timings for CLIP ViT-B/16 inference (the baseline for the Rust/Burn benches).

The model is transformers' CLIPModel built from a ViT-B/16-sized CLIPConfig with RANDOM
weights (nothing is downloaded; the timings do not depend on the weight values):
  vision: 224x224, patch 16, width 768, 12 layers, 12 heads, MLP 3072
  text:   77 tokens, vocab 49408, width 512, 12 layers, 8 heads, MLP 2048
  projection 512, quick_gelu, f32, eval, torch.inference_mode()

Workloads:
  1. image encode: get_image_features on a batch of 8 images [8, 3, 224, 224]
  2. text encode:  get_text_features on 100 prompts "a photo of a {class}." (CIFAR-100
     class names, tokenised with the real CLIP BPE from data/assets, padded to 77 tokens
     as OpenAI CLIP does)
Each is run 2 times for warm-up, then --iters timed runs; median and min are reported.
Threads: torch's default (printed).

Usage:
    python3 benchmarks/scripts/bench_pytorch.py [--device cpu|cuda] [--iters N] [--json out.json]
Prints one JSON line (and writes it to --json if given).
Requirements: benchmarks/scripts/requirements.txt
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

REPO = Path(__file__).resolve().parents[2]
BPE = REPO / "data" / "assets" / "bpe_simple_vocab_16e6.txt.gz"

CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
assert len(CIFAR100) == 100


def vit_b16_config() -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=512,
    )
    vision = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=512,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table, as OpenAI CLIP's `simple_tokenizer.py` defines it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer() -> CLIPTokenizer:
    """Full OpenAI CLIP BPE tokenizer (vocab 49408) built from data/assets (no download)."""
    try:
        from open_clip.tokenizer import bytes_to_unicode  # same table as OpenAI's
    except ImportError:  # machines with transformers only
        bytes_to_unicode = _bytes_to_unicode

    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 1 + 49152 - 256 - 2]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def cpu_info() -> tuple[str, dict]:
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "amx": any(f.startswith("amx") for f in flags),
    }


def time_fn(fn, iters: int, device: str) -> list[float]:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up
        fn()
        sync()
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8, help="images per encode")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="bf16: the whole model in bfloat16 (cuda)")
    ap.add_argument("--no-text", action="store_true", help="time the image encode only")
    args = ap.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as Burn's CUDA f32 matmuls

    torch.manual_seed(args.seed)
    device = args.device
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"torch.get_num_threads() = {torch.get_num_threads()}", flush=True)

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = CLIPModel(vit_b16_config()).eval().to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())

    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, 224, 224, generator=g).to(device=device, dtype=dtype)
    tok = clip_tokenizer()
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in CIFAR100]
    enc = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    input_ids = enc["input_ids"].to(device)
    n_tokens = [int(n) for n in (enc["input_ids"] != tok.pad_token_id).sum(1) + 1]  # + the eot

    with torch.inference_mode():
        img_times = time_fn(lambda: model.get_image_features(pixel_values=images), args.iters, device)
        txt_times = [] if args.no_text else time_fn(
            lambda: model.get_text_features(input_ids=input_ids), args.iters, device)

    img_med = statistics.median(img_times)
    txt_med = statistics.median(txt_times) if txt_times else None
    cpu, flags = cpu_info()
    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})",
        "cpu": cpu,
        "flags": flags,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "attn_implementation": model.config._attn_implementation,
        "model": f"CLIP ViT-B/16 (random weights, {n_params / 1e6:.1f}M params)",
        "iters": args.iters,
        "batch": args.batch,
        "image_batch8_s" if args.batch == 8 else "image_batch_s": img_med,
        "image_batch8_min_s" if args.batch == 8 else "image_batch_min_s": min(img_times),
        "images_per_s": args.batch / img_med,
        "text_100_s": txt_med,
        "text_100_min_s": min(txt_times) if txt_times else None,
        "prompts_per_s": 100 / txt_med if txt_med else None,
        "prompt_tokens_min_max": [min(n_tokens), max(n_tokens)],
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
