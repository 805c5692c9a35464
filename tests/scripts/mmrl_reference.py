#!/usr/bin/env python3
"""A small, readable PyTorch reference of CLIP (OpenAI naming) + MMRL.

MMRL: "Multi-Modal Representation Learning for Vision-Language Models"
(Guo & Gu, CVPR 2025). Written from the MMRL paper and the project's MMRL spec,
independently of the official code (yunncheng/MMRL); the official code was only read
to check names and the checkpoint layout.

Used by tests/scripts/gen_mmrl_fixtures.py to write tests/fixtures/mmrl/, which the
Rust parity tests read. Running this file directly checks the CLIP part against
Hugging Face transformers on the existing CLIP fixtures:

    python3 tests/scripts/mmrl_reference.py          # from the repository root

What MMRL adds to a frozen CLIP (spec sections 2-5):
  * R, a shared [K, d_r] matrix of "space tokens" (trainable);
  * for every injected layer j (1-based block numbers, a contiguous range
    J..L), two aligners Linear(d_r -> vision width) and Linear(d_r -> text width)
    turn R into K vision tokens and K text tokens (trainable, one pair per layer);
  * vision: at the input of block J the K tokens are inserted right after CLS;
    at the input of each later injected block they REPLACE positions 1..K;
  * text: same, right after SOS; the causal mask simply follows the sequence
    length (77 + K from block J on) and the EOT row moves from e to e + K;
  * the inserted tokens get no positional embedding and no ln_pre;
  * class feature = ln_post(CLS) @ proj (frozen); rep feature =
    mean_k(ln_post(rep token k)) @ proj_rep (proj_rep trainable, [vision width, embed]);
  * logits = 100 * normalised image feature @ normalised text feature^T;
    fused = alpha * class logits + (1 - alpha) * rep logits;
  * loss = alpha*CE(class) + (1-alpha)*CE(rep)
           + lam*(1 - mean cos(class feats, frozen-CLIP image feats))
           + lam*(1 - mean cos(MMRL text feats, frozen-CLIP text feats)).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- CLIP


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x)). Batch-first tensors."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        # batch_first only changes the call convention, not the parameter names
        # (in_proj_weight [3w, w], in_proj_bias [3w], out_proj.{weight,bias}).
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


def causal_mask(n: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """Additive causal mask: -inf strictly above the diagonal, 0 elsewhere."""
    return torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, embed_dim: int):
        super().__init__()
        self.grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(self.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        self.transformer = Transformer(width, layers, heads=width // 64)
        self.ln_post = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))  # x @ proj

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + grid^2, width]: patches, CLS first, + pos, ln_pre."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # [B, w, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, w], row-major over the grid
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        return self.ln_pre(x)


class CLIP(nn.Module):
    """OpenAI CLIP (ViT image tower). Parameter names follow OpenAI's state dict."""

    def __init__(
        self,
        embed_dim: int,
        image_size: int,
        patch_size: int,
        vision_width: int,
        vision_layers: int,
        context_length: int,
        vocab_size: int,
        text_width: int,
        text_layers: int,
    ):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_size, patch_size, vision_width, vision_layers, embed_dim)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, text_width))
        self.transformer = Transformer(text_width, text_layers, heads=text_width // 64)
        self.ln_final = nn.LayerNorm(text_width, eps=1e-5)
        self.text_projection = nn.Parameter(torch.zeros(text_width, embed_dim))  # x @ text_projection
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @staticmethod
    def from_openai_state_dict(sd: dict[str, torch.Tensor]) -> "CLIP":
        """Infer the architecture from the tensor shapes (heads = width / 64, as OpenAI)."""

        def n_blocks(prefix: str) -> int:
            return len({k.split(".")[len(prefix.split("."))] for k in sd if k.startswith(prefix + ".")})

        vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        model = CLIP(
            embed_dim=sd["text_projection"].shape[1],
            image_size=patch * grid,
            patch_size=patch,
            vision_width=vision_width,
            vision_layers=n_blocks("visual.transformer.resblocks"),
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            text_width=sd["ln_final.weight"].shape[0],
            text_layers=n_blocks("transformer.resblocks"),
        )
        model.load_state_dict({k: v.reshape(()) if k == "logit_scale" else v for k, v in sd.items()}, strict=True)
        return model.eval()

    # ---- frozen CLIP forward passes (no rep tokens)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.visual.stem(pixels)
        for block in self.visual.transformer.resblocks:
            x = block(x)
        return self.visual.ln_post(x[:, 0, :]) @ self.visual.proj

    def text_stem(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(input_ids) + self.positional_embedding

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.text_stem(input_ids)
        mask = causal_mask(x.shape[1], x.dtype, x.device)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        eot = eot_index(input_ids)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


def eot_index(input_ids: torch.Tensor) -> torch.Tensor:
    """Position of the first EOT. EOT has the largest id and torch.argmax returns the
    first maximal position, so this equals OpenAI's `text.argmax(dim=-1)`."""
    return input_ids.argmax(dim=-1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- MMRL


def default_rep_layers(n_layers: int) -> list[int]:
    """1-based blocks max(1, L//2)..L (for ViT-B/16, L = 12: blocks 6..12)."""
    return list(range(max(1, n_layers // 2), n_layers + 1))


@dataclass
class MMRLConfig:
    n_rep_tokens: int = 5  # K
    rep_dim: int = 512  # d_r
    rep_layers: list[int] = field(default_factory=lambda: list(range(6, 13)))  # 1-based
    alpha: float = 0.7
    reg_weight: float = 1.0  # lambda
    logit_scale: float = 100.0  # hard-coded in MMRL (not exp(clip.logit_scale))


class MMRL(nn.Module):
    """Trainable part of MMRL around a frozen CLIP.

    Own parameter names (the official checkpoint prefixes them, see
    gen_mmrl_fixtures.py): compound_rep_tokens [K, d_r];
    r2vproj.{i}.{weight,bias} (Linear d_r -> vision width), r2tproj.{i}.{weight,bias}
    (Linear d_r -> text width), i = 0 .. len(rep_layers)-1; proj_rep [vision width, embed].
    """

    def __init__(self, clip: CLIP, cfg: MMRLConfig):
        super().__init__()
        layers = list(cfg.rep_layers)
        n_v = len(clip.visual.transformer.resblocks)
        n_t = len(clip.transformer.resblocks)
        assert layers == list(range(layers[0], layers[-1] + 1)), "rep layers must be a contiguous range"
        assert 1 <= layers[0] and layers[-1] <= min(n_v, n_t), layers
        self.cfg = cfg
        self.clip = clip
        for p in self.clip.parameters():
            p.requires_grad_(False)
        v_width = clip.visual.conv1.weight.shape[0]
        t_width = clip.ln_final.weight.shape[0]
        embed = clip.visual.proj.shape[1]
        k, d_r = cfg.n_rep_tokens, cfg.rep_dim
        # init as in the spec (R ~ N(0, 0.02), one Linear cloned per layer, random proj_rep);
        # the fixture generator overwrites all of these with its own random values.
        self.compound_rep_tokens = nn.Parameter(0.02 * torch.randn(k, d_r))
        v0, t0 = nn.Linear(d_r, v_width), nn.Linear(d_r, t_width)
        self.r2vproj = nn.ModuleList([_clone_linear(v0) for _ in layers])
        self.r2tproj = nn.ModuleList([_clone_linear(t0) for _ in layers])
        self.proj_rep = nn.Parameter(torch.randn(v_width, embed) * v_width**-0.5)

    # ---- representation tokens

    def rep_tokens(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per injected layer: (vision tokens [K, v_width], text tokens [K, t_width]).
        Every layer reads the same R; nothing is chained between layers."""
        r = self.compound_rep_tokens
        return [lin(r) for lin in self.r2vproj], [lin(r) for lin in self.r2tproj]

    def _inject(self, x: torch.Tensor, tokens: torch.Tensor, first: bool) -> torch.Tensor:
        """Put K tokens at positions 1..K (after CLS / SOS). At the first injected
        layer they are inserted (sequence grows by K); later they replace 1..K."""
        k = self.cfg.n_rep_tokens
        tokens = tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
        rest = x[:, 1:, :] if first else x[:, 1 + k :, :]
        return torch.cat([x[:, :1, :], tokens, rest], dim=1)

    # ---- image path

    def encode_image(self, pixels: torch.Tensor, vis_tokens: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns class_features / rep_features (not normalised) and the hidden state
        at the input of the first injected block (before the insertion)."""
        visual = self.clip.visual
        layers = self.cfg.rep_layers
        k = self.cfg.n_rep_tokens
        x = visual.stem(pixels)
        hidden_before = None
        for idx, block in enumerate(visual.transformer.resblocks):
            layer = idx + 1  # 1-based block number
            if layer in layers:
                j = layers.index(layer)
                if j == 0:
                    hidden_before = x
                x = self._inject(x, vis_tokens[j], first=(j == 0))
            x = block(x)  # no mask: CLS, rep tokens and patches all see each other
        class_features = visual.ln_post(x[:, 0, :]) @ visual.proj
        rep = visual.ln_post(x[:, 1 : 1 + k, :]).mean(dim=1)  # LN per token, then mean
        rep_features = rep @ self.proj_rep
        return {"class": class_features, "rep": rep_features, "hidden_before": hidden_before}

    # ---- text path

    def encode_text(self, input_ids: torch.Tensor, txt_tokens: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        layers = self.cfg.rep_layers
        k = self.cfg.n_rep_tokens
        x = self.clip.text_stem(input_ids)  # positional embedding added before any rep token
        hidden_before = None
        for idx, block in enumerate(self.clip.transformer.resblocks):
            layer = idx + 1
            if layer in layers:
                j = layers.index(layer)
                if j == 0:
                    hidden_before = x
                x = self._inject(x, txt_tokens[j], first=(j == 0))
            # 77x77 before the first injected block, (77+K)x(77+K) from it on
            x = block(x, causal_mask(x.shape[1], x.dtype, x.device))
        x = self.clip.ln_final(x)
        rows = eot_index(input_ids) + k  # EOT moved right by the K inserted tokens
        features = x[torch.arange(x.shape[0], device=x.device), rows] @ self.clip.text_projection
        return {"text": features, "hidden_before": hidden_before}

    # ---- everything for one batch

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        vis_tokens, txt_tokens = self.rep_tokens()
        img = self.encode_image(pixels, vis_tokens)
        txt = self.encode_text(input_ids, txt_tokens)
        f_c, f_r, t = normalize(img["class"]), normalize(img["rep"]), normalize(txt["text"])
        s, a = self.cfg.logit_scale, self.cfg.alpha
        class_logits = s * f_c @ t.T
        rep_logits = s * f_r @ t.T
        return {
            "class_image_features": f_c,
            "rep_image_features": f_r,
            "text_features": t,
            "class_logits": class_logits,
            "rep_logits": rep_logits,
            "fused_logits": a * class_logits + (1 - a) * rep_logits,
            "vision_hidden_before_first_injection": img["hidden_before"],
            "text_hidden_before_first_injection": txt["hidden_before"],
            "rep_tokens_visual": torch.stack(vis_tokens),
            "rep_tokens_text": torch.stack(txt_tokens),
        }

    @torch.no_grad()
    def zero_shot_features(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen CLIP (no rep tokens), normalised: (image [B, E], text [C, E])."""
        return normalize(self.clip.encode_image(pixels)), normalize(self.clip.encode_text(input_ids))


def _clone_linear(lin: nn.Linear) -> nn.Linear:
    out = nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        out.weight.copy_(lin.weight)
        out.bias.copy_(lin.bias)
    return out


def mmrl_loss(
    out: dict[str, torch.Tensor],
    labels: torch.Tensor,
    zs_image: torch.Tensor,
    zs_text: torch.Tensor,
    alpha: float,
    reg_weight: float,
) -> dict[str, torch.Tensor]:
    """Four terms; all inputs normalised, so cos = row-wise dot product."""
    ce_class = F.cross_entropy(out["class_logits"], labels)
    ce_rep = F.cross_entropy(out["rep_logits"], labels)
    reg_image = 1 - (normalize(out["class_image_features"]) * normalize(zs_image)).sum(-1).mean()
    reg_text = 1 - (normalize(out["text_features"]) * normalize(zs_text)).sum(-1).mean()
    total = alpha * ce_class + (1 - alpha) * ce_rep + reg_weight * reg_image + reg_weight * reg_text
    return {
        "loss_ce_class": ce_class,
        "loss_ce_rep": ce_rep,
        "loss_reg_image": reg_image,
        "loss_reg_text": reg_text,
        "loss_total": total,
    }


def trainable_param_count(v_width: int, t_width: int, embed: int, k: int, d_r: int, n_layers: int) -> int:
    """R + per-layer (vision aligner + text aligner) weights and biases + proj_rep."""
    return k * d_r + n_layers * (d_r * v_width + v_width) + n_layers * (d_r * t_width + t_width) + v_width * embed


# ------------------------------------------------------------ check against HF


def check_clip_against_transformers(clip_fixtures: Path) -> dict[str, float]:
    """Load tests/fixtures/clip/tiny_openai.safetensors into this CLIP and compare with
    (a) the stored transformers outputs and (b) a live transformers CLIPModel loaded
    from tiny_hf/. Raises if any max abs diff is >= 1e-5."""
    from safetensors.torch import load_file
    from transformers import CLIPModel

    sd = load_file(str(clip_fixtures / "tiny_openai.safetensors"))
    exp = load_file(str(clip_fixtures / "expected.safetensors"))
    clip = CLIP.from_openai_state_dict(sd)
    ids, pixels = exp["input_ids"], exp["pixel_values"]
    hf = CLIPModel.from_pretrained(str(clip_fixtures / "tiny_hf"), attn_implementation="eager").eval()
    with torch.no_grad():
        img = clip.encode_image(pixels)
        txt = clip.encode_text(ids)
        logits = clip.logit_scale.exp() * normalize(img) @ normalize(txt).T
        live = hf(input_ids=ids, pixel_values=pixels).logits_per_image
    diffs = {
        "logits_vs_stored_transformers": float((logits - exp["logits_per_image"]).abs().max()),
        "logits_vs_live_transformers": float((logits - live).abs().max()),
        "image_embeds_unnorm_vs_stored": float((img - exp["image_embeds_unnorm"]).abs().max()),
        "text_embeds_unnorm_vs_stored": float((txt - exp["text_embeds_unnorm"]).abs().max()),
    }
    assert torch.equal(eot_index(ids), exp["eot_index"])
    for name, d in diffs.items():
        assert d < 1e-5, (name, d)
    return diffs


def main() -> None:
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[2]
    diffs = check_clip_against_transformers(repo / "tests" / "fixtures" / "clip")
    for name, d in diffs.items():
        print(f"reference CLIP vs transformers, {name}: max abs diff {d:.3e}")
    n = trainable_param_count(768, 512, 512, k=5, d_r=512, n_layers=len(default_rep_layers(12)))
    print(f"ViT-B/16 MMRL trainable parameters (K=5, d_r=512, layers 6..12): {n:,}")
    assert n == 4_992_256, n


if __name__ == "__main__":
    main()
