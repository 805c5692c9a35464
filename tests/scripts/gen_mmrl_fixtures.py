#!/usr/bin/env python3
"""Generate the MMRL reference fixtures under tests/fixtures/mmrl/.

Purpose
-------
The Rust MMRL code (rep-token injection, aligners, rep/class heads, loss, gradients,
checkpoint loading) is tested against values computed here by the small PyTorch
reference in tests/scripts/mmrl_reference.py (written from the
project's MMRL spec, independently of the official code). The Rust tests never
run Python: this script is run once by hand and its outputs are committed.

What it writes (see tests/fixtures/mmrl/manifest.json for the list + sha256):
  tiny_clip.safetensors   a NEW tiny random CLIP, OpenAI names, f32 (all values
                          f16-representable, see spec 11.20), logit_scale rank-0
  mmrl_params.safetensors the trainable MMRL tensors, official checkpoint names
  model.pth.tar-5         the same, plus the frozen CLIP copies and the
                          prompt_embeddings buffer, in the Dassl checkpoint format the
                          official trainer writes (torch.save of {state_dict, epoch,
                          optimizer, scheduler, val_result})
  expected.safetensors    reference outputs (features, logits, losses, gradients,
                          hidden states before the first injected block)
  expected.json           metadata: config, classes, prompts, image order, labels, keys
  manifest.json           versions, seed, checks, checkpoint key names, sha256

Inputs: tests/fixtures/clip/expected.safetensors (`pixel_values`, the 6 fixture images
preprocessed for a 32x32 model) and tests/fixtures/clip/tiny_hf/tokenizer.json.

How to run (from the repository root; CPU only, well under a minute):
    pip install -r tests/scripts/requirements.txt
    python3 tests/scripts/gen_mmrl_fixtures.py [--reference-repo DIR]

--reference-repo DIR (optional): a checkout (work tree) of yunncheng/MMRL @ 27d8821f6ac1,
e.g. `git archive 27d8821f6ac1 | tar -x -C DIR`. When given, the official
clip/model_mmrl.py + trainers/mmrl.py are imported (Dassl is stubbed, clip.tokenize is
redirected to the tiny tokenizer) and run on the same weights, to check the checkpoint
key names/order/shapes, the forward outputs, the loss and the gradients against the
reference here; the results go into manifest.json ("official_code_check"). Nothing is
copied from that code. Needs ftfy, regex, tqdm, torchvision, pillow (all in
requirements.txt).

The output is deterministic (seeded, single thread, f64 reference math; the random
`.data/serialization_id` that torch.save writes is replaced by a fixed value): running
it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import math
import pickletools
import platform
import struct
import sys
import types
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from transformers import CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mmrl_reference as ref  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

SEED = 20250301
REPO = Path(__file__).resolve().parents[2]
CLIP_FIX = REPO / "tests" / "fixtures" / "clip"
OUT = REPO / "tests" / "fixtures" / "mmrl"

CONTEXT_LENGTH = 77
TINY = dict(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,  # heads = 64 / 64 = 1
    vision_layers=4,
    context_length=CONTEXT_LENGTH,
    vocab_size=2514,
    text_width=64,  # heads = 1
    text_layers=4,
)
K = 3
REP_DIM = 16
REP_LAYERS = ref.default_rep_layers(4)  # [2, 3, 4], 1-based
ALPHA = 0.7
REG_WEIGHT = 0.5
CLASSES = ["cat", "dog", "red_car", "café"]
TEMPLATE = "a photo of a {}."
LABELS = [0, 1, 2, 3, 0, 1]
IMAGES = ["gray.png", "rgb.jpg", "rgb16.png", "rgba.png", "small.png", "wide.jpg"]
EPOCH = 5  # checkpoint name model.pth.tar-5
DASSL_MODEL_NAME = "MultiModalRepresentationLearner"  # the official trainer's register_model name

# ---------------------------------------------------------------------- utils


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def fix_torch_zip_serialization_id(path: Path) -> None:
    """torch.save writes a random `.data/serialization_id` record. Overwrite it in place
    (same length, CRCs patched), as tests/scripts/gen_clip_fixtures.py does."""
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
    h = info.header_offset
    assert data[h : h + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
    start = h + 30 + name_len + extra_len
    assert bytes(data[start : start + len(old)]) == old
    data[start : start + len(old)] = new
    struct.pack_into("<I", data, h + 14, new_crc)
    name = info.filename.encode()
    pos, patched = 0, False
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


def pickle_globals(path: Path) -> list[str]:
    """The GLOBAL / STACK_GLOBAL names the data.pkl of a torch.save zip refers to."""
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(pkl):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return sorted(found)


# ------------------------------------------------------------------- tiny CLIP


def make_tiny_clip(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tiny CLIP in OpenAI naming, init style of gen_clip_fixtures.py: activations
    O(1), attention far from uniform, LayerNorm weights 1 + 0.1*N, no zero biases,
    logit_scale away from its default. Every value is rounded to f16 and back (spec
    11.20: the official build_model rounds matmul weights to f16)."""
    model = ref.CLIP(**TINY)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    sd = {}
    for name, p in sorted(model.state_dict().items()):
        shape = p.shape
        if name == "logit_scale":
            v = torch.tensor(math.log(1 / 0.07)) + 0.1 * randn(())
        elif ".ln_" in name or name.startswith(("ln_final", "visual.ln_")):
            v = 1.0 + 0.1 * randn(shape) if name.endswith("weight") else 0.1 * randn(shape)
        elif name == "token_embedding.weight":
            v = 0.3 * randn(shape)
        elif name.endswith("positional_embedding"):
            v = 0.2 * randn(shape)
        elif name == "visual.class_embedding":
            v = 0.5 * randn(shape)
        elif name == "visual.conv1.weight":
            v = randn(shape) / math.sqrt(shape[1] * shape[2] * shape[3])
        elif name in ("visual.proj", "text_projection"):  # [in, out], used as x @ W
            v = randn(shape) / math.sqrt(shape[0])
        elif name.endswith("weight") and p.ndim == 2:  # Linear / in_proj: [out, in]
            v = randn(shape) / math.sqrt(shape[1])
        elif name.endswith("bias"):
            v = 0.05 * randn(shape)
        else:
            raise RuntimeError(f"unhandled {name} {tuple(shape)}")
        sd[name] = v.to(torch.float16).to(torch.float32).contiguous()
    for name, t in sd.items():
        assert t.numel() == 1 or float(t.std()) > 1e-3, name
        assert not torch.all(t == 0) and not torch.all(t == 1), name
    assert sd["logit_scale"].shape == ()
    return sd


# ------------------------------------------------------------------ MMRL params


def make_mmrl_params(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random, non-degenerate trainable tensors (names of ref.MMRL). Unlike a fresh
    official init (all layer copies equal, R ~ N(0, 0.02)), every layer differs so a
    layer-indexing bug changes the outputs."""
    bound = 1 / math.sqrt(REP_DIM)

    def unif(shape, scale):
        return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * bound * scale

    p = {"compound_rep_tokens": 0.5 * torch.randn(K, REP_DIM, generator=g)}
    for kind, width in (("r2vproj", TINY["vision_width"]), ("r2tproj", TINY["text_width"])):
        for i in range(len(REP_LAYERS)):
            p[f"{kind}.{i}.weight"] = unif((width, REP_DIM), 3.0)
            p[f"{kind}.{i}.bias"] = unif((width,), 3.0)
    p["proj_rep"] = torch.randn(TINY["vision_width"], TINY["embed_dim"], generator=g) * TINY["vision_width"] ** -0.5
    return {k: v.contiguous() for k, v in p.items()}


def official_trainable_name(name: str) -> str:
    """ref.MMRL parameter name -> name in the official CustomCLIP state_dict."""
    if name == "proj_rep":
        return "image_encoder.proj_rep"
    if name == "compound_rep_tokens":
        return "representation_learner.compound_rep_tokens"
    kind, rest = name.split(".", 1)
    return f"representation_learner.compound_rep_tokens_{kind}.{rest}"


def official_frozen_name(openai_name: str) -> str | None:
    """OpenAI CLIP name -> name of the same tensor inside the official CustomCLIP
    (image_encoder = clip.visual; text_encoder = TextEncoder_MMRL holding transformer,
    positional_embedding, ln_final, text_projection). token_embedding and logit_scale
    are not held by CustomCLIP (prompt embeddings are precomputed into a buffer)."""
    if openai_name.startswith("visual."):
        return "image_encoder." + openai_name[len("visual.") :]
    if openai_name.startswith(("transformer.", "ln_final.")) or openai_name in ("positional_embedding", "text_projection"):
        return "text_encoder." + openai_name
    assert openai_name in ("token_embedding.weight", "logit_scale"), openai_name
    return None


def block_keys(prefix: str, n: int) -> list[str]:
    parts = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]  # fmt: skip
    return [f"{prefix}.{i}.{p}" for i in range(n) for p in parts]


def official_state_dict_order(n_layers_rep: int) -> list[str]:
    """Key order of the official CustomCLIP.state_dict(): a module's own parameters
    (registration order), then its buffers, then its children (registration order).
    CustomCLIP: buffer prompt_embeddings; children representation_learner,
    image_encoder, text_encoder."""
    keys = ["prompt_embeddings", "representation_learner.compound_rep_tokens"]
    for kind in ("r2vproj", "r2tproj"):
        for i in range(n_layers_rep):
            keys += [f"representation_learner.compound_rep_tokens_{kind}.{i}.{w}" for w in ("weight", "bias")]
    keys += [f"image_encoder.{k}" for k in ("class_embedding", "positional_embedding", "proj", "proj_rep",
                                              "conv1.weight", "ln_pre.weight", "ln_pre.bias")]  # fmt: skip
    keys += block_keys("image_encoder.transformer.resblocks", TINY["vision_layers"])
    keys += ["image_encoder.ln_post.weight", "image_encoder.ln_post.bias"]
    keys += ["text_encoder.positional_embedding", "text_encoder.text_projection"]
    keys += block_keys("text_encoder.transformer.resblocks", TINY["text_layers"])
    keys += ["text_encoder.ln_final.weight", "text_encoder.ln_final.bias"]
    return keys


# ------------------------------------------------------------- Dassl checkpoint


class ConstantWarmup(LRScheduler):
    """Same state as Dassl's ConstantWarmupScheduler (attributes successor,
    warmup_epoch, cons_lr; one constant-lr warmup epoch, then the successor steps)."""

    def __init__(self, optimizer, successor, warmup_epoch: int, cons_lr: float):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer, -1)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def build_dassl_checkpoint(state_dict: "OrderedDict[str, torch.Tensor]", grads: dict[str, torch.Tensor]) -> dict:
    """What Dassl's save_model/save_checkpoint writes for the official trainer:
    {"state_dict": model.state_dict(), "epoch": epoch + 1, "optimizer": AdamW state_dict,
    "scheduler": warmup-scheduler state_dict, "val_result": None}. The optimizer is
    AdamW over ALL CustomCLIP parameters (frozen ones never get a grad, so no state);
    the scheduler's state_dict holds the CosineAnnealingLR `successor` OBJECT (which
    itself holds the AdamW object and the Parameters), exactly as Dassl's scheduler
    does, so loading it needs torch.load(weights_only=False). Optimizer state comes
    from 2 steps per epoch x 5 epochs with the fixture gradients; the trainable values
    are then restored, so the state_dict holds the fixture values."""
    params = [nn.Parameter(t, requires_grad=(k.startswith("representation_learner") or k == "image_encoder.proj_rep"))
              for k, t in state_dict.items() if k != "prompt_embeddings"]  # fmt: skip
    names = [k for k in state_dict if k != "prompt_embeddings"]
    for p, t in zip(params, (state_dict[k] for k in names)):
        assert p.data_ptr() == t.data_ptr()  # shares storage: torch.save stores it once
    saved = {n: p.detach().clone() for n, p in zip(names, params) if p.requires_grad}
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4, betas=(0.9, 0.999))
    cos = CosineAnnealingLR(opt, T_max=float(EPOCH))
    sched = ConstantWarmup(opt, cos, warmup_epoch=1, cons_lr=1e-5)
    for _epoch in range(EPOCH):
        for _it in range(2):
            for n, p in zip(names, params):
                if p.requires_grad:
                    p.grad = grads[n].clone()
            opt.step()
        sched.step()  # Dassl: once per epoch, after the last batch
    with torch.no_grad():
        for n, p in zip(names, params):
            if p.requires_grad:
                p.copy_(saved[n])
                p.grad = None
    sched_sd = sched.state_dict()
    # torch 2.4 (the version the official README pins) also kept a `verbose` attribute
    sched_sd["verbose"] = False
    cos.verbose = False
    return {
        "state_dict": state_dict,
        "epoch": EPOCH,
        "optimizer": opt.state_dict(),
        "scheduler": sched_sd,
        "val_result": None,
    }


# ------------------------------------------------------- official code (optional)


def check_against_official_code(repo_dir: Path, clip_sd, mmrl_official, ckpt_sd, input_ids, pixels, labels,
                                ours32: dict, grads32: dict) -> dict:  # fmt: skip
    """Run the official MMRL code (imported from a checkout, Dassl stubbed) on the same
    tensors; compare the checkpoint keys and the numbers with the f32 reference run."""
    sys.path.insert(0, str(repo_dir))
    stubs = {
        "dassl": {},
        "dassl.engine": {"TRAINER_REGISTRY": types.SimpleNamespace(register=lambda *a, **k: (lambda c: c)),
                         "TrainerX": object},  # fmt: skip
        "dassl.metrics": {"compute_accuracy": None},
        "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
    }
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
    clip_pkg = importlib.import_module("clip.clip")
    off = importlib.import_module("trainers.mmrl")
    id_of = {TEMPLATE.format(c.replace("_", " ")): input_ids[i] for i, c in enumerate(CLASSES)}
    off.clip.tokenize = lambda text: id_of[text].unsqueeze(0).clone()  # tiny vocabulary

    details = {"rep_tokens_layers": list(REP_LAYERS), "n_rep_tokens": K}
    clip_model = clip_pkg.build_model_MMRL(dict(clip_sd), {**details, "model": "MMRL"}).float()
    clip_zs = clip_pkg.build_model_MMRL(dict(clip_sd), {**details, "model": "CLIP"}).float()
    cfg = types.SimpleNamespace(
        TRAINER=types.SimpleNamespace(MMRL=types.SimpleNamespace(ALPHA=ALPHA, N_REP_TOKENS=K, REP_DIM=REP_DIM,
                                                                 REP_LAYERS=list(REP_LAYERS))),  # fmt: skip
        INPUT=types.SimpleNamespace(SIZE=(TINY["image_size"], TINY["image_size"])),
        DATASET=types.SimpleNamespace(NAME="ImageNet"),
    )
    torch.manual_seed(0)
    model = off.CustomCLIP(cfg, CLASSES, clip_model)
    # the trainer's selection rule for trainable tensors
    for name, p in model.named_parameters():
        p.requires_grad_(any(s in name for s in ("representation_learner", "image_encoder.proj_rep")))
    off_sd = model.state_dict()
    res = {
        "state_dict_keys_equal_in_order": list(off_sd.keys()) == list(ckpt_sd.keys()),
        "state_dict_shapes_equal": all(tuple(off_sd[k].shape) == tuple(ckpt_sd[k].shape) for k in off_sd)
        if set(off_sd) == set(ckpt_sd)
        else False,
        "official_trainable_names": sorted(n for n, p in model.named_parameters() if p.requires_grad),
    }
    assert res["state_dict_keys_equal_in_order"], (set(off_sd) ^ set(ckpt_sd))
    assert res["state_dict_shapes_equal"]
    assert res["official_trainable_names"] == sorted(mmrl_official), res["official_trainable_names"]
    res["prompt_embeddings_max_abs_diff"] = float((off_sd["prompt_embeddings"] - ckpt_sd["prompt_embeddings"]).abs().max())
    model.load_state_dict(ckpt_sd, strict=True)
    model.train()
    logits, logits_rep, fusion, f_c, t = model(pixels)
    with torch.no_grad():
        zs_img = clip_zs.visual(pixels)
        zs_img = zs_img / zs_img.norm(dim=-1, keepdim=True)
        enc = off.TextEncoder_CLIP(clip_zs)
        zs_txt = enc(clip_zs.token_embedding(model.tokenized_prompts), model.tokenized_prompts)
        zs_txt = zs_txt / zs_txt.norm(dim=-1, keepdim=True)
    loss = off.MMRL_Loss(reg_weight=REG_WEIGHT, alpha=ALPHA)(logits, logits_rep, f_c, t, zs_img, zs_txt, labels)
    loss.backward()
    pairs = {
        "class_logits": logits, "rep_logits": logits_rep, "fused_logits": fusion,
        "class_image_features": f_c, "text_features": t, "zs_image_features": zs_img, "zs_text_features": zs_txt,
    }  # fmt: skip
    diffs = {k: float((v.detach() - ours32[k]).abs().max()) for k, v in pairs.items()}
    diffs["loss_total"] = float((loss.detach() - ours32["loss_total"]).abs().max())
    named = dict(model.named_parameters())
    diffs["grads_max_abs_diff"] = max(float((named[off_name].grad - grads32[off_name]).abs().max()) for off_name in grads32)
    diffs["grads_max_rel_diff"] = max(
        float((named[n].grad - grads32[n]).abs().max() / grads32[n].abs().max()) for n in grads32
    )
    res["max_abs_diff_vs_reference_f32"] = diffs
    for k, d in diffs.items():
        assert d < (1e-3 if k.endswith("rel_diff") else 2e-4), (k, d)
    sys.path.remove(str(repo_dir))
    return res


# -------------------------------------------------------------------------- main


def run_reference(clip_sd, params, input_ids, pixels, labels, dtype):
    """Forward + loss + backward of the reference at `dtype`."""
    clip = ref.CLIP.from_openai_state_dict(clip_sd).to(dtype)
    cfg = ref.MMRLConfig(n_rep_tokens=K, rep_dim=REP_DIM, rep_layers=list(REP_LAYERS), alpha=ALPHA, reg_weight=REG_WEIGHT)
    model = ref.MMRL(clip, cfg).to(dtype)
    model.load_state_dict({**{f"clip.{k}": v for k, v in clip_sd.items()}, **params}, strict=True)
    px = pixels.to(dtype)
    zs_img, zs_txt = model.zero_shot_features(px, input_ids)
    out = model(px, input_ids)
    losses = ref.mmrl_loss(out, labels, zs_img, zs_txt, ALPHA, REG_WEIGHT)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(trainable) == sorted(params), sorted(trainable)
    grads = torch.autograd.grad(losses["loss_total"], list(trainable.values()))
    res = {k: v.detach() for k, v in out.items()}
    res.update({k: v.detach() for k, v in losses.items()})
    res["zs_image_features"], res["zs_text_features"] = zs_img, zs_txt
    return model, res, dict(zip(trainable, (g.detach() for g in grads)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-repo", type=Path, default=None,
                    help="checkout of yunncheng/MMRL @ 27d8821f6ac1 to cross-check against")  # fmt: skip
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file():
            old.unlink()

    # ---- the reference CLIP is right: compare with transformers on the CLIP fixtures
    clip_check = ref.check_clip_against_transformers(CLIP_FIX)
    n_vitb16 = ref.trainable_param_count(768, 512, 512, k=5, d_r=512, n_layers=len(ref.default_rep_layers(12)))
    assert n_vitb16 == 4_992_256, n_vitb16
    assert ref.default_rep_layers(12) == list(range(6, 13))

    # ---- inputs
    clip_expected = load_file(str(CLIP_FIX / "expected.safetensors"))
    pixels = clip_expected["pixel_values"].contiguous()
    assert pixels.shape == (6, 3, 32, 32)
    assert json.loads((CLIP_FIX / "expected.json").read_text())["images"] == IMAGES
    tok = CLIPTokenizer.from_pretrained(str(CLIP_FIX / "tiny_hf"))
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert (bos, eos, len(tok)) == (2512, 2513, 2514)
    prompts = [TEMPLATE.format(c.replace("_", " ")) for c in CLASSES]
    rows = []
    for p in prompts:
        ids = tok(p, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
        assert ids[0] == bos and ids[-1] == eos and ids.count(eos) == 1
        rows.append(ids + [0] * (CONTEXT_LENGTH - len(ids)))  # OpenAI pads with 0 after EOT
    input_ids = torch.tensor(rows, dtype=torch.int64)
    eot = ref.eot_index(input_ids)
    assert torch.equal(eot, (input_ids == eos).int().argmax(-1))
    labels = torch.tensor(LABELS, dtype=torch.int64)

    # ---- weights
    g = torch.Generator().manual_seed(SEED)
    clip_sd = make_tiny_clip(g)
    params = make_mmrl_params(g)
    for kind in ("r2vproj", "r2tproj"):
        for i in range(len(REP_LAYERS)):
            for j in range(i):
                assert not torch.allclose(params[f"{kind}.{i}.weight"], params[f"{kind}.{j}.weight"])

    # ---- reference run: f64 is what is stored; f32 only to record the f32 error size
    model64, out64, grads64 = run_reference(clip_sd, params, input_ids, pixels, labels, torch.float64)
    _, out32, grads32 = run_reference(clip_sd, params, input_ids, pixels, labels, torch.float32)
    f32_vs_f64 = {k: float((out32[k].double() - out64[k]).abs().max()) for k in out64}
    f32_vs_f64["grads_max_abs"] = max(float((grads32[k].double() - grads64[k]).abs().max()) for k in grads64)

    # ---- non-degeneracy
    for key in ("class_logits", "rep_logits"):
        spread = out64[key].max(1).values - out64[key].min(1).values
        assert float(spread.min()) > 1.0, (key, out64[key])
    assert float((out64["class_logits"] - out64["rep_logits"]).abs().max()) > 1.0
    assert float(out64["loss_reg_image"]) > 1e-3 and float(out64["loss_reg_text"]) > 1e-3, out64
    for name, gr in grads64.items():
        assert float(gr.abs().max()) > 1e-6, name
    # a layer-indexing bug shows: shuffling which aligner feeds which layer changes things
    shuffled = {**params}
    for kind in ("r2vproj", "r2tproj"):
        for i in range(len(REP_LAYERS)):
            src = (i + 1) % len(REP_LAYERS)
            for w in ("weight", "bias"):
                shuffled[f"{kind}.{i}.{w}"] = params[f"{kind}.{src}.{w}"]
    _, out_sh, _ = run_reference(clip_sd, shuffled, input_ids, pixels, labels, torch.float64)
    layer_shuffle_effect = float((out_sh["fused_logits"] - out64["fused_logits"]).abs().max())
    assert layer_shuffle_effect > 0.1, layer_shuffle_effect
    # the hidden state before the first injected block is the frozen CLIP's (sanity)
    assert out64["vision_hidden_before_first_injection"].shape == (6, 1 + (32 // 8) ** 2, 64)
    assert out64["text_hidden_before_first_injection"].shape == (4, 77, 64)

    # ---- tiny_clip.safetensors
    save_file(clip_sd, str(OUT / "tiny_clip.safetensors"), metadata={"format": "pt"})
    assert all(torch.equal(v, clip_sd[k]) for k, v in load_file(str(OUT / "tiny_clip.safetensors")).items())

    # ---- mmrl_params.safetensors (official names, trainable only)
    mmrl_official = {official_trainable_name(k): v for k, v in params.items()}
    save_file(dict(sorted(mmrl_official.items())), str(OUT / "mmrl_params.safetensors"), metadata={"format": "pt"})

    # ---- model.pth.tar-5 (Dassl format, official CustomCLIP state_dict)
    with torch.no_grad():
        prompt_embeddings = clip_sd["token_embedding.weight"][input_ids].clone()  # [n_cls, 77, width]
    tensors = {"prompt_embeddings": prompt_embeddings}
    tensors.update({official_trainable_name(k): v.clone() for k, v in params.items()})
    for k, v in clip_sd.items():
        off = official_frozen_name(k)
        if off is not None:
            tensors[off] = v.clone()
    order = official_state_dict_order(len(REP_LAYERS))
    assert sorted(order) == sorted(tensors), set(order) ^ set(tensors)
    ckpt_sd = OrderedDict((k, tensors[k]) for k in order)
    grads_official = {official_trainable_name(k): v.to(torch.float32) for k, v in grads64.items()}
    ckpt = build_dassl_checkpoint(ckpt_sd, grads_official)
    ckpt_path = OUT / f"model.pth.tar-{EPOCH}"
    torch.save(ckpt, str(ckpt_path))
    fix_torch_zip_serialization_id(ckpt_path)
    loaded = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    assert list(loaded["state_dict"]) == order and loaded["epoch"] == EPOCH and loaded["val_result"] is None
    assert all(torch.equal(loaded["state_dict"][k], ckpt_sd[k]) for k in order)
    try:
        torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
        weights_only_loads = True
    except Exception:
        weights_only_loads = False
    ckpt_globals = pickle_globals(ckpt_path)
    with zipfile.ZipFile(ckpt_path) as zf:
        n_storages = sum(1 for n in zf.namelist() if "/data/" in n and not n.endswith("serialization_id"))
    assert n_storages == len(order) + sum(len(s) for s in loaded["optimizer"]["state"].values()), n_storages

    # ---- optional: the official code on the same tensors
    official_check = None
    if args.reference_repo is not None:
        grads32_official = {official_trainable_name(k): v for k, v in grads32.items()}
        official_check = check_against_official_code(
            args.reference_repo.resolve(), clip_sd, mmrl_official, ckpt_sd, input_ids, pixels, labels, out32,
            grads32_official,
        )  # fmt: skip

    # ---- expected.safetensors
    f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    expected = {
        "input_ids": input_ids,
        "eot_index": eot.to(torch.int64),
        "labels": labels,
    }
    for k in ("class_image_features", "rep_image_features", "text_features", "zs_image_features",
              "zs_text_features", "class_logits", "rep_logits", "fused_logits",
              "vision_hidden_before_first_injection", "text_hidden_before_first_injection",
              "rep_tokens_visual", "rep_tokens_text"):  # fmt: skip
        expected[k] = f32(out64[k])
    for k in ("loss_ce_class", "loss_ce_rep", "loss_reg_image", "loss_reg_text", "loss_total"):
        expected[k] = f32(out64[k]).reshape(1)
    for k, v in grads64.items():
        expected[f"grad.{k}"] = f32(v)
    expected = {k: v.contiguous() for k, v in expected.items()}
    save_file(expected, str(OUT / "expected.safetensors"), metadata={"format": "pt"})
    keys_info = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in expected.items()}

    config = {
        "n_rep_tokens": K,
        "rep_dim": REP_DIM,
        "rep_layers_1based": list(REP_LAYERS),
        "rep_layers_rule": "max(1, L//2)..L with L = 4",
        "alpha": ALPHA,
        "reg_weight": REG_WEIGHT,
        "logit_scale": 100.0,
    }
    write_json(
        OUT / "expected.json",
        {
            "model": "tiny_clip.safetensors + mmrl_params.safetensors, reference tests/scripts/mmrl_reference.py "
            "computed in float64, stored as float32",
            "config": config,
            "tiny_clip": TINY | {"vision_heads": TINY["vision_width"] // 64, "text_heads": TINY["text_width"] // 64},
            "images": IMAGES,
            "pixel_values": "tests/fixtures/clip/expected.safetensors `pixel_values` [6,3,32,32] (rows in `images` order)",
            "pixel_values_sha256_f32_bytes": sha256_tensor(pixels),
            "labels": LABELS,
            "classes": CLASSES,
            "template": TEMPLATE,
            "prompts": prompts,
            "tokenization": "tests/fixtures/clip/tiny_hf tokenizer (transformers CLIPTokenizer), truncation to 77, "
            "then padded with id 0 after EOT as OpenAI's clip.tokenize does",
            "bos_id": bos,
            "eos_id": eos,
            "pad_id": 0,
            "eot_index": "first EOT position (== argmax(input_ids)); the MMRL text path reads row eot_index + K",
            "features": "all *_features are L2-normalised. class = ln_post(CLS) @ proj; rep = mean_k ln_post(rep "
            "token k) @ proj_rep; text = ln_final(row eot+K) @ text_projection; zs_* = frozen tiny CLIP without rep "
            "tokens (image: ln_post(CLS) @ proj, text: row eot)",
            "logits": "class/rep = 100 * image_features @ text_features.T, [6 images, 4 classes]; fused = "
            "alpha*class + (1-alpha)*rep",
            "losses": "shape [1]; total = alpha*ce_class + (1-alpha)*ce_rep + reg_weight*reg_image + "
            "reg_weight*reg_text; CE mean over the 6 images; reg_image = 1 - mean_images cos(class_image_features, "
            "zs_image_features); reg_text = 1 - mean_classes cos(text_features, zs_text_features)",
            "gradients": "grad.NAME = d loss_total / d NAME. NAME: compound_rep_tokens [K,d_r]; r2vproj.{i}.weight "
            "[vision_width,d_r] (PyTorch [out,in]) / .bias; r2tproj.{i}.weight [text_width,d_r] / .bias; proj_rep "
            "[vision_width,embed] (used as x @ proj_rep). i = 0..2 is the i-th injected layer (block i+2, 1-based). "
            "Official names: see manifest.json trainable_name_map.",
            "hidden_states": "vision_hidden_before_first_injection [6,17,64] = input of block 2 (1-based) = output "
            "of block 1, after ln_pre, CLS first, before the rep tokens are inserted; "
            "text_hidden_before_first_injection [4,77,64] = input of block 2 of the text tower (77-causal mask).",
            "rep_tokens": "rep_tokens_visual / rep_tokens_text [n_rep_layers, K, width] = r2{v,t}proj[i](R)",
            "f32_vs_f64_max_abs_diff": f32_vs_f64,
            "layer_shuffle_fused_logits_max_abs_change": layer_shuffle_effect,
            "keys": keys_info,
        },
    )

    # ---- manifest
    descriptions = {
        "tiny_clip.safetensors": "tiny random CLIP, OpenAI names, f32 (values f16-representable), logit_scale rank-0",
        "mmrl_params.safetensors": "trainable MMRL tensors only, official checkpoint names, f32",
        f"model.pth.tar-{EPOCH}": "Dassl checkpoint as the official trainer writes it (torch.save zip; "
        "serialization_id fixed): state_dict = official CustomCLIP.state_dict()",
        "expected.safetensors": "reference outputs (see expected.json 'keys')",
        "expected.json": "metadata for expected.safetensors",
    }
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "manifest.json")
    ckpt_info = {
        "path": f"model.pth.tar-{EPOCH}",
        "official_location": f"<output_dir>/{DASSL_MODEL_NAME}/model.pth.tar-<epoch> (Dassl save_model: "
        "osp.join(directory, name), name = the trainer's register_model name)",
        "top_level_keys": list(loaded.keys()),
        "epoch": EPOCH,
        "val_result": None,
        "optimizer": "torch.optim.AdamW(all CustomCLIP parameters, lr 1e-3, betas (0.9, 0.999), weight_decay 5e-4)."
        "state_dict(): 'state' has step/exp_avg/exp_avg_sq only for the trainable indices; 'param_groups' one group",
        "optimizer_trainable_param_indices": sorted(loaded["optimizer"]["state"].keys()),
        "scheduler": "Dassl ConstantWarmupScheduler state_dict (warmup 1 epoch at 1e-5): plain values plus "
        "'successor' = a pickled torch.optim.lr_scheduler.CosineAnnealingLR OBJECT that holds the AdamW object "
        "(and through it every Parameter, sharing the state_dict storages). Real MMRL checkpoints have the same "
        "structure, so a loader must skip the non-tensor objects outside 'state_dict'.",
        "scheduler_keys": sorted(loaded["scheduler"].keys()),
        "torch_load_weights_only_true_works": weights_only_loads,
        "pickle_globals": ckpt_globals,
        "n_tensor_storages": n_storages,
        "state_dict_keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                            for k, v in ckpt_sd.items()},  # fmt: skip
        "state_dict_name_patterns": {
            "trainable (load these)": [
                f"representation_learner.compound_rep_tokens [K={K}, d_r={REP_DIM}]",
                "representation_learner.compound_rep_tokens_r2vproj.{i}.weight [vision_width, d_r] / .bias "
                "[vision_width], i = 0..n_rep_layers-1",
                "representation_learner.compound_rep_tokens_r2tproj.{i}.weight [text_width, d_r] / .bias [text_width]",
                "image_encoder.proj_rep [vision_width, embed_dim]",
            ],
            "ignore (frozen CLIP copies and the class-set buffer)": [
                "prompt_embeddings [n_cls, 77, text_width] (token_embedding(ids); the official loader drops it)",
                "image_encoder.{class_embedding, positional_embedding, proj, conv1.weight, ln_pre.*, ln_post.*}",
                "image_encoder.transformer.resblocks.{n}.{attn.in_proj_weight, attn.in_proj_bias, "
                "attn.out_proj.weight, attn.out_proj.bias, ln_1.*, mlp.c_fc.*, mlp.c_proj.*, ln_2.*}",
                "text_encoder.{positional_embedding, text_projection, ln_final.*}",
                "text_encoder.transformer.resblocks.{n}.{same block names}",
            ],
            "absent": "token_embedding.weight and logit_scale (CustomCLIP does not hold them); no attn_mask "
            "(a plain attribute, not a buffer); no 'module.' prefix (Dassl strips it)",
        },
    }
    manifest = {
        "generator": "tests/scripts/gen_mmrl_fixtures.py",
        "reference": "tests/scripts/mmrl_reference.py (written from /work/shared/specs/mmrl.md)",
        "seed": SEED,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "config": config,
        "tiny_clip": TINY,
        "init": {
            "tiny_clip": "as gen_clip_fixtures.py: LN weight 1+0.1N, LN bias 0.1N, token_embedding 0.3N, positional "
            "0.2N, class_embedding 0.5N, conv1 N/sqrt(fan_in), matrices N/sqrt(fan_in), biases 0.05N, logit_scale "
            "log(1/0.07)+0.1N; all rounded to f16 and back",
            "mmrl": "R ~ N(0, 0.5); every aligner weight and bias ~ 3*U(-1/sqrt(d_r), 1/sqrt(d_r)), all layers "
            "different; proj_rep ~ N(0,1)*vision_width**-0.5",
        },
        "checks": {
            "reference_clip_vs_transformers_max_abs_diff": clip_check,
            "vit_b16_trainable_params_K5_dr512_layers6to12": n_vitb16,
            "layer_shuffle_fused_logits_max_abs_change": layer_shuffle_effect,
            "official_code_check": official_check,
        },
        "trainable_name_map": {f"grad.{k}": official_trainable_name(k) for k in params},
        "checkpoint": ckpt_info,
        "reference_repo_names_verified": (
            "Against yunncheng/MMRL @ 27d8821f6ac1 (trainers/mmrl.py: MultiModalRepresentationLearner, CustomCLIP, "
            "TextEncoder_MMRL; clip/model_mmrl.py: VisionTransformer, Transformer, ResidualAttentionBlock) and Dassl "
            "@ c61a1b570ac6 (save_model / save_checkpoint). "
            + ("The official code was run on these tensors: its CustomCLIP.state_dict() has exactly these keys, "
               "in this order, with these shapes (see checks.official_code_check)."
               if official_check else "Names checked by reading the code only (run with --reference-repo to "
               "check them by running it).")
        ),  # fmt: skip
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
    print("reference CLIP vs transformers:", {k: f"{v:.2e}" for k, v in clip_check.items()})
    print(f"ViT-B/16 trainable params: {n_vitb16:,}")
    print("loss:", {k: round(float(out64[k]), 6) for k in ("loss_ce_class", "loss_ce_rep", "loss_reg_image",
                                                          "loss_reg_text", "loss_total")})  # fmt: skip
    if official_check:
        print("official code check:", json.dumps(official_check["max_abs_diff_vs_reference_f32"]))


if __name__ == "__main__":
    main()
