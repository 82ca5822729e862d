"""Self-supervised pre-training (``workflow: self_supervised``) against training from scratch,
when few images are labelled.

Data (``--data``): DSB2018 fluorescence nuclei (``fluo``: ``dsb2018_train_fluo``, 541 images), or
its brightfield and H&E images (``color``: ``dsb2018_train_color``, 123 images made grey by the
mean of R, G and B; dark nuclei on a light background, a harder set where the labels matter
more). A fixed test set of
``--test`` images (a seeded draw) is held out of everything: of pre-training and of the
labelled subsets. The other images are the lab's collection: pre-training reconstructs all of
them without their labels (``--pretrain`` patches of 128², pretext ``masked`` and/or
``degraded`` with the schema's defaults), then instance segmentation (foreground + contour,
the same U-Net: depth 3, width 16, batch norm) trains on 5 % and 20 % of them with labels
(nested subsets: the 5 % are among the 20 %), for the same ``--patches`` from random weights
(lr 2e-3) or from the pre-trained model (``train.init``, lr 1e-3, as bench_finetune.py).
Every model is scored on the test set with the default watershed: pooled F1 at IoU 0.5 and
0.75 (``last.pt``: nothing is selected on test data).

The library is called directly (bench_finetune.py's helpers), in a temporary folder (or
``--workdir``, which keeps the pre-trained models). Prints one row per run as it ends, then
one markdown table.

    .venv/bin/python benchmarks/bench_pretrain.py [--data fluo] [--pretrain 2048] [--patches 512] [--pretexts masked degraded]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune import PATCHES_PER_EPOCH, SHARED, experiment, prepare, score  # noqa: E402

from biapipe.core.config import validate_config  # noqa: E402
from biapipe.core.imageio import image_id  # noqa: E402
from biapipe.tasks import get_task  # noqa: E402
from biapipe.training.init import Freeze  # noqa: E402
from biapipe.training.loop import train_model  # noqa: E402

FRACTIONS = (0.05, 0.20)
#: How a pre-trained start is fine-tuned (train keys over the instance benchmark's): the
#: fine-tuning benchmark's lower rate, scratch's rate, and the encoder held fixed for 2 of the 8 epochs.
STARTS: dict[str, dict[str, Any]] = {
    "lr 1e-3": {"optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0001}},
    "lr 2e-3": {},
    "encoder fixed 2 epochs": {"fine_tune": {"freeze_encoder_epochs": 2}},
    "encoder fixed 4 epochs": {"fine_tune": {"freeze_encoder_epochs": 4}},
    "encoder fixed 8 epochs": {"fine_tune": {"freeze_encoder_epochs": 8}},
    "encoder fixed 2 epochs, then at 0.1 lr": {"fine_tune": {"freeze_encoder_epochs": 2, "encoder_lr_factor": 0.1}},
    "encoder fixed 8 epochs, batch-norm statistics adapt": {"fine_tune": {"freeze_encoder_epochs": 8}},
}
#: starts whose fixed encoder keeps its batch-norm layers in training mode (their statistics
#: follow the labelled images, not the corrupted pre-training inputs)
ADAPT_BN = {"encoder fixed 8 epochs, batch-norm statistics adapt"}


def pretext_config(pretext: str, epochs: int, threads: int) -> dict[str, Any]:
    """The self_supervised run: the instance benchmark's network and training settings."""
    base = experiment(epochs, threads, 0)
    return validate_config({
        "experiment": "bench_pretrain", "workflow": "self_supervised", "ndim": 2, "seed": 0,
        "data": {"train": {"images": "."}}, "normalize": dict(base["normalize"]),
        "targets": {"self_supervised": {"pretext": pretext, "channels": 1}},
        "train": {k: base["train"][k] for k in ("model", "patch_size", "batch_size", "patches_per_epoch", "epochs",
                                                 "optimizer", "scheduler", "warmup_epochs", "device", "threads",
                                                 "early_stopping")},
    })


def grey_copy(folder: Path, out: Path) -> Path:
    """``folder``'s images as grey uint8 (the mean of R, G, B), labels linked: written once to ``out``."""
    for name in sorted(p.name for p in (folder / "images").glob("*.tif")):
        image, label = out / "images" / name, out / "labels" / name
        if not label.exists():
            pixels = tifffile.imread(folder / "images" / name)
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            grey = pixels[..., :3].mean(axis=-1) if pixels.ndim == 3 else pixels
            tifffile.imwrite(image, grey.astype(np.uint8))
            label.symlink_to(folder / "labels" / name)
    return out


def split(names: list[str], n_test: int) -> tuple[list[str], list[str]]:
    """(test names, the others in a seeded order: a labelled subset is a prefix of them)."""
    order = [names[i] for i in np.random.default_rng(2026).permutation(len(names))]
    return sorted(order[:n_test]), order[n_test:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["fluo", "color"], default="fluo", help="DSB2018 fluo, or brightfield/H&E")
    parser.add_argument("--pretrain", type=int, default=2048, help="patches of 128² of self-supervised pre-training")
    parser.add_argument("--patches", type=int, default=512, help="patches of 128² of each segmentation training")
    parser.add_argument("--pretexts", nargs="+", default=["masked", "degraded"], choices=["masked", "degraded"])
    parser.add_argument("--starts", nargs="+", default=["lr 1e-3"], choices=sorted(STARTS),
                        help="how each pre-trained model is fine-tuned")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of each segmentation training")
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS), help="labelled fractions")
    parser.add_argument("--test", type=int, default=50, help="held-out test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-scratch", action="store_true", help="only the pre-trained starts (another call ran scratch)")
    parser.add_argument("--workdir", help="keep intermediate files (and the pre-trained models) here")
    args = parser.parse_args()
    dataset = SHARED / f"dsb2018_train_{args.data}"
    if not dataset.is_dir():
        raise SystemExit(f"real data not found: {dataset}")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="no object seeds")
    torch.set_num_threads(args.threads)
    epochs = max(1, args.patches // PATCHES_PER_EPOCH)
    names = sorted(image_id(p.name) for p in (dataset / "images").glob("*.tif"))
    test, pool = split(names, args.test)
    subsets = {f: pool[:max(1, round(f * len(pool)))] for f in args.fractions}
    rows: list[tuple[str, int, int, float, dict[str, float]]] = []
    pretrain_min: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        work = Path(args.workdir or tmp)
        source = dataset if args.data == "fluo" else grey_copy(dataset, work / "grey")
        base = experiment(1, args.threads, 0)
        pairs = dict(zip(pool, prepare(source, pool, work / "dsb", base)))
        sources = {}
        for pretext in args.pretexts:
            sources[pretext] = work / f"ssl_{pretext}_{args.pretrain}" / "last.pt"
            start = time.perf_counter()
            if not sources[pretext].exists():
                cfg = pretext_config(pretext, max(1, args.pretrain // PATCHES_PER_EPOCH), args.threads)
                # images only: each normalized image is its own target (its labels are never read)
                train_model(cfg, get_task(cfg), [(pairs[n][0], pairs[n][0]) for n in pool], [],
                            sources[pretext].parent)
            pretrain_min[pretext] = (time.perf_counter() - start) / 60
            print(f"pre-trained ({pretext}): {pretrain_min[pretext]:.1f} min", flush=True)
        for fraction, labelled in subsets.items():
            starts = [] if args.skip_scratch else [("scratch", "scratch", {})]
            starts += [(f"pre-trained ({p}), {way}", f"{p}_{way}", {"init": str(sources[p]), **STARTS[way]})
                       for p in args.pretexts for way in args.starts]
            for (label, key, train), seed in ((s, seed) for s in starts for seed in args.seeds):
                cfg = experiment(epochs, args.threads, seed, **train)
                out = work / f"ft_{fraction}_{epochs * PATCHES_PER_EPOCH}_{key}" / f"seed{seed}"
                done = out / "result.json"  # a run of an earlier call (--workdir): kept with its score
                if done.exists():
                    minutes, scores = json.loads(done.read_text())
                else:
                    start = time.perf_counter()
                    hold = Freeze.hold
                    if any(key.endswith(way) for way in ADAPT_BN):
                        Freeze.hold = lambda self, epochs_done: None  # type: ignore[method-assign]
                    try:
                        train_model(cfg, get_task(cfg), [pairs[n] for n in labelled], [], out)
                    finally:
                        Freeze.hold = hold  # type: ignore[method-assign]
                    minutes = (time.perf_counter() - start) / 60
                    scores = score(out / "last.pt", cfg, source, test)
                    done.write_text(json.dumps([minutes, {k: float(v) for k, v in scores.items()}]))
                rows.append((label, len(labelled), epochs * PATCHES_PER_EPOCH, minutes, scores))
                print(rows[-1], f"seed {seed}", flush=True)
    timing = ", ".join(f"{p} {m:.1f} min" for p, m in pretrain_min.items())
    print(f"\n{dataset.name}: {len(test)} held-out test images; pre-training on the other {len(pool)} without labels, "
          f"{args.pretrain} patches ({timing}); segmentation on {', '.join(f'{len(s)} ({f:.0%})' for f, s in subsets.items())} "
          f"labelled images; {args.threads} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          "no GPU\n")
    print(f"Mean over seeds {', '.join(map(str, args.seeds))} (network init, patch draws, augmentation) of each start:\n")
    print("| start | labelled images | patches | training min | F1@0.5 pooled | F1@0.75 pooled | F1@0.5 per seed |")
    print("|---|---:|---:|---:|---:|---:|---|")
    groups: dict[tuple[str, int, int], list[tuple[float, dict[str, float]]]] = {}
    for label, n, patches, minutes, s in rows:
        groups.setdefault((label, n, patches), []).append((minutes, s))
    for (label, n, patches), runs in groups.items():
        f50, f75 = (float(np.mean([s[k] for _, s in runs])) for k in ("f1@0.5", "f1@0.75"))
        seeds = " / ".join(f"{s['f1@0.5']:.3f}" for _, s in runs)
        print(f"| {label} | {n} | {patches} | {np.mean([m for m, _ in runs]):.1f} | {f50:.3f} | {f75:.3f} | {seeds} |")


if __name__ == "__main__":
    main()
