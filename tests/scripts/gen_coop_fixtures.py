#!/usr/bin/env python3
"""Generate the CoOp reference fixtures under tests/fixtures/coop/.

Purpose
-------
The Rust CoOp module (model/src/methods/coop.rs: prompt construction with the class
token at the end, middle or front, generic or class-specific context, the text tower
on embedded prompts, logits, gradients of the context; coop_io.rs: checkpoints) is
tested against values computed here. The reference is a short restatement of CoOp's
`PromptLearner`, `TextEncoder` and `CustomCLIP.forward` (KaiyangZhou/CoOp,
trainers/coop.py) on the small OpenAI-named CLIP of tests/scripts/mmrl_reference.py,
loaded with the tiny random CLIP tests/fixtures/clip/tiny_openai.safetensors. The Rust
tests never run Python: this script is run once by hand and its outputs are committed.

What it writes (tests/fixtures/coop/; manifest.json lists files + sha256):
  expected.safetensors  per case (see CASES): ctx (the fixed random context, f32),
                        input_ids [n_cls, 77] (int64, OpenAI padding: 0 after EOT),
                        name_lens (int64), text_features (unnormalised, CoOp's
                        text_encoder output), logits [2 images, n_cls], loss (CE for
                        `labels`, mean), grad_ctx (d loss / d ctx); plus pixel_values
                        [2, 3, 32, 32], labels, and the ctx_init case: init.input_ids,
                        init.ctx (token embeddings of "a photo of a").
                        Values from an f64 run (inputs are the f32 tensors).
  expected.json         classes, prompts, cases, keys, f32-vs-f64 differences
  prompt_learner/model.pth.tar-50
                        case "end"'s context in the Dassl checkpoint format CoOp's
                        trainer writes (torch.save of {state_dict: {ctx,
                        token_prefix, token_suffix}, epoch, optimizer (SGD state),
                        scheduler (Dassl's constant-warmup scheduler state, which
                        pickles the cosine scheduler object), val_result})
  manifest.json         versions, seed, file list + sha256, official-code check

How to run (from the repository root; CPU only, a few seconds):
    pip install -r tests/scripts/requirements.txt
    python3 tests/scripts/gen_coop_fixtures.py [--reference-repo /tmp/ref/coop]

--reference-repo DIR (optional): a checkout of KaiyangZhou/CoOp. Its trainers/coop.py
and clip/ package are imported (Dassl stubbed; clip.tokenize and the name-length
tokenizer redirected to the tiny vocabulary) and run on the same weights and contexts;
their logits, text features, loss, gradients, context initialisation from CTX_INIT and
prompt-learner state-dict names are compared with the reference here and recorded in
manifest.json ("official_code_check"). Nothing is copied from that code.

The output is deterministic (seeded; torch.save's random serialization_id is fixed).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import platform
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import CosineAnnealingLR
from transformers import CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mmrl_reference as ref  # noqa: E402
from gen_mmrl_fixtures import ConstantWarmup, fix_torch_zip_serialization_id  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

SEED = 20250402
REPO = Path(__file__).resolve().parents[2]
CLIP_FIX = REPO / "tests" / "fixtures" / "clip"
OUT = REPO / "tests" / "fixtures" / "coop"
CLIP_FILE = CLIP_FIX / "tiny_openai.safetensors"
CONTEXT_LENGTH = 77

# Class names of different token lengths (1, 1, 2 and 4 tokens in the tiny vocabulary)
# so that "middle" and "front" move a different number of tokens per class.
CLASSES = ["cat", "dog", "red_car", "café"]
IMAGE_ROWS = [1, 5]  # rows of tests/fixtures/clip/expected.safetensors pixel_values
IMAGES = ["rgb.jpg", "wide.jpg"]
LABELS = [2, 0]
CTX_INIT = "a photo of a"
CASES = [
    {"name": "end", "n_ctx": 4, "csc": False, "position": "end"},
    {"name": "end_csc", "n_ctx": 4, "csc": True, "position": "end"},
    {"name": "middle", "n_ctx": 5, "csc": False, "position": "middle"},  # odd: halves 2 + 3
    {"name": "middle_csc", "n_ctx": 4, "csc": True, "position": "middle"},
    {"name": "front_csc", "n_ctx": 3, "csc": True, "position": "front"},
]
DASSL_CASE = "end"
DASSL_EPOCH = 50
CTX_STD = 0.3  # larger than CoOp's 0.02 so the context visibly moves the features


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------- tokenisation


class TinyTokenizer:
    """OpenAI clip.tokenize / SimpleTokenizer.encode on the tiny vocabulary."""

    def __init__(self) -> None:
        self.tok = CLIPTokenizer.from_pretrained(str(CLIP_FIX / "tiny_hf"))
        self.bos, self.eos = self.tok.bos_token_id, self.tok.eos_token_id
        assert (self.bos, self.eos, len(self.tok)) == (2512, 2513, 2514)

    def tokenize(self, text: str) -> torch.Tensor:
        """[1, 77] ids, 0 after EOT (clip.tokenize)."""
        ids = self.tok(text)["input_ids"]
        assert len(ids) <= CONTEXT_LENGTH and ids[0] == self.bos and ids[-1] == self.eos
        return torch.tensor([ids + [0] * (CONTEXT_LENGTH - len(ids))], dtype=torch.int64)

    def encode(self, text: str) -> list[int]:
        """BPE ids without SOS/EOT (SimpleTokenizer.encode)."""
        return self.tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------- CoOp, restated


def coop_prompts(prefix: str, classes: list[str]) -> list[str]:
    """CoOp: prompt_prefix + " " + name + "." with "_" -> " " in the name."""
    return [f"{prefix} {c.replace('_', ' ')}." for c in classes]


def build_prompts(clip: ref.CLIP, ctx: torch.Tensor, ids: torch.Tensor, name_lens: list[int], position: str):
    """PromptLearner.forward: [n_cls, 77, width] embedded prompts. SOS embedding, the
    context (generic [n_ctx, w] expanded to every class, or class-specific), the class
    tokens and the rest (".", EOT, padding) arranged by the class token position."""
    n_cls = ids.shape[0]
    n_ctx = ctx.shape[-2]
    with torch.no_grad():
        emb = clip.token_embedding(ids)
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx :]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    rows = []
    for i, n in enumerate(name_lens):
        cls_i, rest_i = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
        if position == "middle":
            half = n_ctx // 2
            parts = [prefix[i : i + 1], ctx[i : i + 1, :half], cls_i, ctx[i : i + 1, half:], rest_i]
        elif position == "front":
            parts = [prefix[i : i + 1], cls_i, ctx[i : i + 1], rest_i]
        else:
            raise ValueError(position)
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


def text_encoder(clip: ref.CLIP, prompts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """TextEncoder.forward: + positional embedding, causal transformer, ln_final, the
    row at argmax(ids) (EOT), @ text_projection."""
    x = prompts + clip.positional_embedding
    mask = ref.causal_mask(x.shape[1], x.dtype)
    for block in clip.transformer.resblocks:
        x = block(x, mask)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ clip.text_projection


def run_case(clip_sd, ctx32, ids, name_lens, position, pixels, labels, dtype):
    clip = ref.CLIP.from_openai_state_dict(clip_sd).to(dtype)
    for p in clip.parameters():
        p.requires_grad_(False)
    ctx = torch.nn.Parameter(ctx32.to(dtype).clone())
    text = text_encoder(clip, build_prompts(clip, ctx, ids, name_lens, position), ids)
    image = clip.encode_image(pixels.to(dtype))
    logits = clip.logit_scale.exp() * ref.normalize(image) @ ref.normalize(text).T
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return {
        "text_features": text.detach(),
        "logits": logits.detach(),
        "loss": loss.detach().reshape(1),
        "grad_ctx": ctx.grad.detach(),
    }


# ------------------------------------------------------------ Dassl checkpoint


def dassl_checkpoint(ctx: torch.Tensor, prefix: torch.Tensor, suffix: torch.Tensor, grad: torch.Tensor) -> dict:
    """What CoOp's trainer saves for `prompt_learner` (Dassl save_model): the prompt
    learner's state_dict (ctx parameter, token_prefix/token_suffix buffers), epoch,
    the SGD state (momentum buffer after a few steps with the fixture gradient),
    the warmup scheduler state (holding the cosine scheduler object) and val_result.
    The context is restored afterwards, so the file holds the fixture value."""
    param = torch.nn.Parameter(ctx.clone())
    opt = torch.optim.SGD([param], lr=0.002, momentum=0.9, weight_decay=5e-4)
    cos = CosineAnnealingLR(opt, T_max=float(DASSL_EPOCH))
    sched = ConstantWarmup(opt, cos, warmup_epoch=1, cons_lr=1e-5)
    for _epoch in range(3):
        param.grad = grad.clone()
        opt.step()
        sched.step()
    with torch.no_grad():
        param.copy_(ctx)
    param.grad = None
    sched_sd = sched.state_dict()
    sched_sd["verbose"] = False
    cos.verbose = False
    state = OrderedDict([("ctx", param.data), ("token_prefix", prefix.clone()), ("token_suffix", suffix.clone())])
    return {"state_dict": state, "epoch": DASSL_EPOCH, "optimizer": opt.state_dict(), "scheduler": sched_sd,
            "val_result": None}  # fmt: skip


# ------------------------------------------------------- official code (optional)


def check_against_official_code(repo_dir: Path, clip_sd, tok: TinyTokenizer, cases, pixels, labels, ours32) -> dict:
    """Run CoOp's own CustomCLIP (trainers/coop.py, clip/model.py) on the same weights
    and contexts; compare with the f32 reference run."""
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
    off = importlib.import_module("trainers.coop")
    off.clip.tokenize = tok.tokenize  # tiny vocabulary
    off._tokenizer = types.SimpleNamespace(encode=tok.encode)

    def build_clip():
        sd = {k: v.clone() for k, v in clip_sd.items()}
        model = off.clip.build_model(dict(sd))  # rounds weights to fp16 ...
        model.float()
        model.load_state_dict(sd)  # ... so put the exact f32 values back
        return model.eval()

    def cfg(n_ctx, csc, position, ctx_init=""):
        return types.SimpleNamespace(
            TRAINER=types.SimpleNamespace(COOP=types.SimpleNamespace(
                N_CTX=n_ctx, CTX_INIT=ctx_init, CSC=csc, CLASS_TOKEN_POSITION=position, PREC="fp32")),
            INPUT=types.SimpleNamespace(SIZE=(32, 32)),
        )  # fmt: skip

    out = {"cases": {}}
    for case in cases:
        name = case["name"]
        torch.manual_seed(0)
        model = off.CustomCLIP(cfg(case["n_ctx"], case["csc"], case["position"]), CLASSES, build_clip())
        for pname, p in model.named_parameters():
            p.requires_grad_("prompt_learner" in pname)
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
        pl = model.prompt_learner
        assert list(pl.state_dict().keys()) == ["ctx", "token_prefix", "token_suffix"]
        assert torch.equal(pl.tokenized_prompts, case["ids"])
        assert pl.name_lens == case["name_lens"], (pl.name_lens, case["name_lens"])
        with torch.no_grad():
            pl.ctx.copy_(case["ctx"])
        logits = model(pixels)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        with torch.no_grad():
            text = model.text_encoder(pl(), pl.tokenized_prompts)
        r = ours32[name]
        out["cases"][name] = {
            "logits": float((logits.detach() - r["logits"]).abs().max()),
            "text_features": float((text - r["text_features"]).abs().max()),
            "loss": float((loss.detach().reshape(1) - r["loss"]).abs().max()),
            "grad_ctx": float((pl.ctx.grad - r["grad_ctx"]).abs().max()),
        }
        for k, d in out["cases"][name].items():
            assert d < 1e-5, (name, k, d)
        if name == DASSL_CASE:
            out["prompt_learner_state_dict"] = {k: list(v.shape) for k, v in pl.state_dict().items()}
    model = off.CustomCLIP(cfg(16, False, "end", CTX_INIT), CLASSES, build_clip())
    out["ctx_init_n_ctx"] = model.prompt_learner.n_ctx
    out["ctx_init_prompt_0"] = model.prompt_learner.tokenized_prompts[0].tolist()[:10]
    out["ctx_init_vectors_equal"] = bool(torch.equal(model.prompt_learner.ctx.detach(), cases[0]["init_ctx"]))
    assert out["ctx_init_vectors_equal"]
    return out


# -------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prompt_learner").mkdir(exist_ok=True)

    clip_sd = load_file(str(CLIP_FILE))
    clip_expected = load_file(str(CLIP_FIX / "expected.safetensors"))
    all_images = json.loads((CLIP_FIX / "expected.json").read_text())["images"]
    assert [all_images[i] for i in IMAGE_ROWS] == IMAGES
    pixels = clip_expected["pixel_values"][IMAGE_ROWS].contiguous()
    assert pixels.shape == (2, 3, 32, 32)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    tok = TinyTokenizer()
    name_lens = [len(tok.encode(c.replace("_", " "))) for c in CLASSES]
    assert name_lens == [1, 1, 2, 4], name_lens

    width = clip_sd["token_embedding.weight"].shape[1]
    g = torch.Generator().manual_seed(SEED)
    expected: dict[str, torch.Tensor] = {
        "pixel_values": pixels,
        "labels": labels,
    }
    f32_vs_f64: dict[str, dict[str, float]] = {}
    ours32 = {}
    cases_json = []
    for case in CASES:
        name, n_ctx = case["name"], case["n_ctx"]
        shape = (len(CLASSES), n_ctx, width) if case["csc"] else (n_ctx, width)
        ctx = (CTX_STD * torch.randn(shape, generator=g)).contiguous()
        prompts = coop_prompts(" ".join(["X"] * n_ctx), CLASSES)
        ids = torch.cat([tok.tokenize(p) for p in prompts])
        out64 = run_case(clip_sd, ctx, ids, name_lens, case["position"], pixels, labels, torch.float64)
        out32 = run_case(clip_sd, ctx, ids, name_lens, case["position"], pixels, labels, torch.float32)
        ours32[name] = out32
        f32_vs_f64[name] = {k: float((out32[k].double() - out64[k]).abs().max()) for k in out64}
        spread = out64["logits"].max(1).values - out64["logits"].min(1).values
        assert float(spread.min()) > 0.05, (name, out64["logits"])
        assert float(out64["grad_ctx"].abs().max()) > 1e-4, name
        expected[f"{name}.ctx"] = ctx
        expected[f"{name}.input_ids"] = ids
        expected[f"{name}.name_lens"] = torch.tensor(name_lens, dtype=torch.int64)
        for k, v in out64.items():
            expected[f"{name}.{k}"] = v.float().contiguous()
        case.update(ctx=ctx, ids=ids, name_lens=name_lens)
        cases_json.append({**{k: case[k] for k in ("name", "n_ctx", "csc", "position")}, "prompts": prompts})

    # The class token position matters (a wrong arrangement would show).
    d = float((expected["middle_csc.logits"] - expected["end_csc.logits"]).abs().max())
    assert d > 1e-3, d

    # ctx_init: the context starts as the token embeddings of CTX_INIT's words.
    init_prompts = coop_prompts(CTX_INIT, CLASSES)
    init_ids = torch.cat([tok.tokenize(p) for p in init_prompts])
    n_init = len(CTX_INIT.split(" "))
    init_ctx = clip_sd["token_embedding.weight"][tok.tokenize(CTX_INIT)[0, 1 : 1 + n_init]].clone()
    assert torch.equal(init_ctx, clip_sd["token_embedding.weight"][init_ids[0, 1 : 1 + n_init]])
    expected["init.input_ids"] = init_ids
    expected["init.ctx"] = init_ctx.contiguous()
    CASES[0]["init_ctx"] = init_ctx

    save_file(dict(sorted(expected.items())), str(OUT / "expected.safetensors"), metadata={"format": "pt"})

    # Dassl checkpoint of case DASSL_CASE.
    case = next(c for c in CASES if c["name"] == DASSL_CASE)
    emb = clip_sd["token_embedding.weight"][case["ids"]]
    ckpt = dassl_checkpoint(case["ctx"], emb[:, :1], emb[:, 1 + case["n_ctx"] :], expected[f"{DASSL_CASE}.grad_ctx"])
    ckpt_path = OUT / "prompt_learner" / f"model.pth.tar-{DASSL_EPOCH}"
    torch.save(ckpt, str(ckpt_path))
    fix_torch_zip_serialization_id(ckpt_path)
    back = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    assert torch.equal(back["state_dict"]["ctx"], case["ctx"]) and back["epoch"] == DASSL_EPOCH

    official = None
    if args.reference_repo is not None:
        official = check_against_official_code(args.reference_repo.resolve(), clip_sd, tok, CASES, pixels, labels,
                                               ours32)  # fmt: skip

    write_json(
        OUT / "expected.json",
        {
            "clip": "tests/fixtures/clip/tiny_openai.safetensors (text: width 64, 2 layers, 1 head)",
            "tokenizer": "tests/fixtures/clip/tiny_hf/tokenizer.json; OpenAI padding (0 after EOT)",
            "classes": CLASSES,
            "name_lens": name_lens,
            "images": IMAGES,
            "pixel_values": f"tests/fixtures/clip/expected.safetensors pixel_values rows {IMAGE_ROWS}",
            "labels": LABELS,
            "ctx_init": CTX_INIT,
            "init_prompts": init_prompts,
            "cases": cases_json,
            "dassl_checkpoint": {"file": f"prompt_learner/model.pth.tar-{DASSL_EPOCH}", "case": DASSL_CASE},
            "reference": "f64 run of the restated CoOp (PromptLearner, TextEncoder, CustomCLIP.forward) on f32 "
            "inputs; text_features unnormalised; logits = exp(logit_scale) * cos; loss = mean CE(logits, labels); "
            "grad_ctx = d loss / d ctx (ctx's own shape)",
            "f32_vs_f64_max_abs_diff": f32_vs_f64,
        },
    )
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "manifest.json")
    write_json(
        OUT / "manifest.json",
        {
            "generator": "tests/scripts/gen_coop_fixtures.py",
            "seed": SEED,
            "ctx_std": CTX_STD,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "safetensors": safetensors.__version__,
            },
            "reference_code": "KaiyangZhou/CoOp trainers/coop.py (PromptLearner, TextEncoder, CustomCLIP)",
            "official_code_check": official,
            "files": {str(p.relative_to(OUT)): sha256_file(p) for p in files},
        },
    )
    print("f32 vs f64:", json.dumps(f32_vs_f64))
    if official is not None:
        print("official code check:", json.dumps(official["cases"]))


if __name__ == "__main__":
    main()
