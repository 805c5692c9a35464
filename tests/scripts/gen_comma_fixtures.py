#!/usr/bin/env python3
"""Generate the COMMA reference fixtures under tests/fixtures/comma/.

Purpose
-------
The Rust COMMA (model/src/methods/comma.rs: deep prompts in both towers, the vision
prompt generators, the knowledge-preservation loss; comma_io.rs: the reference's Dassl
checkpoints) is tested against values computed here by the authors' own code,
hulianyuyy/COMMA @ 3584f31: `trainers/comma.py` (CustomCLIP, MultiModalPromptLearner,
attention_transform, TextEncoder, the loss of `forward_backward`) and `clip/model.py`
(ResidualAttentionBlock_COMMA, the prompted VisionTransformer, build_model), imported
from a checkout with Dassl stubbed. The Rust tests never run Python: this script is
run once by hand and its outputs are committed.

How the reference is run, and what is changed for a tiny CLIP:
- CLIP is a new tiny random CLIP in OpenAI names (text width 64, vision width 128,
  4 layers each, heads = width / 64 as build_model derives them, projection 32, every
  value f16-representable), built by the reference's own `clip.build_model` in place of
  the ViT-B/16 it downloads; `clip.tokenize` is the tiny vocabulary's (TinyTokenizer).
- The reference hard-codes ViT-B/16's widths in trainers/comma.py (`512` text, `768`
  vision, in attention_transform, `proj` and the deep prompt tensors): its source is
  loaded with exactly those literals replaced by the tiny widths (the count of
  replacements is checked). Nothing else in it is changed.
- Precision: the reference only runs with PREC "fp16". The model is built that way, so
  the prompt learner is exactly the reference's: `ctx`, `proj` and the base generator in
  fp16, the prompt's token embeddings (`token_prefix`/`token_suffix`) in fp16, the deep
  prompts cast with `.half()` where a block inserts them, the later generators and the
  deep text prompts in fp32. CLIP itself is then cast to fp32 (its towers, and the dtype
  the text encoder casts to) and the frozen CLIP of the knowledge-preservation target is
  built in fp32: Rust runs CLIP in f32 for every method, and comparing it with an fp16
  CLIP would measure fp16 CLIP, not COMMA. The fp16 ops of the base generator run on
  the CPU (PyTorch's half kernels).
- `.cuda()` is a no-op (CPU).

What it writes (tests/fixtures/comma/; manifest.json lists files + sha256):
  tiny_clip.safetensors   the tiny CLIP (OpenAI names, f32)
  expected.safetensors    pixel_values [6,3,32,32] (tests/fixtures/clip), labels,
                          input_ids [4,77] (learned prompts "a photo of a {name}."),
                          template_ids [4,77] (the KP target's template), logits [6,4],
                          loss_ce, loss_kp, loss_total, vision_prompts (the generated
                          compound_prompts_image after the forward), params.<key> (the
                          trained tensors as initialised, PyTorch layout, f32) and
                          grad.<key> (d total / d each of ctx, proj.weight, proj.bias,
                          compound_prompts_text), kp_target [1,4,77,64]
  MultiModalPromptLearner/model.pth.tar-2
                          the reference checkpoint as Dassl writes it: {state_dict (the
                          whole CustomCLIP), epoch, optimizer (SGD), scheduler
                          (ConstantWarmupScheduler over CosineAnnealingLR), val_result}
  expected.json           classes, prompts, template, labels, settings, counts
  manifest.json           versions, seed, reference commit, file list + sha256

How to run (from the repository root; CPU only, a few seconds):
    pip install -r tests/scripts/requirements.txt
    git clone https://github.com/hulianyuyy/COMMA /tmp/ref/comma
    python3 tests/scripts/gen_comma_fixtures.py --reference-repo /tmp/ref/comma

The output is deterministic (seeded; torch.save's random serialization_id is fixed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import types
import warnings
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_mmrl_fixtures as mmrl_gen  # noqa: E402
from gen_coop_fixtures import TinyTokenizer, sha256_file, write_json  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

SEED = 20241128
REPO = Path(__file__).resolve().parents[2]
CLIP_FIX = REPO / "tests" / "fixtures" / "clip"
OUT = REPO / "tests" / "fixtures" / "comma"
TINY = dict(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=128,  # heads 2
    vision_layers=4,
    context_length=77,
    vocab_size=2514,
    text_width=64,  # heads 1
    text_layers=4,
)
CLASSES = ["cat", "dog", "red_car", "café"]  # Dassl class names ("_" read as a space)
DATASET = "OxfordPets"  # its CUSTOM_TEMPLATES entry differs from the learned prompt
LABELS = [0, 1, 2, 3, 0, 1]
N_CTX, CTX_INIT, DEPTH, WEIGHT = 2, "a photo of a", 3, 1.0
EPOCH = 2
LR = 0.0035


def load_reference(repo: Path, tok: TinyTokenizer) -> types.SimpleNamespace:
    """COMMA's clip package and trainers/comma.py, imported from `repo` with Dassl,
    ftfy, PIL and torchvision stubbed (the code paths used here need none of them),
    the ViT-B/16 widths of trainers/comma.py replaced by the tiny ones."""
    stubs = {
        "dassl": {},
        "dassl.engine": {"TRAINER_REGISTRY": types.SimpleNamespace(register=lambda *a, **k: (lambda c: c)),
                         "TrainerX": object},  # fmt: skip
        "dassl.metrics": {"compute_accuracy": None},
        "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
        "ftfy": {"fix_text": lambda s: s},
    }
    for name in ("PIL", "PIL.Image", "torchvision", "torchvision.transforms"):
        try:
            importlib.import_module(name)
        except ImportError:
            stubs.setdefault(name, {})
    if "torchvision.transforms" in stubs:
        for attr in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
            stubs["torchvision.transforms"][attr] = type(attr, (), {})
        stubs["torchvision.transforms"]["InterpolationMode"] = types.SimpleNamespace(BICUBIC=3)
    if "PIL.Image" in stubs:
        stubs["PIL.Image"]["BICUBIC"] = 3
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
    if "PIL" in stubs:
        sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    sys.path.insert(0, str(repo))
    clip_pkg = importlib.import_module("clip.clip")
    clip_model = importlib.import_module("clip.model")
    src = (repo / "trainers" / "comma.py").read_text()
    tw, vw = TINY["text_width"], TINY["vision_width"]
    counts = {"512": src.count("512"), "768": src.count("768")}
    # The literals in code (attention_transform, proj, the deep prompt tensors) and in
    # two comments; nothing else in the file contains them.
    assert counts == {"512": 4, "768": 9}, counts
    src = src.replace("768", str(vw)).replace("512", str(tw))
    mod = types.ModuleType("trainers.comma")
    mod.__file__ = str(repo / "trainers" / "comma.py")
    sys.modules.setdefault("trainers", types.ModuleType("trainers"))
    sys.modules["trainers.comma"] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    mod.clip.tokenize = tok.tokenize
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return types.SimpleNamespace(comma=mod, clip=clip_pkg, model=clip_model, commit=commit.strip())


def cfg() -> types.SimpleNamespace:
    ns = types.SimpleNamespace
    return ns(
        TRAINER=ns(COMMA=ns(N_CTX=N_CTX, CTX_INIT=CTX_INIT, PREC="fp16", PROMPT_DEPTH=DEPTH, LAST_LAYER=1,
                            WEIGHT=WEIGHT)),  # fmt: skip
        INPUT=ns(SIZE=(TINY["image_size"], TINY["image_size"])),
        DATASET=ns(NAME=DATASET),
        MODEL=ns(BACKBONE=ns(NAME="ViT-B/16")),
    )


def build(off, clip_sd: dict[str, torch.Tensor]) -> nn.Module:
    """The reference's CustomCLIP in its fp16 mode, then CLIP cast to fp32 (see the
    module docs); the KP target recomputed by an fp32 frozen CLIP."""
    design = {"trainer": "COMMA", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0,
              "comma_length": N_CTX}  # fmt: skip
    coop = {"trainer": "CoOp", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0}
    off.comma.load_clip_to_cpu = lambda _cfg: off.clip.build_model(dict(clip_sd), design)
    off.comma.load_clip_to_cpu_ = lambda _cfg: off.clip.build_model(dict(clip_sd), coop)
    cuda_m, cuda_t = nn.Module.cuda, torch.Tensor.cuda
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        clip_model = off.comma.load_clip_to_cpu(None)
        assert clip_model.dtype == torch.float16
        torch.manual_seed(SEED)
        model = off.comma.CustomCLIP(cfg(), CLASSES, clip_model)
    finally:
        nn.Module.cuda, torch.Tensor.cuda = cuda_m, cuda_t
    model.image_encoder.float()
    model.text_encoder.float()
    model.text_encoder.dtype = torch.float32
    model.dtype = torch.float32
    frozen = off.clip.build_model(dict(clip_sd), coop).float()
    templ = off.comma.CUSTOM_TEMPLATES[DATASET]
    ids = torch.cat([off.comma.clip.tokenize(templ.format(c.replace("_", " "))) for c in CLASSES])
    with torch.no_grad():
        target = frozen.encode_text_last_features(ids, last_layer=1)
    model.ori_embedding = target
    model.prompt_learner.last_text_features = target
    # the trainer's selection (COMMA.build_model): names containing "prompt_learner"
    for name, p in model.named_parameters():
        p.requires_grad_("prompt_learner" in name)
    return model, ids


def dassl_checkpoint(model: nn.Module, grads: dict[str, torch.Tensor]) -> dict:
    """What Dassl's save_model writes: the whole state dict, the epoch, the SGD state
    (momentum buffers after a step per epoch with the fixture gradients; the trained
    values are restored afterwards), the ConstantWarmupScheduler state (holding its
    successor object, as Dassl's does) and val_result."""
    params = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    opt = torch.optim.SGD([p for p in params.values() if p.requires_grad], lr=LR, momentum=0.9,
                          weight_decay=5e-4)  # fmt: skip
    cos = CosineAnnealingLR(opt, T_max=float(EPOCH))
    sched = mmrl_gen.ConstantWarmup(opt, cos, warmup_epoch=1, cons_lr=1e-5)
    for _ in range(EPOCH):
        for n, p in params.items():
            if n in grads:
                p.grad = grads[n].clone().to(p.dtype)
        opt.step()
        sched.step()
    with torch.no_grad():
        for n, p in params.items():
            if n in saved:
                p.copy_(saved[n])
                p.grad = None
    sched_sd = sched.state_dict()
    sched_sd["verbose"] = False
    cos.verbose = False
    return {"state_dict": model.state_dict(), "epoch": EPOCH, "optimizer": opt.state_dict(),
            "scheduler": sched_sd, "val_result": None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True, help="hulianyuyy/COMMA @ 3584f31")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = TinyTokenizer()
    off = load_reference(args.reference_repo.resolve(), tok)

    g = torch.Generator().manual_seed(SEED)
    mmrl_gen.TINY = TINY  # its make_tiny_clip builds ref.CLIP(**TINY)
    clip_sd = mmrl_gen.make_tiny_clip(g)
    pixels = load_file(str(CLIP_FIX / "expected.safetensors"))["pixel_values"].contiguous()
    assert pixels.shape == (6, 3, 32, 32)
    labels = torch.tensor(LABELS, dtype=torch.int64)

    model, template_ids = build(off, clip_sd)
    pl = model.prompt_learner
    assert pl.ctx.dtype == torch.float16 and pl.proj.weight.dtype == torch.float16
    assert pl.compound_prompts_text.dtype == torch.float32
    names = ["prompt_learner.ctx", "prompt_learner.proj.weight", "prompt_learner.proj.bias",
             "prompt_learner.compound_prompts_text"]  # fmt: skip
    params = dict(model.named_parameters())
    # What the reference's optimiser sees: every prompt_learner tensor.
    declared = sum(p.numel() for p in params.values() if p.requires_grad)

    model.train()
    logits, score = model(pixels)
    ce = F.cross_entropy(logits, labels)
    loss = ce + WEIGHT * score
    loss.backward()
    assert logits.dtype == torch.float32, logits.dtype
    spread = logits.max(1).values - logits.min(1).values
    assert float(spread.min()) > 0.05, logits
    assert float(score) > 1e-3, score
    for n in names:
        assert params[n].grad is not None and float(params[n].grad.abs().max()) > 1e-6, n
    gen_grads = [n for n, p in params.items() if "projections_image" in n and p.grad is not None]
    assert not gen_grads, gen_grads  # the `.data` cut: generators get no gradient
    grads = {n: params[n].grad.detach().clone() for n in names}
    grads["prompt_learner.compound_prompts_image"] = params["prompt_learner.compound_prompts_image"].grad.clone()

    expected = {
        "pixel_values": pixels,
        "labels": labels,
        "input_ids": model.tokenized_prompts.clone(),
        "template_ids": template_ids,
        "logits": logits.detach().float().contiguous(),
        "loss_ce": ce.detach().reshape(1).float(),
        "loss_kp": score.detach().reshape(1).float(),
        "loss_total": loss.detach().reshape(1).float(),
        "vision_prompts": pl.compound_prompts_image.detach().float().clone(),
        "kp_target": model.ori_embedding[1].float().contiguous(),
    }
    for n in names:
        expected[f"params.{n}"] = params[n].detach().float().clone().contiguous()
        expected[f"grad.{n}"] = grads[n].float().contiguous()

    save_file(clip_sd, str(OUT / "tiny_clip.safetensors"), metadata={"format": "pt"})
    ckpt_dir = OUT / "MultiModalPromptLearner"
    ckpt_dir.mkdir(exist_ok=True)
    ckpt = ckpt_dir / f"model.pth.tar-{EPOCH}"
    torch.save(dassl_checkpoint(model, grads), str(ckpt))
    mmrl_gen.fix_torch_zip_serialization_id(ckpt)
    back = torch.load(str(ckpt), map_location="cpu", weights_only=False)["state_dict"]
    for n in names:
        assert torch.equal(back[n].float(), expected[f"params.{n}"]), n

    # The reference's own load path (COMMA.load_model: drop token_prefix/suffix, load
    # non-strictly) into a fresh model reproduces the logits.
    again, _ = build(off, clip_sd)
    sd = {k: v for k, v in back.items() if k not in ("prompt_learner.token_prefix", "prompt_learner.token_suffix")}
    again.load_state_dict(sd, strict=False)
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again(pixels)[0].float(), expected["logits"], atol=1e-5)

    save_file(dict(sorted((k, v.contiguous()) for k, v in expected.items())), str(OUT / "expected.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    effective = sum(params[n].numel() for n in names)
    write_json(
        OUT / "expected.json",
        {
            "clip": "tests/fixtures/comma/tiny_clip.safetensors (OpenAI names; text 64 x 4 layers, vision 128 x 4 "
            "layers, projection 32)",
            "tokenizer": "tests/fixtures/clip/tiny_hf/tokenizer.json; OpenAI padding (0 after EOT)",
            "classes": CLASSES,
            "dataset": DATASET,
            "template": off.comma.CUSTOM_TEMPLATES[DATASET],
            "prompts": [f"{CTX_INIT} {c.replace('_', ' ')}." for c in CLASSES],
            "labels": LABELS,
            "settings": {"n_ctx": N_CTX, "ctx_init": CTX_INIT, "prompt_depth": DEPTH, "weight": WEIGHT,
                         "last_layer": 1, "prec": "fp16 prompt learner, fp32 CLIP"},  # fmt: skip
            "trainable_params": {"declared": declared, "receiving_gradients": effective},
            "reference": "hulianyuyy/COMMA CustomCLIP.forward + COMMA.forward_backward's loss on the tiny CLIP "
            "(CPU); grad = d loss_total / d tensor, PyTorch layout, cast to f32",
        },
    )
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "manifest.json")
    write_json(
        OUT / "manifest.json",
        {
            "generator": "tests/scripts/gen_comma_fixtures.py",
            "seed": SEED,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "safetensors": safetensors.__version__,
            },
            "reference_code": f"hulianyuyy/COMMA@{off.commit}",
            "files": {str(p.relative_to(OUT)): sha256_file(p) for p in files},
        },
    )
    print(json.dumps({"ce": float(ce), "kp": float(score), "declared": declared, "effective": effective}))


if __name__ == "__main__":
    main()
