#!/usr/bin/env python3
"""Expected pixels of the training crop (RandomResizedCrop's crop + resize, flip).

Writes tests/fixtures/data/augment/:
  synth.png              a 320x240 RGB test image (smooth gradients, stripes and
                         sharp edges; made here, deterministic)
  <case>.png             Pillow's `img.crop(box).resize((size, size), BICUBIC)`,
                         mirrored with `transpose(FLIP_LEFT_RIGHT)` when `flip`
  manifest.json          the cases (image, box, size, flip, expected file) and
                         the versions used

data/src/augment.rs (`resized_crop_matches_pillow`) compares
`TrainTransform::augment_u8` with these, as tests/preprocess_parity.rs does for
the test transform. The script also checks that torchvision's
`F.resized_crop(img, top, left, h, w, [size, size], BICUBIC)` (what
`RandomResizedCrop` calls once it has drawn its box) gives the same pixels as
the crop + resize written here.

Run from the repository root (CPU, a second):
    python3 tests/scripts/gen_augment_fixtures.py
Pinned versions: tests/scripts/requirements.txt (pillow, torch, torchvision, numpy).
"""
import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "data" / "augment"
RGB_JPG = ROOT / "tests" / "fixtures" / "clip" / "images" / "rgb.jpg"


def synth_image():
    """320x240: gradients, a fine stripe pattern and a hard-edged square, so
    both the antialiased downscale and the upscale have something to smooth."""
    h, w = 240, 320
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1)
    g = 127.5 + 127.5 * np.sin(x / 3.0) * np.cos(y / 5.0)
    b = 255 * y / (h - 1)
    img = np.stack([r, g, b], axis=-1)
    img[60:140, 100:200] = [250, 20, 30]
    img[150:160, :] = 0
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")


# (name, source image, (left, top, width, height), output size, flip)
CASES = [
    # Upscale on both axes, output 224 as in training.
    ("rgb_up224", "rgb.jpg", (7, 3, 61, 45), 224, False),
    ("rgb_up224_flip", "rgb.jpg", (30, 10, 50, 50), 224, True),
    # Antialiased downscale on both axes.
    ("synth_down112", "synth.png", (13, 9, 290, 230), 112, False),
    # Width already at the output size: only the vertical pass runs.
    ("synth_vertical112", "synth.png", (150, 20, 112, 200), 112, False),
    # Whole image, non-square.
    ("synth_whole96", "synth.png", (0, 0, 320, 240), 96, True),
]


def main():
    import torch
    import torchvision
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    OUT.mkdir(parents=True, exist_ok=True)
    synth = synth_image()
    synth.save(OUT / "synth.png", optimize=True)
    sources = {
        "rgb.jpg": Image.open(RGB_JPG).convert("RGB"),
        # Re-read what was written, as the Rust test will.
        "synth.png": Image.open(OUT / "synth.png").convert("RGB"),
    }
    cases = []
    for name, src, (left, top, width, height), size, flip in CASES:
        img = sources[src]
        out = img.crop((left, top, left + width, top + height)).resize(
            (size, size), Image.BICUBIC
        )
        tv = F.resized_crop(
            img, top, left, height, width, [size, size], InterpolationMode.BICUBIC
        )
        assert np.array_equal(np.asarray(out), np.asarray(tv)), name
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
            assert np.array_equal(np.asarray(out), np.asarray(F.hflip(tv))), name
        out.save(OUT / f"{name}.png", optimize=True)
        cases.append(
            {
                "name": name,
                "image": src,
                "left": left,
                "top": top,
                "width": width,
                "height": height,
                "size": size,
                "flip": flip,
                "expected": f"{name}.png",
            }
        )
    manifest = {
        "generator": "tests/scripts/gen_augment_fixtures.py",
        "versions": {
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "sources": {"rgb.jpg": "tests/fixtures/clip/images/rgb.jpg", "synth.png": "synth.png"},
        "cases": cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
