"""Segmentation quality for a fixed training budget on DSB2018 (fluorescence nuclei, 2D).

What it measures: the instance workflow (foreground + contour targets, watershed
post-processing of ``tasks/instance.py``) trained for ``--minutes`` of wall time on this
machine, with and without augmentation, each predicted with and without test-time
augmentation. Reported on the held-out validation images: foreground IoU (pixels of
the final labels vs ground truth, pooled over images) and object F1 at IoU 0.5 (pooled
TP/FP/FN over images, and the mean of per-image F1).

How: ``../shared/data/dsb2018_train_fluo``, 541 images, split 90/10 by image with a fixed
seed. The library is called directly (normalize -> targets -> train_model -> predict ->
postprocess -> metrics), in a temporary folder, no Snakemake. The budget is turned into
a number of epochs by timing one calibration epoch first, so the cosine schedule runs to
its end within the budget; ``last.pt`` is evaluated (the validation images are not used
to choose the checkpoint, so the scores are not biased by selection).

Reference: BiaPy reports F1@0.5 of about 0.72 on DSB2018 after 40 minutes on 2 CPU
cores; the target here is 0.85 with the default ``--minutes 40``.

Budgets: ``--minutes`` (wall time, calibrated as above) or ``--patches`` (a fixed number of
training patches, independent of how busy the machine is; ``--device cuda`` then runs the
very same computation on a GPU, e.g. to see what a 40-minute CPU budget reaches without
waiting 40 minutes). ``--throughput`` only prints the training throughput (patches/s).

Run: .venv/bin/python benchmarks/bench_quality.py [--minutes 40 | --patches N] [--threads 2] [--device cpu]
(prints one markdown table)
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from biapipe.core.config import validate_config
from biapipe.core.imageio import image_id, read_array, read_image, read_label, write_zarr
from biapipe.data.normalize import normalize
from biapipe.inference.predict import predict_image
from biapipe.inference.predictor import clear_predictor_cache, load_predictor
from biapipe.tasks import get_task
from biapipe.tasks.instance.metrics import matching_metrics
from biapipe.training.loop import train_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_train_fluo"

#: Everything but the augmentation switch is the same for every configuration.
BASE_TRAIN: dict[str, Any] = {
    "model": {"arch": "unet", "depth": 3, "width": 16, "norm": "batch"},
    "patch_size": [128, 128], "batch_size": 8, "patches_per_epoch": 128,
    "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001},
    "scheduler": "cosine", "warmup_epochs": 1, "device": "cpu",
}
NO_AUGMENTATION = {"flip": 0.0, "rot90": 0.0, "rotate": 0.0, "scale": 0.0, "elastic": 0.0, "blur": 0.0,
                   "poisson_noise": 0.0, "gaussian_noise": 0.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0,
                   "cutout": 0.0}
DEFAULT_AUGMENTATION: dict[str, Any] = {}  # the schema defaults (flips, rot90 and nnU-Net-like rest)


def experiment(augment: dict[str, Any], epochs: int, threads: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    return validate_config({
        "experiment": "bench_quality", "workflow": "instance", "ndim": 2, "seed": seed,
        "data": {"train": {"images": str(DATA / "images")}},
        "train": {**BASE_TRAIN, "epochs": epochs, "threads": threads, "augment": augment, "device": device,
                  "early_stopping": {"patience": epochs + 1}},
        "predict": {"mode": "whole", "threads": threads, "device": device},
    })


def split(seed: int) -> tuple[list[str], list[str]]:
    """90/10 by image, fixed seed."""
    names = sorted(p.name for p in (DATA / "images").glob("*.tif"))
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = round(0.1 * len(names))
    return sorted(names[i] for i in order[n_val:]), sorted(names[i] for i in order[:n_val])


def prepare_one(name: str, work: Path, cfg: dict[str, Any]) -> tuple[Path, Path]:
    """Normalized image and foreground+contour target of one image as Zarr (cached in ``work``)."""
    img_path, tgt_path = work / "normalized" / f"{image_id(name)}.zarr", work / "targets" / f"{image_id(name)}.zarr"
    if not tgt_path.exists():
        image = read_image(DATA / "images" / name, 2)
        write_zarr(img_path, normalize(image, cfg["normalize"]))
        write_zarr(tgt_path, get_task(cfg).make_targets(read_label(DATA / "labels" / name, 2)))
    return img_path, tgt_path


def prepare(names: list[str], work: Path, cfg: dict[str, Any], jobs: int = 1) -> list[tuple[Path, Path]]:
    if jobs <= 1:
        return [prepare_one(n, work, cfg) for n in names]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(prepare_one, names, [work] * len(names), [cfg] * len(names)))


def epochs_for_budget(cfg: dict[str, Any], pairs: list, work: Path, minutes: float) -> tuple[int, float]:
    """Time two calibration epochs, then fit as many as the budget allows after loading the data.

    Returns (epochs, seconds per epoch)."""
    start = time.perf_counter()
    train_model(cfg, get_task(cfg), pairs, [], work / "calibration")
    total = time.perf_counter() - start
    per_epoch = float(pd.read_csv(work / "calibration" / "history.csv")["seconds"].mean())
    setup = max(0.0, total - 2 * per_epoch)
    return max(1, math.floor((minutes * 60 - setup) / per_epoch)), per_epoch


def evaluate(checkpoint: Path, cfg: dict[str, Any], val_pairs: list, val_names: list[str],
             tta: bool) -> dict[str, float]:
    task = get_task(cfg)
    clear_predictor_cache()
    predictor = load_predictor(checkpoint, cfg["predict"]["device"])
    pcfg = {**cfg["predict"], "tta": tta}
    tp = fp = fn = inter = union = 0.0
    f1s, seconds = [], 0.0
    for (img_path, _), name in zip(val_pairs, val_names):
        image = read_array(img_path).astype(np.float32)
        start = time.perf_counter()
        pred = predict_image(predictor.model, image, pcfg, task.activate, predictor.divisor, predictor.device)
        seconds += time.perf_counter() - start
        labels = task.postprocess(pred)
        gt = read_label(DATA / "labels" / name, 2)
        m = matching_metrics(labels, gt, [0.5])
        tp, fp, fn = tp + m["tp@0.5"], fp + m["fp@0.5"], fn + m["fn@0.5"]
        f1s.append(m["f1@0.5"])
        inter += np.count_nonzero((labels > 0) & (gt > 0))
        union += np.count_nonzero((labels > 0) | (gt > 0))
    return {"iou": inter / union, "f1_pooled": 2 * tp / (2 * tp + fp + fn), "f1_mean": float(np.nanmean(f1s)),
            "predict_s": seconds}


def main() -> None:
    global DATA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0, help="training wall time per configuration")
    parser.add_argument("--patches", type=int, help="fixed number of training patches instead of --minutes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training and prediction)")
    parser.add_argument("--jobs", type=int, default=1, help="processes preparing normalized images and targets")
    parser.add_argument("--throughput", action="store_true", help="only print training patches/s (2 epochs)")
    parser.add_argument("--data", default=str(DATA), help="DSB2018 fluo folder (images/, labels/)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep intermediate files here (default: a temporary folder)")
    parser.add_argument("--configs", default="none,default", help="augmentation settings to train: none, default")
    args = parser.parse_args()
    DATA = Path(args.data)
    if not DATA.is_dir():
        raise SystemExit(f"DSB2018 not found at {DATA}")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="no object seeds")  # an untrained model finds none
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        work = Path(args.workdir or tmp)
        train_names, val_names = split(args.seed)
        base = experiment({}, 1, args.threads, args.seed, args.device)
        start = time.perf_counter()
        train_pairs = prepare(train_names, work, base, args.jobs)
        val_pairs = prepare(val_names, work, base, args.jobs)
        prep_s = time.perf_counter() - start
        if args.throughput:
            _, epoch_s = epochs_for_budget(experiment({}, 2, args.threads, args.seed, args.device), train_pairs,
                                           work / "throughput", 1.0)
            print(f"{BASE_TRAIN['patches_per_epoch'] / epoch_s:.2f} patches/s ({epoch_s:.1f} s per epoch of "
                  f"{BASE_TRAIN['patches_per_epoch']} patches, {args.threads} threads, {args.device})")
            return
        budget = f"{args.patches} patches" if args.patches else f"{args.minutes:g} min"
        print(f"DSB2018 fluo: {len(train_names)} training / {len(val_names)} validation images (seed {args.seed}); "
              f"budget {budget} per configuration, device {args.device}, {args.threads} CPU threads; "
              f"preparation {prep_s:.0f} s\n")
        print("| augmentation | TTA | epochs | patches seen | s per epoch (calibration) | training min "
              "| predict s (val) | foreground IoU | F1@0.5 pooled | F1@0.5 mean per image |")
        print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for name in args.configs.split(","):
            augment = NO_AUGMENTATION if name == "none" else DEFAULT_AUGMENTATION
            epoch_s = math.nan
            if args.patches:
                epochs = max(1, round(args.patches / BASE_TRAIN["patches_per_epoch"]))
            else:
                epochs, epoch_s = epochs_for_budget(experiment(augment, 2, args.threads, args.seed, args.device),
                                                    train_pairs, work / f"{name}", args.minutes)
            cfg = experiment(augment, epochs, args.threads, args.seed, args.device)
            start = time.perf_counter()
            train_model(cfg, get_task(cfg), train_pairs, [], work / name / "model")
            train_min = (time.perf_counter() - start) / 60
            for tta in (False, True):
                s = evaluate(work / name / "model" / "last.pt", cfg, val_pairs, val_names, tta)
                print(f"| {name} | {'yes' if tta else 'no'} | {epochs} | {epochs * BASE_TRAIN['patches_per_epoch']} "
                      f"| {epoch_s:.1f} | {train_min:.1f} | {s['predict_s']:.0f} | {s['iou']:.3f} "
                      f"| {s['f1_pooled']:.3f} | {s['f1_mean']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
