#!/usr/bin/env python3
"""Generate the CLIP reference fixtures under tests/fixtures/clip/.

Purpose
-------
The Rust crates (tokenizer, image preprocessing, CLIP model, weight loaders) are
tested against values produced here by the Python reference stack
(Hugging Face `transformers`, `open_clip`, Pillow). The Rust tests never run
Python: this script is run once by hand and its outputs are committed.

What it writes (see tests/fixtures/clip/manifest.json for the full list + sha256):
  tiny_hf/                       tiny random CLIP in Hugging Face layout
                                 (config.json, model.safetensors, tokenizer.json,
                                 tokenizer_config.json, preprocessor_config.json)
  tiny_openai.safetensors        same weights, OpenAI / open_clip names, f32
  tiny_openai.pt                 same, torch.save(state_dict) zip archive, f32
  tiny_openai_f16.safetensors    same, every tensor f16
  tiny_openai_torchscript.pt     same, TorchScript archive (open_clip trace_model,
                                 like OpenAI's released *.pt files, but f32)
  images/                        small test images (+ a corrupt JPEG, a non-image)
  preprocess.safetensors         CLIPImageProcessor (PIL backend) outputs per image
  expected.safetensors/.json     transformers CLIPModel outputs for the tiny model
  tokenizer_cases.json           tokenizer parity cases (full + tiny vocabulary)
  manifest.json                  versions, seed, file list, sha256

How to run (from the repository root; CPU only, takes well under a minute):
    pip install -r tests/scripts/requirements.txt
    python3 tests/scripts/gen_clip_fixtures.py

It needs data/assets/bpe_simple_vocab_16e6.txt.gz (OpenAI CLIP BPE merges, MIT)
and no network access. The output is deterministic: running it twice gives
byte-identical files (the random `serialization_id` that torch >= 2.x writes
into .pt zip archives is replaced by a fixed value).

Pinned requirements (tests/scripts/requirements.txt; Python 3.11.7, CPU):
    torch==2.15.0  torchvision==0.29.2  transformers==5.23.0  tokenizers==0.23.3
    huggingface-hub==2.4.0  open_clip_torch==3.3.0  timm==1.0.31  ftfy==6.3.1
    regex==2026.5.9  pillow==13.0.0  safetensors==0.8.0  numpy==2.4.6
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import math
import os
import platform
import shutil
import struct
import sys
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import open_clip
import transformers
from open_clip.model import build_model_from_openai_state_dict
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

SEED = 20241123
REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "clip"
BPE_PATH = REPO / "data" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

N_MERGES_FULL = 49152 - 256 - 2  # 48894, as in OpenAI's SimpleTokenizer
N_MERGES_TINY = 2000
CONTEXT_LENGTH = 77

TINY_TEXT = dict(
    hidden_size=64,
    num_attention_heads=1,
    num_hidden_layers=2,
    intermediate_size=256,
    max_position_embeddings=CONTEXT_LENGTH,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
TINY_VISION = dict(
    hidden_size=128,
    num_attention_heads=2,
    num_hidden_layers=3,
    intermediate_size=512,
    patch_size=8,
    image_size=32,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
PROJECTION_DIM = 48

CLASSES = [
    "cat",
    "dog",
    "red_car",
    # > 77 tokens once templated, so it exercises truncation (the brief's
    # "word " * 30 gives only ~42 tokens with the full vocabulary, hence 80).
    ("a very long class name " + "word " * 80).strip(),
    "café",
]
TEMPLATE = "a photo of a {}."

# --------------------------------------------------------------------------- utils


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def fix_torch_zip_serialization_id(path: Path) -> None:
    """torch.save / torch.jit.save write a random `.data/serialization_id` record.
    Overwrite it in place (same length, CRCs patched) so the file is reproducible."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        infos = [i for i in zf.infolist() if i.filename.endswith(".data/serialization_id")]
        if not infos:
            return
        info = infos[0]
        old = zf.read(info)
    assert info.compress_type == zipfile.ZIP_STORED
    new = str(SEED).encode().ljust(len(old), b"0")[: len(old)]
    new_crc = zlib.crc32(new) & 0xFFFFFFFF
    # local header
    h = info.header_offset
    assert data[h : h + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
    start = h + 30 + name_len + extra_len
    assert bytes(data[start : start + len(old)]) == old
    data[start : start + len(old)] = new
    struct.pack_into("<I", data, h + 14, new_crc)
    # central directory entry (signature PK\x01\x02, crc at +16, name at +46)
    name = info.filename.encode()
    pos = 0
    patched = False
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        n_len = struct.unpack("<H", data[pos + 28 : pos + 30])[0]
        if bytes(data[pos + 46 : pos + 46 + n_len]) == name:
            struct.pack_into("<I", data, pos + 16, new_crc)
            patched = True
            break
        pos += 4
    assert patched
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None


# ----------------------------------------------------------------------- tokenizer


def load_bpe_lines() -> list[str]:
    assert BPE_PATH.is_file(), f"missing {BPE_PATH}"
    assert sha256_file(BPE_PATH) == BPE_SHA256, "bpe_simple_vocab_16e6.txt.gz sha256 mismatch"
    oc = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    assert sha256_file(oc) == BPE_SHA256, "open_clip ships a different BPE file"
    return gzip.open(BPE_PATH).read().decode("utf-8").split("\n")


def build_vocab_merges(lines: list[str], n_merges: int):
    """Exactly OpenAI's SimpleTokenizer construction, truncated to n_merges merges."""
    merges = [tuple(m.split()) for m in lines[1 : 1 + n_merges]]
    assert len(merges) == n_merges and all(len(m) == 2 for m in merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    enc = {t: i for i, t in enumerate(vocab)}
    assert len(enc) == len(vocab) == 512 + n_merges + 2, "duplicate vocab entries"
    return enc, merges


def write_vocab_merges(dirpath: Path, vocab: dict, merges: list) -> None:
    (dirpath / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dirpath / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def make_tokenizer(vocab: dict, merges: list) -> CLIPTokenizer:
    # transformers 5: CLIPTokenizer *is* the tokenizers-backed (former "Fast") class;
    # CLIPTokenizerFast is an alias of it and the slow Python tokenizer is gone.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT_LENGTH)


def ids_of(tok, text: str) -> list[int]:
    return list(tok(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"])


def openclip_ids(st: SimpleTokenizer, text: str) -> list[int]:
    """open_clip / OpenAI reference: ftfy + html.unescape + whitespace clean + lower,
    sot + bpe + eot, truncated to 77 with the last token forced to eot (no padding)."""
    sot, eot = st.sot_token_id, st.eot_token_id  # 49406, 49407
    toks = [sot] + st.encode(text) + [eot]
    if len(toks) > CONTEXT_LENGTH:
        toks = toks[:CONTEXT_LENGTH]
        toks[-1] = eot
    return toks


TOKENIZER_CASES = [
    "a photo of a cat.",
    "A photo of a CAT.",
    "Café",
    "café",
    "naïve résumé",
    "Ærøskøbing",
    "Straße",
    "Crème brûlée à la française",
    "猫の写真",
    "一只猫",
    "고양이 사진",
    "🐱🚗",
    "👍🏽",
    "👨‍👩‍👧‍👦 family",
    "Hello, World!!!",
    "a---b",
    "it's",
    "don't",
    "I'll we've they're I'm he'd",
    "IT'S DON'T",
    "'quoted'",
    '"double quoted"',
    "“curly quotes” and ‘single’",
    "(x)[y]{z}",
    "a.b,c;d:e?f!g",
    "...",
    "3.14159",
    "1,000,000",
    "2024-11-23",
    "12345678901234567890",
    "v2.0.1-rc3",
    "a   b",
    "\ttab\nnewline",
    "  leading",
    "trailing  ",
    "line1\r\nline2\u00a0nbsp",
    "iPhone XS MAX",
    "camelCaseWord snake_case_word kebab-case-word",
    "&amp; <b>bold</b>",
    "&lt;tag&gt; &quot;x&quot; &#39;y&#39;",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.com",
    "C:\\Users\\name\\file.txt",
    "#hashtag @mention $100 50% ^caret ~tilde `backtick` |pipe|",
    "",
    " ",
    "     ",
    "e\u0301",
    "cafe\u0301 vs caf\u00e9",
    "\ufb01 ligature",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "soft\u00adhyphen",
    "مرحبا بالعالم",
    "שלום עולם",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Ελληνικά και English mixed",
    "x <|endoftext|> y",
    "<|startoftext|>",
    "a photo of a {}.",
    "a photo of a red car.",
    "a photo of a big dog, a type of pet.",
    "itap of a cat.",
    "a bad photo of the dog.",
    "©®™ °C µm ½ ¼",
    "∑∫√∞ ≠ ≤ ≥",
    "\x00null\x07bell",
    "tab\there",
    "MiXeD CaSe WoRdS",
    "ALLCAPS",
    "Ünïcödé ÜBER",
    "ß ẞ",
    "İstanbul ıi",
    " ".join(["word"] * 100),
    " ".join(f"w{i}" for i in range(100)),
    "the quick brown fox jumps over the lazy dog " * 12,
    "x" * 300,
    "supercalifragilisticexpialidocious" * 9,
    "🐱" * 50,
    "!" * 120,
]


# ------------------------------------------------------------------------- weights


def tiny_config(bos_id: int, eos_id: int, vocab_size: int) -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        projection_dim=PROJECTION_DIM,
        **TINY_TEXT,
    )
    vision = CLIPVisionConfig(projection_dim=PROJECTION_DIM, **TINY_VISION)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM)
    cfg._attn_implementation = "eager"
    return cfg


def new_model(cfg: CLIPConfig) -> CLIPModel:
    model = CLIPModel(cfg)
    try:
        model.set_attn_implementation("eager")
    except Exception:
        pass
    return model.eval()


def randomize_weights(model: CLIPModel, seed: int) -> None:
    """Every tensor random, with variances chosen so activations stay O(1) and
    attention is far from uniform. LayerNorm weights are 1 + 0.1*N, never 1;
    biases are never 0; logit_scale is not the 2.6592 default."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = p.shape
            if name == "logit_scale":
                v = torch.tensor(math.log(1 / 0.07)) + 0.1 * randn(())
            elif any(k in name for k in ("layer_norm", "layrnorm", "layernorm")):
                v = 1.0 + 0.1 * randn(shape) if name.endswith("weight") else 0.1 * randn(shape)
            elif name.endswith("token_embedding.weight"):
                v = 0.3 * randn(shape)
            elif name.endswith("position_embedding.weight"):
                v = 0.2 * randn(shape)
            elif name.endswith("class_embedding"):
                v = 0.5 * randn(shape)
            elif name.endswith("patch_embedding.weight"):
                fan_in = shape[1] * shape[2] * shape[3]
                v = randn(shape) / math.sqrt(fan_in)
            elif name.endswith("weight") and p.ndim == 2:  # all Linear layers + projections
                v = randn(shape) / math.sqrt(shape[1])
            elif name.endswith("bias"):
                v = 0.05 * randn(shape)
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(shape)}")
            p.copy_(v)
    # nothing left at a default/constant value
    for name, t in model.state_dict().items():
        if name.endswith("position_ids"):
            continue
        assert t.numel() == 1 or float(t.float().std()) > 1e-3, name
        assert not torch.all(t == 0) and not torch.all(t == 1), name
    assert abs(float(model.logit_scale) - model.config.logit_scale_init_value) > 1e-4


def hf_to_openai(sd: dict, n_text: int, n_vision: int) -> dict:
    """Hugging Face CLIPModel state dict -> OpenAI CLIP / open_clip names."""
    o = {}

    def block(dst: str, src: str):
        q, k, v = (sd[f"{src}.self_attn.{x}_proj.weight"] for x in "qkv")
        qb, kb, vb = (sd[f"{src}.self_attn.{x}_proj.bias"] for x in "qkv")
        o[f"{dst}.attn.in_proj_weight"] = torch.cat([q, k, v], 0)
        o[f"{dst}.attn.in_proj_bias"] = torch.cat([qb, kb, vb], 0)
        o[f"{dst}.attn.out_proj.weight"] = sd[f"{src}.self_attn.out_proj.weight"]
        o[f"{dst}.attn.out_proj.bias"] = sd[f"{src}.self_attn.out_proj.bias"]
        o[f"{dst}.ln_1.weight"] = sd[f"{src}.layer_norm1.weight"]
        o[f"{dst}.ln_1.bias"] = sd[f"{src}.layer_norm1.bias"]
        o[f"{dst}.mlp.c_fc.weight"] = sd[f"{src}.mlp.fc1.weight"]
        o[f"{dst}.mlp.c_fc.bias"] = sd[f"{src}.mlp.fc1.bias"]
        o[f"{dst}.mlp.c_proj.weight"] = sd[f"{src}.mlp.fc2.weight"]
        o[f"{dst}.mlp.c_proj.bias"] = sd[f"{src}.mlp.fc2.bias"]
        o[f"{dst}.ln_2.weight"] = sd[f"{src}.layer_norm2.weight"]
        o[f"{dst}.ln_2.bias"] = sd[f"{src}.layer_norm2.bias"]

    # vision tower
    o["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    o["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    o["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    o["visual.ln_pre.weight"] = sd["vision_model.pre_layrnorm.weight"]
    o["visual.ln_pre.bias"] = sd["vision_model.pre_layrnorm.bias"]
    for i in range(n_vision):
        block(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
    o["visual.ln_post.weight"] = sd["vision_model.post_layernorm.weight"]
    o["visual.ln_post.bias"] = sd["vision_model.post_layernorm.bias"]
    o["visual.proj"] = sd["visual_projection.weight"].t()  # [width, embed]
    # text tower
    o["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    o["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    for i in range(n_text):
        block(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
    o["ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    o["ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    o["text_projection"] = sd["text_projection.weight"].t()  # [width, embed]
    o["logit_scale"] = sd["logit_scale"].reshape(())  # rank-0
    return {k: v.detach().clone().contiguous() for k, v in sorted(o.items())}


def openai_to_hf(o: dict, n_text: int, n_vision: int) -> dict:
    """Inverse of hf_to_openai (used to load the f16 weights back into transformers)."""
    sd = {}

    def block(src: str, dst: str):
        for w in ("weight", "bias"):
            q, k, v = o[f"{src}.attn.in_proj_{w}"].chunk(3, 0)
            sd[f"{dst}.self_attn.q_proj.{w}"] = q
            sd[f"{dst}.self_attn.k_proj.{w}"] = k
            sd[f"{dst}.self_attn.v_proj.{w}"] = v
            sd[f"{dst}.self_attn.out_proj.{w}"] = o[f"{src}.attn.out_proj.{w}"]
            sd[f"{dst}.layer_norm1.{w}"] = o[f"{src}.ln_1.{w}"]
            sd[f"{dst}.mlp.fc1.{w}"] = o[f"{src}.mlp.c_fc.{w}"]
            sd[f"{dst}.mlp.fc2.{w}"] = o[f"{src}.mlp.c_proj.{w}"]
            sd[f"{dst}.layer_norm2.{w}"] = o[f"{src}.ln_2.{w}"]

    sd["vision_model.embeddings.class_embedding"] = o["visual.class_embedding"]
    sd["vision_model.embeddings.position_embedding.weight"] = o["visual.positional_embedding"]
    sd["vision_model.embeddings.patch_embedding.weight"] = o["visual.conv1.weight"]
    for w in ("weight", "bias"):
        sd[f"vision_model.pre_layrnorm.{w}"] = o[f"visual.ln_pre.{w}"]
        sd[f"vision_model.post_layernorm.{w}"] = o[f"visual.ln_post.{w}"]
        sd[f"text_model.final_layer_norm.{w}"] = o[f"ln_final.{w}"]
    for i in range(n_vision):
        block(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
    sd["visual_projection.weight"] = o["visual.proj"].t()
    sd["text_model.embeddings.token_embedding.weight"] = o["token_embedding.weight"]
    sd["text_model.embeddings.position_embedding.weight"] = o["positional_embedding"]
    for i in range(n_text):
        block(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
    sd["text_projection.weight"] = o["text_projection"].t()
    sd["logit_scale"] = o["logit_scale"].reshape(())
    return {k: v.contiguous() for k, v in sd.items()}


def trace_openai_like(model, batch_size: int = 2):
    """open_clip.model.trace_model, except that it copes with visual.image_size being a
    tuple (open_clip 3.3's trace_model passes the tuple to torch.ones and fails)."""
    model = copy.deepcopy(model).eval()
    # OpenAI's CLIP kept the causal mask as a plain tensor attribute, which the tracer
    # bakes into the graph as a constant; open_clip registers it as a (non-persistent)
    # buffer, and a ScriptModule's state_dict would then contain an extra "attn_mask"
    # that open_clip.load_openai_model rejects. Turn it into a plain attribute.
    mask = model._buffers.pop("attn_mask")
    model.attn_mask = mask
    assert "attn_mask" not in model.state_dict()
    image_size = model.visual.image_size
    hw = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    example_images = torch.ones((batch_size, 3, *hw))
    example_text = torch.zeros((batch_size, model.context_length), dtype=torch.int)
    traced = torch.jit.trace_module(
        model,
        inputs=dict(
            forward=(example_images, example_text),
            encode_text=(example_text,),
            encode_image=(example_images,),
        ),
        # nn.MultiheadAttention picks its fused or its python path per call, so the
        # tracer's "graphs differ across invocations" check fails spuriously; the
        # saved archive is checked numerically against transformers instead.
        check_trace=False,
    )
    traced.visual.image_size = image_size
    return traced


# -------------------------------------------------------------------------- images


def write_png16_rgb(arr: np.ndarray, path: Path) -> None:
    """Minimal 16-bit/channel RGB PNG writer (Pillow cannot write RGB;16)."""
    h, w, c = arr.shape
    assert c == 3 and arr.dtype == np.uint16
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


def gradient_rgb(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 4, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def add_shapes(im: Image.Image) -> Image.Image:
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.ellipse([w * 0.1, h * 0.15, w * 0.45, h * 0.6], fill=(230, 40, 40) if im.mode != "L" else 220)
    d.rectangle([w * 0.55, h * 0.5, w * 0.9, h * 0.85], fill=(20, 60, 200) if im.mode != "L" else 30)
    d.line([0, h - 1, w - 1, 0], fill=(255, 255, 0) if im.mode != "L" else 255, width=2)
    return im


def make_images(img_dir: Path) -> dict:
    rng = np.random.default_rng(SEED)
    img_dir.mkdir(parents=True, exist_ok=True)
    info = {}

    # rgb.jpg: 96 wide x 64 high, gradient + shapes, JPEG q90 (4:2:0 subsampling, Pillow default)
    im = add_shapes(Image.fromarray(gradient_rgb(96, 64, rng), "RGB"))
    im.save(img_dir / "rgb.jpg", quality=90)
    info["rgb.jpg"] = "RGB JPEG 96x64 (WxH), quality 90, gradient + ellipse/rectangle/line"

    # gray.png: L mode, 50 wide x 80 high
    g = gradient_rgb(50, 80, rng).mean(-1).round().astype(np.uint8)
    im = add_shapes(Image.fromarray(g, "L"))
    im.save(img_dir / "gray.png", optimize=False)
    info["gray.png"] = "8-bit grayscale (PIL mode L) PNG 50x80 (WxH)"

    # rgba.png: 70x45 with an alpha gradient, a fully transparent block and an opaque block.
    rgb = gradient_rgb(70, 45, rng)
    y, x = np.mgrid[0:45, 0:70]
    alpha = np.clip(255 * x / 69.0, 0, 255)
    alpha[5:20, 5:25] = 0  # fully transparent, but with non-white colour underneath
    alpha[25:40, 45:65] = 255
    rgba = np.concatenate([rgb, alpha.round().astype(np.uint8)[..., None]], -1)
    Image.fromarray(rgba, "RGBA").save(img_dir / "rgba.png", optimize=False)
    info["rgba.png"] = (
        "RGBA PNG 70x45 (WxH); alpha ramps 0->255 left to right, a fully transparent block "
        "(x 5..25, y 5..20) with coloured RGB underneath, an opaque block (x 45..65, y 25..40)"
    )

    # rgb16.png: 16-bit/channel RGB, 40 wide x 60 high; low bytes are non-zero and
    # chosen so that "high byte" (what PIL does) and "round(v/257)" differ.
    base = gradient_rgb(40, 60, rng).astype(np.uint16)
    low = rng.integers(0, 256, size=base.shape, dtype=np.uint16)
    arr16 = (base << 8) | low
    write_png16_rgb(arr16, img_dir / "rgb16.png")
    info["rgb16.png"] = "16-bit/channel RGB PNG 40x60 (WxH); PIL decodes it as mode RGB keeping the high byte"

    # small.png: 20x20 RGB, smaller than 32 so the resize upsamples.
    im = add_shapes(Image.fromarray(gradient_rgb(20, 20, rng), "RGB"))
    im.save(img_dir / "small.png", optimize=False)
    info["small.png"] = "RGB PNG 20x20 (upsampled by the resize)"

    # wide.jpg: 200x50
    im = add_shapes(Image.fromarray(gradient_rgb(200, 50, rng), "RGB"))
    im.save(img_dir / "wide.jpg", quality=90)
    info["wide.jpg"] = "RGB JPEG 200x50 (WxH), quality 90, aspect 4:1"

    # corrupt.jpg: a real JPEG truncated to half of its bytes.
    buf = io.BytesIO()
    add_shapes(Image.fromarray(gradient_rgb(64, 48, rng), "RGB")).save(buf, format="JPEG", quality=90)
    full = buf.getvalue()
    (img_dir / "corrupt.jpg").write_bytes(full[: len(full) // 2])
    info["corrupt.jpg"] = f"INVALID: 64x48 JPEG truncated to {len(full) // 2} of {len(full)} bytes"

    (img_dir / "not_an_image.png").write_bytes(b"this is not a PNG file, just text bytes.\n")
    info["not_an_image.png"] = "INVALID: plain text with a .png extension"

    # checks on how PIL treats the special ones
    im16 = Image.open(img_dir / "rgb16.png")
    assert im16.mode == "RGB", im16.mode
    assert np.array_equal(np.array(im16), (arr16 >> 8).astype(np.uint8)), "PIL 16-bit != high byte"
    assert not np.array_equal(np.array(im16), np.round(arr16 / 257.0).astype(np.uint8))
    assert Image.open(img_dir / "gray.png").mode == "L"
    assert Image.open(img_dir / "rgba.png").mode == "RGBA"
    for bad in ("corrupt.jpg", "not_an_image.png"):
        try:
            Image.open(img_dir / bad).convert("RGB")
        except Exception:
            pass
        else:
            raise AssertionError(f"{bad} decoded without error")
    return info


VALID_IMAGES = sorted(["rgb.jpg", "gray.png", "rgba.png", "rgb16.png", "small.png", "wide.jpg"])


def load_rgb(path: Path) -> Image.Image:
    """OpenAI CLIP / open_clip semantics: PIL convert('RGB'), which DROPS alpha
    (no compositing), replicates L to 3 channels, and (at decode time) keeps the
    high byte of 16-bit PNG samples."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


# ------------------------------------------------------------------------------ main


def main() -> None:
    seed_everything(SEED)
    torch.set_num_threads(1)  # reproducible reductions
    OUT.mkdir(parents=True, exist_ok=True)
    tiny_dir = OUT / "tiny_hf"
    if tiny_dir.exists():
        shutil.rmtree(tiny_dir)
    tiny_dir.mkdir(parents=True)
    descriptions: dict[str, str] = {}
    notes: dict[str, object] = {}

    # ---------------------------------------------------------------- tokenizers
    lines = load_bpe_lines()
    vocab_full, merges_full = build_vocab_merges(lines, N_MERGES_FULL)
    vocab_tiny, merges_tiny = build_vocab_merges(lines, N_MERGES_TINY)
    assert len(vocab_full) == 49408 and len(vocab_tiny) == 2514
    # Both tokenizers are loaded the way the openai/clip-vit-* hub repos are: from a
    # vocab.json + merges.txt pair (tokenizers backend, i.e. the former "Fast" class).
    tmp = Path(tempfile.mkdtemp(prefix="clip_tok_"))
    try:
        (tmp / "full").mkdir()
        (tmp / "tiny").mkdir()
        write_vocab_merges(tmp / "full", vocab_full, merges_full)  # ~3.6 MB, not committed
        write_vocab_merges(tmp / "tiny", vocab_tiny, merges_tiny)
        tok_full = CLIPTokenizer.from_pretrained(tmp / "full", model_max_length=CONTEXT_LENGTH)
        tok_tiny_files = CLIPTokenizer.from_pretrained(tmp / "tiny", model_max_length=CONTEXT_LENGTH)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok_tiny = make_tokenizer(vocab_tiny, merges_tiny)
    for s in TOKENIZER_CASES:
        assert ids_of(tok_tiny, s) == ids_of(tok_tiny_files, s), s
    tok_tiny.save_pretrained(tiny_dir)  # tokenizer.json + tokenizer_config.json
    tok_tiny = CLIPTokenizer.from_pretrained(tiny_dir)  # test what we wrote
    assert len(tok_full) == 49408 and len(tok_tiny) == 2514
    assert (tok_full.bos_token_id, tok_full.eos_token_id, tok_full.pad_token_id) == (49406, 49407, 49407)
    bos, eos = tok_tiny.bos_token_id, tok_tiny.eos_token_id
    assert (bos, eos, tok_tiny.pad_token_id) == (2512, 2513, 2513)
    cat_ids = ids_of(tok_tiny, "a photo of a cat.")
    assert all(i < 2514 for i in cat_ids), cat_ids
    assert cat_ids[0] == bos and cat_ids[-1] == eos

    st = SimpleTokenizer()  # open_clip's port of OpenAI's SimpleTokenizer
    for s in ["a photo of a cat.", "Hello, World!!!", "naïve résumé", "3.14159 1,000,000", "iPhone XS MAX"]:
        assert ids_of(tok_full, s) == openclip_ids(st, s), s
    assert ids_of(tok_full, "a photo of a cat.") == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    # the tiny vocabulary is a prefix of the full one, so ids map 1:1 except specials
    for t, i in vocab_tiny.items():
        if i < 2512:
            assert vocab_full[t] == i

    cases = []
    n_diff_openclip = 0
    for text in TOKENIZER_CASES:
        full = ids_of(tok_full, text)
        tiny = ids_of(tok_tiny, text)
        oc = openclip_ids(st, text)
        assert all(i < 2514 for i in tiny)
        same = full == oc
        n_diff_openclip += not same
        cases.append(
            {
                "text": text,
                "ids_full": full,
                "ids_tiny": tiny,
                "ids_openclip": oc,
                "full_equals_openclip": same,
            }
        )
    tok_cases = {
        "description": (
            "ids_full / ids_tiny: transformers CLIPTokenizer (tokenizers backend) built from "
            "data/assets/bpe_simple_vocab_16e6.txt.gz with all 48894 merges (vocab 49408) / the "
            "first 2000 merges (vocab 2514, == tiny_hf/tokenizer.json), called as "
            "tokenizer(text, truncation=True, max_length=77)['input_ids'] (start and end token "
            "included, no padding). ids_openclip: open_clip SimpleTokenizer (OpenAI's original: "
            "ftfy.fix_text + html.unescape x2 + whitespace clean + lower) with sot/eot, "
            "truncated to 77 with the last token forced to eot; it differs from the HF "
            "tokenizer where ftfy/html unescaping changes the text (HF only does NFC + "
            "whitespace collapse + lowercase), and for a literal '<|endoftext|>' / "
            "'<|startoftext|>' in the text, which HF (like OpenAI's original SimpleTokenizer) "
            "maps to the special id while open_clip 3.x (specials renamed <start_of_text>/"
            "<end_of_text>) BPE-encodes it as plain text -- see full_equals_openclip."
        ),
        "context_length": CONTEXT_LENGTH,
        "special_tokens": {
            "full": {"bos": "<|startoftext|>", "bos_id": 49406, "eos": "<|endoftext|>", "eos_id": 49407,
                      "pad_id": 49407, "unk_id": 49407, "vocab_size": 49408, "n_merges": N_MERGES_FULL},
            "tiny": {"bos": "<|startoftext|>", "bos_id": bos, "eos": "<|endoftext|>", "eos_id": eos,
                      "pad_id": eos, "unk_id": eos, "vocab_size": 2514, "n_merges": N_MERGES_TINY},
        },
        "cases": cases,
    }
    write_json(OUT / "tokenizer_cases.json", tok_cases)
    notes["tokenizer_cases"] = f"{len(cases)} cases, {n_diff_openclip} where HF ids != open_clip ids"

    # ------------------------------------------------------------------- model
    cfg = tiny_config(bos, eos, len(tok_tiny))
    model = new_model(cfg)
    randomize_weights(model, SEED)
    model.save_pretrained(tiny_dir, safe_serialization=True)
    proc_tiny = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc_tiny.save_pretrained(tiny_dir)
    # reload from disk: the expected values come from exactly what is committed
    model = CLIPModel.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    hf_sd = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    n_text, n_vis = TINY_TEXT["num_hidden_layers"], TINY_VISION["num_hidden_layers"]

    oa = hf_to_openai(hf_sd, n_text, n_vis)
    rt = openai_to_hf(oa, n_text, n_vis)
    assert rt.keys() == hf_sd.keys() and all(torch.equal(rt[k], hf_sd[k]) for k in rt)
    save_file(oa, str(OUT / "tiny_openai.safetensors"))
    torch.save(oa, OUT / "tiny_openai.pt")
    fix_torch_zip_serialization_id(OUT / "tiny_openai.pt")
    oa16 = {k: v.to(torch.float16).contiguous() for k, v in oa.items()}
    save_file(oa16, str(OUT / "tiny_openai_f16.safetensors"))

    # open_clip model from the OpenAI-named weights (strict load, exact f32)
    oc_model = build_model_from_openai_state_dict(dict(oa), cast_dtype=None)
    oc_model.float()
    missing = oc_model.load_state_dict(oa, strict=True)
    assert set(oc_model.state_dict().keys()) == set(oa.keys())
    oc_model.eval()
    loaded_pt = torch.load(OUT / "tiny_openai.pt", map_location="cpu", weights_only=True)
    assert loaded_pt.keys() == oa.keys() and all(torch.equal(loaded_pt[k], oa[k]) for k in oa)
    assert oa["logit_scale"].shape == torch.Size([])

    # ---------------------------------------------------------------- images
    img_dir = OUT / "images"
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_info = make_images(img_dir)

    proc224 = CLIPImageProcessorPil(do_rescale=False, do_normalize=False)  # shortest_edge 224, crop 224, BICUBIC
    assert proc224.size["shortest_edge"] == 224 and proc224.crop_size["height"] == 224
    proc_tv32 = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    oc_pre32 = open_clip.transform.image_transform(
        32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    oc_pre224 = open_clip.transform.image_transform(224, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    pre = {}
    pixel_values = []
    pixel_values_openai = []  # open_clip / OpenAI preprocessing (torchvision CenterCrop rounds half to even)
    cross_check = {}
    for fname in VALID_IMAGES:
        stem = fname.rsplit(".", 1)[0]
        rgb = load_rgb(img_dir / fname)
        c = proc224(images=rgb, return_tensors="np")["pixel_values"][0]  # [3,224,224]
        c = np.asarray(c)
        assert c.shape == (3, 224, 224)
        assert np.all(c == np.round(c)) and c.min() >= 0 and c.max() <= 255, fname
        crop = np.ascontiguousarray(c.transpose(1, 2, 0)).astype(np.uint8)  # HWC
        pv = np.asarray(proc_tiny(images=rgb, return_tensors="np")["pixel_values"][0], dtype=np.float32)
        assert pv.shape == (3, 32, 32)
        pre[f"{stem}.crop224"] = torch.from_numpy(crop)
        pre[f"{stem}.pixel_values32"] = torch.from_numpy(np.ascontiguousarray(pv))
        pixel_values.append(pv)
        # cross-checks, recorded in the manifest (not asserted)
        tv = np.asarray(proc_tv32(images=rgb, return_tensors="np")["pixel_values"][0], dtype=np.float32)
        ocv = oc_pre32(rgb).numpy()
        pre[f"{stem}.pixel_values32_openai"] = torch.from_numpy(np.ascontiguousarray(ocv, dtype=np.float32))
        pixel_values_openai.append(np.asarray(ocv, dtype=np.float32))
        oc224 = (oc_pre224(rgb).numpy() * 255.0).round().transpose(1, 2, 0).astype(np.int32)
        cross_check[fname] = {
            "torchvision_backend_CLIPImageProcessor_pixel_values32_max_abs_diff": float(np.abs(tv - pv).max()),
            "open_clip_preprocess_pixel_values32_max_abs_diff": float(np.abs(ocv - pv).max()),
            "open_clip_crop224_max_abs_diff_u8": int(np.abs(oc224 - crop.astype(np.int32)).max()),
        }
    # transformers 5 composites transparent pixels onto WHITE when given an RGBA PIL
    # image (OpenAI/open_clip drop alpha). Keep that variant too, under its own keys.
    with Image.open(img_dir / "rgba.png") as im_rgba:
        im_rgba.load()
        c = np.asarray(proc224(images=im_rgba, return_tensors="np")["pixel_values"][0])
        assert np.all(c == np.round(c))
        pre["rgba.crop224_hf_white_composite"] = torch.from_numpy(
            np.ascontiguousarray(c.transpose(1, 2, 0)).astype(np.uint8)
        )
        pre["rgba.pixel_values32_hf_white_composite"] = torch.from_numpy(
            np.ascontiguousarray(np.asarray(proc_tiny(images=im_rgba, return_tensors="np")["pixel_values"][0], dtype=np.float32))
        )
    assert not torch.equal(pre["rgba.crop224"], pre["rgba.crop224_hf_white_composite"])
    save_file(dict(sorted(pre.items())), str(OUT / "preprocess.safetensors"))

    # ---------------------------------------------------------- expected outputs
    prompts = [TEMPLATE.format(c.replace("_", " ")) for c in CLASSES]
    enc = tok_tiny(prompts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt")
    input_ids = enc["input_ids"].to(torch.int64)
    assert input_ids.shape == (len(CLASSES), CONTEXT_LENGTH)
    untruncated_len = [len(tok_tiny(p)["input_ids"]) for p in prompts]
    untruncated_len_full = [len(tok_full(p)["input_ids"]) for p in prompts]
    assert untruncated_len[3] > CONTEXT_LENGTH and untruncated_len_full[3] > CONTEXT_LENGTH
    eot_index = (input_ids == eos).int().argmax(dim=-1).to(torch.int64)
    assert int(eot_index[3]) == CONTEXT_LENGTH - 1
    # OpenAI's argmax(input_ids) pooling picks the same position (eot is the largest id).
    assert torch.equal(eot_index, input_ids.argmax(dim=-1))
    pixels = torch.from_numpy(np.stack(pixel_values))

    def run_hf(m: CLIPModel):
        with torch.inference_mode():
            out = m(input_ids=input_ids, pixel_values=pixels)  # no attention_mask, like OpenAI CLIP
            t_un = m.get_text_features(input_ids=input_ids)
            i_un = m.get_image_features(pixel_values=pixels)
        # transformers 5: get_*_features return a BaseModelOutputWithPooling whose
        # pooler_output is the *projected* embedding
        t_un = getattr(t_un, "pooler_output", t_un)
        i_un = getattr(i_un, "pooler_output", i_un)
        return out, t_un, i_un

    out, text_un, image_un = run_hf(model)
    text_n = text_un / text_un.norm(dim=-1, keepdim=True)
    image_n = image_un / image_un.norm(dim=-1, keepdim=True)
    assert torch.allclose(text_n, out.text_embeds, atol=1e-6) and torch.allclose(image_n, out.image_embeds, atol=1e-6)
    logits = out.logits_per_image
    # The same model on open_clip's (OpenAI's) preprocessing of the same images.
    pixels_openai = torch.from_numpy(np.stack(pixel_values_openai))
    with torch.inference_mode():
        logits_openai = model(input_ids=input_ids, pixel_values=pixels_openai).logits_per_image
    scale = float(model.logit_scale.exp())
    assert torch.allclose(logits, scale * image_n @ text_n.T, atol=1e-5)
    # non-degenerate outputs
    assert float((text_n @ text_n.T - torch.eye(len(CLASSES))).abs().max()) < 0.99
    assert float((logits.max(1).values - logits.min(1).values).min()) > 0.5, logits
    assert float((image_n @ image_n.T - torch.eye(len(VALID_IMAGES))).abs().max()) < 0.999

    # open_clip (OpenAI naming) must agree with transformers
    with torch.inference_mode():
        oc_t = oc_model.encode_text(input_ids)
        oc_i = oc_model.encode_image(pixels)
    d_text = float((oc_t - text_un).abs().max())
    d_img = float((oc_i - image_un).abs().max())
    assert d_text < 1e-5 and d_img < 1e-5, (d_text, d_img)

    # TorchScript archive like OpenAI's releases (those are f16; this one is f32)
    ts_path = OUT / "tiny_openai_torchscript.pt"
    ts_note = None
    try:
        traced = trace_openai_like(oc_model, batch_size=2)
        torch.jit.save(traced, str(ts_path))
        fix_torch_zip_serialization_id(ts_path)
        ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
        with torch.inference_mode():
            ts_t = ts.encode_text(input_ids)
            ts_i = ts.encode_image(pixels)
        d_ts = max(float((ts_t - text_un).abs().max()), float((ts_i - image_un).abs().max()))
        assert d_ts < 1e-5, d_ts
        ts_sd = ts.state_dict()
        assert all(torch.equal(ts_sd[k], oa[k]) for k in oa), "TorchScript weights differ"
        with zipfile.ZipFile(ts_path) as zf:
            ts_entries = sorted(zf.namelist())
        ts_note = {
            "made_by": "torch.jit.trace_module(open_clip CLIP, forward/encode_text/encode_image, batch 2) "
            "as open_clip.model.trace_model does -> torch.jit.save",
            "methods": ["forward(image, text)", "encode_image(image)", "encode_text(text)"],
            "max_abs_diff_vs_transformers": d_ts,
            "state_dict_keys_extra": sorted(set(ts_sd.keys()) - set(oa.keys())),
            "zip_entries": ts_entries if len(ts_entries) < 80 else ts_entries[:80] + ["..."],
        }
        # open_clip's OpenAI loader accepts it (it rounds matmul weights to f16 internally)
        m2 = open_clip.load_openai_model(str(ts_path), precision="fp32", device="cpu")
        with torch.inference_mode():
            ts_note["open_clip_load_openai_model_text_max_abs_diff"] = float(
                (m2.encode_text(input_ids) - text_un).abs().max()
            )
    except Exception as e:  # pragma: no cover - only if tracing breaks in a future torch
        if ts_path.exists():
            ts_path.unlink()
        ts_note = f"TorchScript export failed: {type(e).__name__}: {e}"
        print("WARNING:", ts_note, file=sys.stderr)

    # f16-rounded weights, cast back to f32, through transformers
    oa16_back = {k: v.to(torch.float32) for k, v in load_file(str(OUT / "tiny_openai_f16.safetensors")).items()}
    m16 = new_model(cfg)
    res = m16.load_state_dict(openai_to_hf(oa16_back, n_text, n_vis), strict=False)
    assert not res.unexpected_keys and all(k.endswith("position_ids") for k in res.missing_keys), res
    m16.eval()
    out16, _, _ = run_hf(m16)
    assert not torch.equal(out16.logits_per_image, logits)

    expected = {
        "input_ids": input_ids.contiguous(),
        "eot_index": eot_index.contiguous(),
        "text_embeds": text_n.contiguous(),
        "image_embeds": image_n.contiguous(),
        "logits_per_image": logits.contiguous(),
        "text_embeds_unnorm": text_un.contiguous(),
        "image_embeds_unnorm": image_un.contiguous(),
        "logits_per_image_f16w": out16.logits_per_image.contiguous(),
        "text_embeds_f16w": out16.text_embeds.contiguous(),
        "image_embeds_f16w": out16.image_embeds.contiguous(),
        "pixel_values": pixels.contiguous(),
        "pixel_values_openai": pixels_openai.contiguous(),
        "logits_per_image_openai_preprocess": logits_openai.contiguous(),
        "logit_scale": model.logit_scale.detach().reshape(()).clone(),
    }
    expected = {k: v.detach().clone() for k, v in expected.items()}
    save_file(expected, str(OUT / "expected.safetensors"))
    write_json(
        OUT / "expected.json",
        {
            "model": "tiny_hf (transformers CLIPModel, eval, f32, eager attention, no attention_mask)",
            "images": VALID_IMAGES,
            "image_preprocessing": "tiny_hf/preprocessor_config.json via CLIPImageProcessorPil "
            "(PIL backend), input = PIL Image.open(path).convert('RGB') (alpha dropped)",
            "classes": CLASSES,
            "template": TEMPLATE,
            "prompts": prompts,
            "prompt_token_lengths_untruncated_tiny": untruncated_len,
            "prompt_token_lengths_untruncated_full": untruncated_len_full,
            "tokenization": "tiny_hf tokenizer, padding='max_length', max_length=77, truncation=True; pad id = eos id",
            "bos_id": bos,
            "eos_id": eos,
            "pad_id": eos,
            "text_pooling": "hidden state at the first eos token (== argmax(input_ids)), after ln_final, then text_projection",
            "logit_scale": float(model.logit_scale),
            "logit_scale_exp": scale,
            "logits_per_image": "exp(logit_scale) * image_embeds @ text_embeds.T, [n_images, n_classes]",
            "f16w": "tiny_openai_f16.safetensors cast back to f32, loaded into transformers CLIPModel",
            "max_abs_diff_open_clip_vs_transformers": {"text": d_text, "image": d_img},
            "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in expected.items()},
        },
    )

    # ---------------------------------------------------------------- manifest
    descriptions.update(
        {
            "tiny_hf/config.json": "CLIPConfig of the tiny random model (transformers layout)",
            "tiny_hf/model.safetensors": "tiny model weights, transformers names, f32 (CLIPModel.save_pretrained)",
            "tiny_hf/tokenizer.json": "tiny CLIP BPE tokenizer: real OpenAI merges truncated to the first 2000 (vocab 2514)",
            "tiny_hf/tokenizer_config.json": "tokenizer config (CLIPTokenizer, tokenizers backend, model_max_length 77)",
            "tiny_hf/preprocessor_config.json": "CLIPImageProcessor config, shortest_edge 32, crop 32x32, bicubic, OpenAI mean/std",
            "tiny_openai.safetensors": "same weights, OpenAI/open_clip names, f32",
            "tiny_openai.pt": "same weights, torch.save(state_dict) zip, f32 (serialization_id fixed)",
            "tiny_openai_f16.safetensors": "same weights, OpenAI names, every tensor f16",
            "tiny_openai_torchscript.pt": "TorchScript archive (open_clip trace_model + torch.jit.save), f32",
            "preprocess.safetensors": "per image: STEM.crop224 u8 [224,224,3] HWC (resize shortest 224 bicubic + center crop, "
            "no rescale/normalize) and STEM.pixel_values32 f32 [3,32,32] (tiny processor); plus rgba.*_hf_white_composite",
            "expected.safetensors": "transformers outputs of the tiny model (see expected.json 'keys')",
            "expected.json": "metadata for expected.safetensors: image/class order, prompts, logit_scale",
            "tokenizer_cases.json": "tokenizer parity cases: ids from full-vocab and tiny HF tokenizers and open_clip",
        }
    )
    for f, d in img_info.items():
        descriptions[f"images/{f}"] = d
    if not ts_path.exists():
        descriptions.pop("tiny_openai_torchscript.pt")

    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "manifest.json")
    for p in files:
        rel = p.relative_to(OUT).as_posix()
        assert rel in descriptions, f"undescribed file {rel}"
    manifest = {
        "generator": "tests/scripts/gen_clip_fixtures.py",
        "seed": SEED,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "open_clip": open_clip.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "safetensors": __import__("safetensors").__version__,
        },
        "bpe_vocab": {"path": "data/assets/bpe_simple_vocab_16e6.txt.gz", "sha256": BPE_SHA256},
        "tiny_config": {
            "text": TINY_TEXT | {"vocab_size": 2514, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
            "vision": TINY_VISION,
            "projection_dim": PROJECTION_DIM,
            "logit_scale": float(model.logit_scale),
        },
        "image_preprocessing": {
            "processor_class": f"transformers.{CLIPImageProcessorPil.__name__} (PIL backend = the old 'slow' processor; "
            "transformers 5's CLIPImageProcessor / AutoImageProcessor default is the torchvision backend)",
            "use_fast": False,
            "input": "PIL Image.open(path).convert('RGB'): alpha is DROPPED (no compositing), as in OpenAI CLIP / "
            "open_clip. NOTE transformers 5 itself, given an RGBA PIL image, composites onto white "
            "(see rgba.*_hf_white_composite).",
            "resize": "shortest edge -> S with the long edge int(S*long/short) (truncated), PIL BICUBIC (Image.resize, "
            "antialiased, reducing_gap None), on uint8",
            "center_crop": "top = (h - crop_h) // 2, left = (w - crop_w) // 2 (floor)",
            "rescale_normalize": "x/255 then (x - mean)/std, mean (0.48145466, 0.4578275, 0.40821073), std "
            "(0.26862954, 0.26130258, 0.27577711), stored as f32",
            "16bit_png": "PIL decodes 16-bit RGB PNG as mode 'RGB' keeping the HIGH byte (v >> 8), not round(v/257)",
            "gray": "L mode -> RGB by channel replication",
            "cross_check": cross_check,
            "cross_check_notes": [
                "torchvision_backend_*: transformers 5's default CLIPImageProcessor (torchvision tensor resize) "
                "differs from the PIL path by up to 1 uint8 level (~0.015 after normalisation).",
                "open_clip_*: OpenAI/open_clip preprocessing (torchvision Resize on PIL + CenterCrop). Resize is "
                "identical; CenterCrop uses int(round((h - crop)/2)) (Python round-half-even) where transformers "
                "floors, so e.g. gray.png at 32 (51x32 after resize -> offset 10 vs 9) differs by one row.",
            ],
        },
        "torchscript": ts_note,
        "notes": notes,
        "files": {
            p.relative_to(OUT).as_posix(): {
                "description": descriptions[p.relative_to(OUT).as_posix()],
                "bytes": p.stat().st_size,
                "sha256": sha256_file(p),
            }
            for p in files
        },
        "total_bytes": sum(p.stat().st_size for p in files),
    }
    write_json(OUT / "manifest.json", manifest)
    print(f"wrote {len(files) + 1} files to {OUT} ({manifest['total_bytes']} bytes + manifest)")
    print(f"open_clip vs transformers max abs diff: text {d_text:.2e}, image {d_img:.2e}")


if __name__ == "__main__":
    main()
