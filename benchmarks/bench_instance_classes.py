"""Instance segmentation with a class per object on real nuclei: fluorescence vs brightfield/H&E.

What it measures: the instance workflow with ``targets.instance.classes: 2`` (foreground +
contour channels and two class channels), run end to end by real Snakemake for a fixed
training budget, scored on held-out images: class-agnostic F1 at IoU 0.5, per-class F1 at
IoU 0.5 (a matched object counts for its class only when its predicted class is right;
``tasks/instance/classes.py``) and the class accuracy of the matched objects.

Data, derived (in a temporary folder, never in the repository) from
``../shared/data/dsb2018_train_fluo`` (class 1: fluorescence) and
``../shared/data/dsb2018_train_color`` (class 2: brightfield and H&E, converted to grey by the
mean of R, G, B so both kinds have one channel): images drawn with a fixed seed, centre-cropped
to at most 256 x 256, the class image of each is its label mask times its class. The class is
per image here, so the network must tell an image's kind from what a patch shows of it (bright
nuclei on a dark background, or dark nuclei on a bright one).

Run: nice -n 5 .venv/bin/python benchmarks/bench_instance_classes.py [--epochs 8] [--train 12] [--test 10]
(prints one markdown table; about 8 minutes on the project's shared 2 cores)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml

from biapipe.core.config import defaults

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SOURCES = {1: ("dsb2018_train_fluo", "fluorescence"), 2: ("dsb2018_train_color", "brightfield/H&E")}
CROP = 256


def derive(out: Path, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, int]:
    """Write {split}/{images,labels,classes}/ from both sets; returns the images per split."""
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "test": 0}
    for cls, (folder, _) in SOURCES.items():
        names = sorted(p.name for p in (SHARED / folder / "images").glob("*.tif"))
        chosen = [names[i] for i in rng.permutation(len(names))[:n_train + n_val + n_test]]
        splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
        for name, split in zip(chosen, splits):
            image = tifffile.imread(SHARED / folder / "images" / name)
            labels = tifffile.imread(SHARED / folder / "labels" / name)
            if image.ndim == 3:
                image = image[..., :3].mean(axis=-1)
            y0, x0 = (max(0, (s - CROP) // 2) for s in labels.shape)
            crop = (slice(y0, y0 + CROP), slice(x0, x0 + CROP))
            image, labels = image[crop].astype(np.uint8), labels[crop]
            stem = f"c{cls}_{name}"
            for kind, arr in (("images", image), ("labels", labels),
                              ("classes", ((labels > 0) * cls).astype(np.uint8))):
                (out / split / kind).mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(out / split / kind / stem, arr)
            counts[split] += 1
    return counts


def config(data: Path, epochs: int, seed: int, classes: bool = True, class_weight: float | None = None) -> dict:
    return {
        "experiment": "classes", "workflow": "instance", "ndim": 2, "seed": seed,
        "data": {s: {k: str(data / s / k) for k in ("images", "labels", "classes")} for s in ("train", "val", "test")},
        "targets": {"instance": {"channels": ["foreground", "contour"], "classes": 2 if classes else None,
                                 **({"class_weight": class_weight} if class_weight is not None else {})}},
        "train": {"plan": "none", "model": {"depth": 3, "width": 16}, "patch_size": [128, 128], "batch_size": 8,
                  "patches_per_epoch": 128, "epochs": epochs, "val_patches": 16, "threads": 2,
                  "early_stopping": {"patience": epochs + 1}},
        "predict": {"mode": "whole", "threads": 2},
        "postprocess": {"instance": {"fill_holes": True, "min_size": 10}},
        "evaluate": {"iou_thresholds": [0.5]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train", type=int, default=12, help="training images per class")
    parser.add_argument("--val", type=int, default=3, help="validation images per class")
    parser.add_argument("--test", type=int, default=10, help="test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-classes", action="store_true",
                        help="the same run without the class head (class-agnostic rows only)")
    parser.add_argument("--class-weight", type=float, default=None,
                        help="targets.instance.class_weight (default: the schema's)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run in this folder")
    args = parser.parse_args()
    weight = args.class_weight if args.class_weight is not None else defaults("targets.instance")["class_weight"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        derive(work / "data", args.train, args.val, args.test, args.seed)
        cfgfile = work / "config.yaml"
        cfgfile.write_text(yaml.safe_dump(config(work / "data", args.epochs, args.seed, not args.no_classes,
                                                 args.class_weight)))
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
               str(work), "--configfile", str(cfgfile), "--cores", "2", "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if proc.returncode:
            sys.exit(proc.stderr[-4000:])
        wall = time.perf_counter() - start
        out = work / "results" / "classes"
        summary = pd.read_csv(out / "summary.csv").iloc[0]
        metrics = pd.read_csv(out / "metrics.csv")
    print(f"{2 * args.train} training, {2 * args.val} validation, {2 * args.test} test images "
          f"(half of each per class); {args.epochs} epochs of 128 patches of 128²; "
          f"{'no class head' if args.no_classes else f'class_weight {weight:g}'}; whole run {wall / 60:.1f} min\n")
    print("| class | true objects | predicted objects | precision@0.5 | recall@0.5 | F1@0.5 | "
          "F1@0.5 any class, its images |")
    print("|---|---|---|---|---|---|---|")
    for cls, (_, name) in SOURCES.items():
        own = metrics[metrics["image"].str.startswith(f"c{cls}_")]
        tp, fp, fn = (float(own[f"{c}@0.5"].sum()) for c in ("tp", "fp", "fn"))
        agnostic = 2 * tp / max(2 * tp + fp + fn, 1)
        k = f"class{cls}"
        if args.no_classes:
            print(f"| {cls}: {name} | {own['n_gt'].sum():.0f} | {own['n_pred'].sum():.0f} | | | | {agnostic:.3f} |")
            continue
        tp, fp, fn = (float(metrics[f"{k}_{c}"].sum()) for c in ("tp", "fp", "fn"))
        print(f"| {cls}: {name} | {tp + fn:.0f} | {tp + fp:.0f} | {summary[f'pooled_{k}_precision']:.3f} | "
              f"{summary[f'pooled_{k}_recall']:.3f} | {summary[f'pooled_{k}_f1']:.3f} | {agnostic:.3f} |")
    if not args.no_classes:
        print(f"| mean over classes | | | | | {summary['pooled_class_f1_mean']:.3f} | |")
    print(f"| any class (class-agnostic) | {summary['n_gt']:.0f} | {summary['n_pred']:.0f} | "
          f"{summary['pooled_precision@0.5']:.3f} | {summary['pooled_recall@0.5']:.3f} | "
          f"{summary['pooled_f1@0.5']:.3f} | |")
    if not args.no_classes:
        print(f"\nclass accuracy of the objects matched at IoU 0.5: {summary['pooled_class_accuracy']:.3f} "
              f"({metrics['class_matched'].sum():.0f} matched)")


if __name__ == "__main__":
    main()
