"""Expected dataset lists, computed by CoOp's own dataset readers.

Writes tests/fixtures/data/datasets.json, which tests/dataset_readers.rs
compares with `mmrl_data::dataset` (and `mmrl data split`).

For each benchmark dataset it builds a tiny copy of the layout CoOp's
DATASETS.md describes (empty image files, real split-file and annotation
formats) in a temporary folder, then runs the real reader classes of
KaiyangZhou/CoOp (`datasets/*.py`, on Dassl.pytorch's `DatasetBase`) with a
Dassl config for several seeds, shot counts and SUBSAMPLE_CLASSES values,
seeding Python's `random` as Dassl's `set_random_seed` does. It records
train_x, val, test and the class names of each run.

Two things are pinned so that the result is defined:
- Dassl lists folders with `os.listdir` (file-system order); we patch
  `listdir_nohidden` to sort, which is the canonical order mmrl uses there.
- Where a split file is missing, CoOp shuffles with the run's seed the first
  time and writes the file; mmrl rebuilds it with seed 1. So the first run
  of each such dataset here uses seed 1, and we record the file it wrote
  ("written_split"); the recorded runs then read that file.

Run (Python 3.11, with torch, yacs, tabulate, gdown installed):
  git clone https://github.com/KaiyangZhou/Dassl.pytorch   # @ c61a1b5
  git clone https://github.com/KaiyangZhou/CoOp            # @ ff61507
  python3 tests/scripts/gen_dataset_fixtures.py --dassl Dassl.pytorch --coop CoOp
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "datasets.json"


def layouts():
    """name -> (files relative to root, {text file: content}, dataset class name, has_split_json)."""
    L = {}
    rnd = random.Random(20251123)

    # OxfordPets with its split file: uneven classes (one below K), labels
    # interleaved, 5 classes (odd: base 3 / novel 2).
    pets_classes = ["abyssinian", "american_bulldog", "beagle", "bengal", "boxer"]
    sizes = [20, 3, 17, 25, 6]
    train = [[f"{c.capitalize()}_{i}.jpg", l, c] for l, (c, n) in enumerate(zip(pets_classes, sizes)) for i in range(n)]
    rnd.shuffle(train)
    val = [[f"{c.capitalize()}_v{i}.jpg", l, c] for l, c in enumerate(pets_classes) for i in range(l + 2)]
    test = [[f"{c.capitalize()}_t{i}.jpg", l, c] for l, c in enumerate(pets_classes) for i in range(3)]
    split = {"train": train, "val": val, "test": test}
    files = ["oxford_pets/images/" + x[0] for x in train + val + test]
    L["oxford_pets"] = (files, {"oxford_pets/split_zhou_OxfordPets.json": json.dumps(split, indent=4)}, "OxfordPets")

    # OxfordPets without a split file: annotations/trainval.txt, test.txt.
    breeds = ["Abyssinian", "american_bulldog", "Bengal", "great_pyrenees"]
    tv = [(f"{b}_{i}", k + 1) for k, b in enumerate(breeds) for i in range(1, 4 + 3 * k)]
    rnd.shuffle(tv)
    te = [(f"{b}_{100 + i}", k + 1) for k, b in enumerate(breeds) for i in range(2)]
    ann = {
        "oxford_pets/annotations/trainval.txt": "".join(f"{n} {c} 1 {c}\n" for n, c in tv),
        "oxford_pets/annotations/test.txt": "".join(f"{n} {c} 2 {c}\n" for n, c in te),
    }
    files = [f"oxford_pets/images/{n}.jpg" for n, _ in tv + te]
    L["oxford_pets_fallback"] = (files, ann, "OxfordPets")

    # DTD without a split file: class folders, 50/20/30.
    files = []
    for k, c in enumerate(["banded", "blotchy", "braided", "bubbly", "zigzagged"]):
        files += [f"dtd/images/{c}/{c}_{i:04d}.jpg" for i in range(4 + 5 * k)]
    L["dtd"] = (files, {}, "DescribableTextures")

    # Caltech101 without a split file: ignored folders, renames, case order.
    files = []
    for k, c in enumerate(["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "accordion", "airplanes", "Motorbikes"]):
        files += [f"caltech-101/101_ObjectCategories/{c}/image_{i:04d}.jpg" for i in range(1, 6 + 2 * k)]
    L["caltech101"] = (files, {}, "Caltech101")

    # EuroSAT without a split file (renames).
    files = []
    for k, c in enumerate(["AnnualCrop", "Forest", "SeaLake"]):
        files += [f"eurosat/2750/{c}/{c}_{i}.jpg" for i in range(1, 8 + k)]
    L["eurosat"] = (files, {}, "EuroSAT")

    # FGVCAircraft: variants.txt and the three list files (names with spaces, -, /).
    variants = ["707-320", "A300B4", "Cessna 172", "DC-10", "F/A-18"]
    lists = {}
    files = []
    for split, per in [("train", 6), ("val", 3), ("test", 3)]:
        lines = []
        for k, v in enumerate(variants):
            for i in range(per + (k % 2)):
                img = f"{rnd.randrange(1000000, 9999999):07d}"
                lines.append(f"{img} {v}")
        rnd.shuffle(lines)
        lines = list(dict.fromkeys(lines))
        lists[f"fgvc_aircraft/images_variant_{split}.txt"] = "".join(l + "\n" for l in lines)
        files += [f"fgvc_aircraft/images/{l.split(' ')[0]}.jpg" for l in lines]
    lists["fgvc_aircraft/variants.txt"] = "".join(v + "\n" for v in variants)
    L["fgvc_aircraft"] = (sorted(set(files)), lists, "FGVCAircraft")

    # SUN397 without a split file.
    keys = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop", "/c/castle"]
    tr = [f"{k}/sun_{rnd.randrange(10**8):08d}.jpg" for k in keys for i in range(5 + len(k) % 4)]
    rnd.shuffle(tr)
    te = [f"{k}/sun_t{i}.jpg" for k in keys for i in range(2)]
    txt = {
        "sun397/ClassName.txt": "".join(k + "\n" for k in keys),
        "sun397/Training_01.txt": "".join(l + "\n" for l in tr),
        "sun397/Testing_01.txt": "".join(l + "\n" for l in te),
    }
    files = ["sun397/SUN397" + l for l in tr + te]
    L["sun397"] = (files, txt, "SUN397")

    # UCF101 without a split file.
    acts = ["ApplyEyeMakeup", "BabyCrawling", "YoYo", "PlayingDaf"]
    tl = [f"{a}/v_{a}_g{g:02d}_c01.avi {k + 1}" for k, a in enumerate(acts) for g in range(1, 6 + k)]
    rnd.shuffle(tl)
    te = [f"{a}/v_{a}_g{g:02d}_c02.avi" for a in acts for g in range(1, 3)]
    import re

    def ren(a):
        return "_".join(re.findall("[A-Z][^A-Z]*", a))

    txt = {
        "ucf101/ucfTrainTestlist/classInd.txt": "".join(f"{k + 1} {a}\n" for k, a in enumerate(acts)),
        "ucf101/ucfTrainTestlist/trainlist01.txt": "".join(l + "\n" for l in tl),
        "ucf101/ucfTrainTestlist/testlist01.txt": "".join(l + "\n" for l in te),
    }
    files = []
    for l in tl + te:
        a, f = l.split(" ")[0].split("/")
        files.append(f"ucf101/UCF-101-midframes/{ren(a)}/{f.replace('.avi', '.jpg')}")
    L["ucf101"] = (files, txt, "UCF101")

    # StanfordCars with its split file (paths relative to the dataset folder).
    cars = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 BMW M3 Coupe"]
    train = [[f"cars_train/{l * 100 + i:05d}.jpg", l, c] for l, c in enumerate(cars) for i in range(1, 8 + 4 * l)]
    rnd.shuffle(train)
    val = [[f"cars_train/{l * 100 + 50 + i:05d}.jpg", l, c] for l, c in enumerate(cars) for i in range(3)]
    test = [[f"cars_test/{l * 100 + i:05d}.jpg", l, c] for l, c in enumerate(cars) for i in range(2)]
    split = {"train": train, "val": val, "test": test}
    files = ["stanford_cars/" + x[0] for x in train + val + test]
    L["stanford_cars"] = (files, {"stanford_cars/split_zhou_StanfordCars.json": json.dumps(split)}, "StanfordCars")

    # OxfordFlowers with its split file.
    fl = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    train = [[f"image_{l * 100 + i:05d}.jpg", l, c] for l, c in enumerate(fl) for i in range(1, 18)]
    val = [[f"image_{l * 100 + 50 + i:05d}.jpg", l, c] for l, c in enumerate(fl) for i in range(5)]
    test = [[f"image_{l * 100 + 70 + i:05d}.jpg", l, c] for l, c in enumerate(fl) for i in range(2)]
    split = {"train": train, "val": val, "test": test}
    files = ["oxford_flowers/jpg/" + x[0] for x in train + val + test]
    L["oxford_flowers"] = (files, {"oxford_flowers/split_zhou_OxfordFlowers.json": json.dumps(split)}, "OxfordFlowers")

    # ImageNet: classnames.txt, train/ and val/ class folders.
    wn = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark")]
    cn = "".join(f"{w} {n}\n" for w, n in wn)
    files = [f"imagenet/images/train/{w}/{w}_{i}.JPEG" for k, (w, _) in enumerate(wn) for i in range(1, 20 + 3 * k)]
    files += [f"imagenet/images/val/{w}/ILSVRC2012_val_{k}{i:07d}.JPEG" for k, (w, _) in enumerate(wn) for i in range(3)]
    L["imagenet"] = (files, {"imagenet/classnames.txt": cn}, "ImageNet")

    # The variants. V2 needs all 1,000 numbered folders and class names.
    names1000 = [(f"n{10000000 + k:08d}", f"class {k}") for k in range(1000)]
    cn1000 = "".join(f"{w} {n}\n" for w, n in names1000)
    files = [f"imagenetv2/imagenetv2-matched-frequency-format-val/{k}/{k:04d}a.jpeg" for k in range(1000)]
    files += [f"imagenetv2/imagenetv2-matched-frequency-format-val/{k}/{k:04d}b.jpeg" for k in range(0, 1000, 97)]
    L["imagenetv2"] = (files, {"imagenetv2/classnames.txt": cn1000}, "ImageNetV2")
    files = [f"imagenet-sketch/images/{w}/sketch_{i}.JPEG" for w, _ in wn for i in range(2)]
    L["imagenet_sketch"] = (files, {"imagenet-sketch/classnames.txt": cn}, "ImageNetSketch")
    # A and R: a subset of the wnids (labels 0..n-1 over the present folders) and README.txt.
    for stem, folder, sub in [("imagenet_a", "imagenet-adversarial", "imagenet-a"), ("imagenet_r", "imagenet-rendition", "imagenet-r")]:
        files = [f"{folder}/{sub}/{w}/{sub}_{i}.jpg" for w, _ in [wn[0], wn[2]] for i in range(3)]
        L[stem] = (files, {f"{folder}/classnames.txt": cn, f"{folder}/{sub}/README.txt": "readme\n"}, {"imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR"}[stem])
    return L


def make_cfg(root, name, shots, seed, subsample):
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dassl", required=True)
    ap.add_argument("--coop", required=True)
    args = ap.parse_args()
    sys.path[:0] = [os.path.abspath(args.dassl), os.path.abspath(args.coop)]
    # Dassl's WILDS readers are imported but never used here: stub their imports.
    sys.modules["wilds"] = types.SimpleNamespace(get_dataset=None)
    import dassl.utils
    import dassl.utils.tools
    import datasets  # CoOp's package of readers

    def listdir_sorted(path, sort=False):
        return sorted(f for f in os.listdir(path) if not f.startswith("."))

    import importlib
    import pkgutil

    mods = [importlib.import_module(f"datasets.{m.name}") for m in pkgutil.iter_modules(datasets.__path__)]
    for m in mods + [dassl.utils, dassl.utils.tools]:
        if hasattr(m, "listdir_nohidden"):
            m.listdir_nohidden = listdir_sorted
    from dassl.data.datasets import build_dataset

    out = {"layouts": {}, "runs": []}
    for key, (files, texts, name) in layouts().items():
        tmp = Path(tempfile.mkdtemp())
        for f in files:
            p = tmp / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        for f, text in texts.items():
            p = tmp / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        root = tmp
        out["layouts"][key] = {"files": files, "texts": texts, "name": name}
        test_only = name in ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
        dataset_dir = next(p for p in root.iterdir() if p.is_dir())
        split_files = list(dataset_dir.glob("split_zhou_*.json"))
        written = None
        if not test_only and not split_files and name not in ("ImageNet", "FGVCAircraft"):
            random.seed(1)
            build_dataset(make_cfg(root, name, 1, 1, "all"))
            written = json.loads(next(dataset_dir.glob("split_zhou_*.json")).read_text())
        combos = [(0, 1, "all")] if test_only else [
            (shots, seed, sub) for seed in (1, 2, 3) for shots in (1, 4, 16) for sub in ("all", "base", "new")
        ] + [(0, 1, "all"), (0, 1, "base")]
        test_done = set()
        for shots, seed, sub in combos:
            shutil.rmtree(dataset_dir / "split_fewshot", ignore_errors=True)
            (dataset_dir / "preprocessed.pkl").unlink(missing_ok=True)
            random.seed(seed)
            ds = build_dataset(make_cfg(root, name, shots, seed, sub))

            def rel(items):
                return [[os.path.relpath(d.impath, root).replace(os.sep, "/"), d.label, d.classname] for d in items]

            run = {
                "layout": key, "shots": shots, "seed": seed, "subsample": sub,
                "classes": ds.classnames,
                "train": rel(ds.train_x), "val": rel(ds.val or []),
            }
            if sub not in test_done:
                run["test"] = rel(ds.test)
                test_done.add(sub)
            out["runs"].append(run)
        if written is not None:
            out["layouts"][key]["written_split"] = written
        shutil.rmtree(tmp)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out['runs'])} runs)")


if __name__ == "__main__":
    main()
