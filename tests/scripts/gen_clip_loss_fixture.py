"""Reference for the contrastive pretraining loss (train/src/pretrain.rs):
CLIP's symmetric InfoNCE as open_clip's ClipLoss computes it, with PyTorch.

    python tests/scripts/gen_clip_loss_fixture.py

writes tests/fixtures/pretrain/clip_loss.json: random image and text features,
two log-temperatures (one above CLIP's ln 100 bound, which CLIP clamps) and
the loss and logits PyTorch gives.
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F

torch.manual_seed(0)
n, d = 6, 8
image = torch.randn(n, d)
text = torch.randn(n, d)
cases = []
for logit_scale in [2.6592, 5.0]:
    # CLIP clamps logit_scale to [0, ln 100] (open_clip: `clamp_(0, math.log(100))`).
    scale = math.exp(min(logit_scale, math.log(100)))
    i = F.normalize(image, dim=-1)
    t = F.normalize(text, dim=-1)
    logits = scale * i @ t.T
    labels = torch.arange(n)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    cases.append(
        {
            "logit_scale": logit_scale,
            "loss": loss.item(),
            "logits": logits.flatten().tolist(),
        }
    )
out = {
    "generated_by": "tests/scripts/gen_clip_loss_fixture.py (torch %s)" % torch.__version__,
    "shape": [n, d],
    "image": image.flatten().tolist(),
    "text": text.flatten().tolist(),
    "cases": cases,
}
path = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrain" / "clip_loss.json"
path.write_text(json.dumps(out, indent=1))
print("wrote", path)
