#!/usr/bin/env python3
"""Generate the Multi-Modal Adapter reference fixtures under tests/fixtures/mm_adapter/.

Purpose
-------
The Rust Multi-Modal Adapter (model/src/methods/mm_adapter.rs: the masked attention
adapter over CLIP's final features, the blend and the logits; mm_adapter_io.rs: the
reference's checkpoints) is tested against values computed here by the authors' own
code, dqmis/clip-mma: `CLIPTransformerAdapterText` (fomo/models/clip/
clip_transformer_adapter_text.py) with its `MaskedMultiheadAttentionDownsampled`,
from master (additive +1 cross-modal mask, two-layer samplers) and from the branch
feat/evaluate_overfitting_on_noise (cross-only -inf mask, single-Linear samplers).
Their CLIP is the tiny random OpenAI-named CLIP tests/fixtures/clip/
tiny_openai.safetensors (tests/scripts/mmrl_reference.py's CLIP, whose features
equal transformers'; projection 48), put in place of the ViT-B/16 the reference
downloads; `clip.tokenize` is redirected to the tiny vocabulary. The adapter is built
by the reference's own class with embed_dim = 48 (its constructor argument; the
reference passes nothing and gets 512) and PyTorch's initialisation under SEED.
Everything else runs as the reference runs it: `precompute_prompt_features` with the
template filled by `build_label_prompts`, `model(images)`, `nn.CrossEntropyLoss`,
`loss.backward()`, one step of the reference's optimiser
(`torch.optim.Adam(lr=0.01, weight_decay=1e-4)`, fomo/pipelines/train.py), and its
checkpoint written by its own `save_checkpoint` (fomo/pipelines/utils/utils.py).
The Rust tests never run Python: this script is run once by hand and its outputs are
committed.

What it writes (tests/fixtures/mm_adapter/; manifest.json lists files + sha256):
  expected.safetensors  pixel_values [6, 3, 32, 32] (tests/fixtures/clip), labels,
                        input_ids [5, 77] (the filled template, OpenAI padding), and per
                        variant V in {master, cross-only}: V.logits [6, 5], V.loss,
                        V.grad.<reference key> (d loss / d each adapter tensor, PyTorch
                        layout), V.step.<reference key> (each adapter tensor after one
                        Adam step). f32, as the reference runs on CPU.
  expected.json         classes, template, prompts, labels, parameter counts, keys
  <V>/model_best.pth.tar
                        the reference checkpoint: {epoch, state_dict (the whole model:
                        _clip.*, image_encoder.*, logit_scale, adapter.*), best_acc1,
                        optimizer} with the adapter as initialised (before the step)
  manifest.json         versions, seed, reference commits, file list + sha256

How to run (from the repository root; CPU only, a few seconds):
    pip install -r tests/scripts/requirements.txt
    git clone https://github.com/dqmis/clip-mma /tmp/ref/clip-mma
    git -C /tmp/ref/clip-mma worktree add /tmp/ref/clip-mma-branch feat/evaluate_overfitting_on_noise
    python3 tests/scripts/gen_mm_adapter_fixtures.py \\
        --reference-repo /tmp/ref/clip-mma --reference-branch-repo /tmp/ref/clip-mma-branch

The output is deterministic (seeded; torch.save's random serialization_id is fixed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mmrl_reference as ref  # noqa: E402
from gen_coop_fixtures import TinyTokenizer, sha256_file, write_json  # noqa: E402
from gen_mmrl_fixtures import fix_torch_zip_serialization_id  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

SEED = 20241127
REPO = Path(__file__).resolve().parents[2]
CLIP_FIX = REPO / "tests" / "fixtures" / "clip"
OUT = REPO / "tests" / "fixtures" / "mm_adapter"
CLIP_FILE = CLIP_FIX / "tiny_openai.safetensors"
# Verbatim into the template, as the reference does (its labels are torchvision's
# names); CoOp-style names with "_" are read with spaces by both sides.
CLASSES = ["cat", "dog", "red car", "airplane", "café"]
TEMPLATE = "a photo of a {}."
LABELS = [2, 0, 4, 1, 3, 2]
LR, WEIGHT_DECAY = 0.01, 1e-4
VARIANTS = {"master": "reference_repo", "cross-only": "reference_branch_repo"}


def load_reference(repo: Path, tok: TinyTokenizer) -> types.SimpleNamespace:
    """The reference's adapter model class, its attention module and its utils, imported
    from `repo` without running the fomo package __init__ files (they import every model
    and wandb); `clip` (OpenAI's package, which downloads) is a stub whose tokenize is
    the tiny vocabulary's."""
    for name in [m for m in sys.modules if m == "fomo" or m.startswith("fomo.") or m in ("clip", "clip.clip")]:
        del sys.modules[name]
    clip_pkg = types.ModuleType("clip")
    clip_mod = types.ModuleType("clip.clip")
    clip_mod.tokenize = tok.tokenize
    clip_pkg.clip = clip_mod
    sys.modules["clip"], sys.modules["clip.clip"] = clip_pkg, clip_mod
    # clip_base.py imports PIL's Image and torchvision's Compose for type hints only.
    for name, attr in [("PIL.Image", "Image"), ("torchvision.transforms", "Compose")]:
        try:
            importlib.import_module(name)
        except ImportError:
            parent, child = name.split(".")
            sys.modules.setdefault(parent, types.ModuleType(parent))
            stub = types.ModuleType(name)
            setattr(stub, attr, type(attr, (), {}))
            setattr(sys.modules[parent], child, stub)
            sys.modules[name] = stub
    for pkg in ["fomo", "fomo.models", "fomo.models.clip", "fomo.models.clip.modules", "fomo.pipelines",
                "fomo.pipelines.utils"]:  # fmt: skip
        m = types.ModuleType(pkg)
        m.__path__ = [str(repo / pkg.replace(".", "/"))]
        sys.modules[pkg] = m

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, repo / (name.replace(".", "/") + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    load("fomo.models.clip.modules.masked_multi_head_attention")
    attn = load("fomo.models.clip.modules.masked_multi_head_attention_downsampled")
    model = load("fomo.models.clip.clip_transformer_adapter_text")
    utils = load("fomo.pipelines.utils.utils")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return types.SimpleNamespace(model=model, attn=attn, utils=utils, commit=commit.strip())


def build_model(off, clip: ref.CLIP, embed_dim: int) -> nn.Module:
    """CLIPTransformerAdapterText around `clip`: its __init__ minus the download
    (ClipBase._load_clip_to_cpu), the rest as written there."""
    cls = off.model.CLIPTransformerAdapterText
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    m._root, m._clip, m._transforms = None, clip, None
    m._precomputed_prompt_features = None
    m.image_encoder = m._clip.visual
    m.logit_scale = m._clip.logit_scale
    m.adapter = off.attn.MaskedMultiheadAttentionDownsampled(embed_dim=embed_dim)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True, help="dqmis/clip-mma at master")
    parser.add_argument("--reference-branch-repo", type=Path, required=True,
                        help="dqmis/clip-mma at feat/evaluate_overfitting_on_noise")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)

    clip_sd = load_file(str(CLIP_FILE))
    pixels = load_file(str(CLIP_FIX / "expected.safetensors"))["pixel_values"].contiguous()
    assert pixels.shape == (6, 3, 32, 32)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    tok = TinyTokenizer()
    embed_dim = clip_sd["text_projection"].shape[1]

    expected: dict[str, torch.Tensor] = {"pixel_values": pixels, "labels": labels}
    info: dict[str, dict] = {}
    commits = {}
    for variant, arg in VARIANTS.items():
        off = load_reference(getattr(args, arg).resolve(), tok)
        commits[variant] = off.commit
        prompts = off.utils.build_label_prompts(CLASSES, TEMPLATE)
        expected["input_ids"] = torch.cat([tok.tokenize(p) for p in prompts])

        torch.manual_seed(SEED)
        clip = ref.CLIP.from_openai_state_dict(clip_sd)
        model = build_model(off, clip, embed_dim)
        # fomo/pipelines/train.py _configure_trainable_params: names containing "adapter".
        for name, p in model.named_parameters():
            p.requires_grad = any(k in name for k in model.learnable_param_names)
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(n.startswith("adapter.") for n in trained), list(trained)
        initial = {n: p.detach().clone() for n, p in trained.items()}
        optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=LR,
                                     weight_decay=WEIGHT_DECAY)  # fmt: skip

        model.train()
        model.precompute_prompt_features(prompts)
        optimizer.zero_grad()
        logits = model(pixels).squeeze(-1)
        loss = nn.CrossEntropyLoss()(logits, labels)
        loss.backward()
        spread = logits.max(1).values - logits.min(1).values
        assert float(spread.min()) > 0.05, logits
        expected[f"{variant}.logits"] = logits.detach().contiguous()
        expected[f"{variant}.loss"] = loss.detach().reshape(1)
        for n, p in trained.items():
            assert float(p.grad.abs().max()) > 1e-6, n
            expected[f"{variant}.grad.{n}"] = p.grad.detach().clone().contiguous()
        optimizer.step()
        for n, p in trained.items():
            expected[f"{variant}.step.{n}"] = p.detach().clone().contiguous()

        # The checkpoint as the reference writes it (train.py: save_checkpoint with
        # is_best), with the adapter as it was before the step.
        with torch.no_grad():
            for n, p in trained.items():
                p.copy_(initial[n])
        (OUT / variant).mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            off.utils.save_checkpoint(
                {"epoch": 1, "state_dict": model.state_dict(), "best_acc1": 40.0,
                 "optimizer": optimizer.state_dict()},  # fmt: skip
                tmp,
                is_best=True,
            )
            best = OUT / variant / "model_best.pth.tar"
            best.write_bytes((Path(tmp) / "model_best.pth.tar").read_bytes())
        fix_torch_zip_serialization_id(best)
        back = torch.load(str(best), map_location="cpu", weights_only=False)["state_dict"]
        for n in trained:
            assert torch.equal(back[n], initial[n]), n
        # Its logits reproduce from the checkpoint (the reference reloads it strictly).
        again = build_model(off, ref.CLIP.from_openai_state_dict(clip_sd), embed_dim)
        again.load_state_dict(back, strict=True)
        again.precompute_prompt_features(prompts)
        with torch.no_grad():
            assert torch.allclose(again(pixels), logits, atol=1e-5)
        info[variant] = {
            "reference_commit": off.commit,
            "trainable_params": sum(p.numel() for p in trained.values()),
            "trainable_params_at_512": sum(
                p.numel() for p in off.attn.MaskedMultiheadAttentionDownsampled(embed_dim=512).parameters()
            ),
            "adapter_keys": sorted(trained),
            "checkpoint_keys": len(back),
        }

    assert info["master"]["trainable_params_at_512"] == 107_712, info
    assert info["cross-only"]["trainable_params_at_512"] == 197_760, info
    d = float((expected["master.logits"] - expected["cross-only.logits"]).abs().max())
    assert d > 1e-3, d
    save_file(dict(sorted(expected.items())), str(OUT / "expected.safetensors"), metadata={"format": "pt"})
    write_json(
        OUT / "expected.json",
        {
            "clip": "tests/fixtures/clip/tiny_openai.safetensors (projection 48, logit_scale 2.709)",
            "tokenizer": "tests/fixtures/clip/tiny_hf/tokenizer.json; OpenAI padding (0 after EOT)",
            "classes": CLASSES,
            "template": TEMPLATE,
            "prompts": off.utils.build_label_prompts(CLASSES, TEMPLATE),
            "labels": LABELS,
            "pixel_values": "tests/fixtures/clip/expected.safetensors pixel_values (all 6 rows)",
            "optimizer": {"name": "Adam", "lr": LR, "weight_decay": WEIGHT_DECAY},
            "variants": info,
            "reference": "dqmis/clip-mma CLIPTransformerAdapterText.forward (f32, CPU) on the tiny CLIP; "
            "loss = nn.CrossEntropyLoss; grad = d loss / d each adapter tensor; step = after one "
            "torch.optim.Adam step",
        },
    )
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "manifest.json")
    write_json(
        OUT / "manifest.json",
        {
            "generator": "tests/scripts/gen_mm_adapter_fixtures.py",
            "seed": SEED,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "safetensors": safetensors.__version__,
            },
            "reference_code": {
                "master": f"dqmis/clip-mma@{commits['master']}",
                "cross-only": f"dqmis/clip-mma@{commits['cross-only']} (feat/evaluate_overfitting_on_noise)",
            },
            "files": {str(p.relative_to(OUT)): sha256_file(p) for p in files},
        },
    )
    print(json.dumps({v: {"loss": float(expected[f"{v}.loss"])} for v in VARIANTS}))


if __name__ == "__main__":
    main()
