"""Fine-tuning (``train.init``) against training from scratch, on 10 % of a new dataset.

Source model: the instance workflow (foreground + contour, U-Net depth 3 width 16) trained on
DSB2018 fluorescence nuclei (``dsb2018_train_fluo``, all 541 images) for ``--pretrain``
patches. Target data: ``ctc_fluo_n2dl_hela_02_errseg`` (widefield HeLa nuclei, another lab and
microscope, 20 frames of 700x1100 uint16): 10 % of it, frames t000 and t001, is the training
set; frames t010-t019 (later in time: frames of one time-lapse are near-duplicates, so never
split them at random) are the test set. Every configuration trains on the two frames for the
same ``--patches`` and is scored on the ten test frames with the default watershed, pooled
F1 at IoU 0.5 and 0.75 (``last.pt``; nothing is selected on test data):

* scratch: random initialization, lr 2e-3 (the quality benchmark's setting);
* fine-tuned: ``train.init`` = the DSB model, lr 1e-3;
* fine-tuned, encoder frozen for the first epochs and slower afterwards (``train.fine_tune``);
* the DSB model as it is (no training on HeLa), and scratch with 4x the patches, for scale.

The library is called directly (normalize -> targets -> train_model -> predict ->
postprocess -> matching), in a temporary folder. Prints one markdown table.

    .venv/bin/python benchmarks/bench_finetune.py [--pretrain 2560] [--patches 512] [--threads 2] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biapipe.core.config import validate_config
from biapipe.core.imageio import image_id, read_image, read_label, write_zarr
from biapipe.data.normalize import normalize
from biapipe.inference.predict import predict_image
from biapipe.inference.predictor import clear_predictor_cache, load_predictor
from biapipe.tasks import get_task
from biapipe.tasks.instance.metrics import matching_metrics
from biapipe.training.loop import train_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE, TARGET = SHARED / "dsb2018_train_fluo", SHARED / "ctc_fluo_n2dl_hela_02_errseg"
TARGET_TRAIN = ["t000", "t001"]
TARGET_TEST = [f"t{i:03d}" for i in range(10, 20)]
PATCHES_PER_EPOCH = 64


def experiment(epochs: int, threads: int, seed: int, **train: Any) -> dict[str, Any]:
    return validate_config({
        "experiment": "bench_finetune", "workflow": "instance", "ndim": 2, "seed": seed,
        "data": {"train": {"images": "."}},
        "train": {"model": {"arch": "unet", "depth": 3, "width": 16, "norm": "batch"}, "patch_size": [128, 128],
                  "batch_size": 8, "patches_per_epoch": PATCHES_PER_EPOCH, "epochs": epochs,
                  "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001}, "scheduler": "cosine",
                  "warmup_epochs": 1, "device": "cpu", "threads": threads, "early_stopping": {"patience": epochs + 1},
                  **train},
        "predict": {"mode": "whole", "threads": threads, "device": "cpu"},
    })


def prepare(folder: Path, names: list[str], work: Path, cfg: dict[str, Any]) -> list[tuple[Path, Path]]:
    """Normalized images and targets as Zarr (cached in ``work``)."""
    pairs = []
    for name in names:
        image, target = work / f"{name}.zarr", work / f"{name}_t.zarr"
        if not target.exists():
            write_zarr(image, normalize(read_image(folder / "images" / f"{name}.tif", 2), cfg["normalize"]))
            write_zarr(target, get_task(cfg).make_targets(read_label(folder / "labels" / f"{name}.tif", 2)))
        pairs.append((image, target))
    return pairs


def score(checkpoint: Path, cfg: dict[str, Any], folder: Path = TARGET,
          names: list[str] = TARGET_TEST) -> dict[str, float]:
    """Pooled F1 at IoU 0.5 and 0.75 over the test images ``names`` of ``folder``."""
    task = get_task(cfg)
    clear_predictor_cache()
    predictor = load_predictor(checkpoint, "cpu")
    counts = {t: np.zeros(3) for t in (0.5, 0.75)}
    for name in names:
        image = normalize(read_image(folder / "images" / f"{name}.tif", 2), cfg["normalize"])
        pred = predict_image(predictor.model, image, cfg["predict"], task.activate, predictor.divisor, predictor.device)
        m = matching_metrics(task.postprocess(pred), read_label(folder / "labels" / f"{name}.tif", 2), [0.5, 0.75])
        for t in counts:
            counts[t] += [m[f"tp@{t}"], m[f"fp@{t}"], m[f"fn@{t}"]]
    return {f"f1@{t}": 2 * c[0] / (2 * c[0] + c[1] + c[2]) for t, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain", type=int, default=2560, help="patches of 128² for the DSB source model")
    parser.add_argument("--patches", type=int, default=512, help="patches of 128² on the two HeLa frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", help="keep intermediate files (and the source model) here")
    args = parser.parse_args()
    if not SOURCE.is_dir() or not TARGET.is_dir():
        raise SystemExit(f"real data not found under {SHARED}")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="no object seeds")
    torch.set_num_threads(args.threads)
    epochs = max(1, args.patches // PATCHES_PER_EPOCH)
    rows: list[tuple[str, int, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        work = Path(args.workdir or tmp)
        base = experiment(1, args.threads, 0)
        start = time.perf_counter()
        names = sorted(image_id(p.name) for p in (SOURCE / "images").glob("*.tif"))
        source_pairs = prepare(SOURCE, names, work / "dsb", base)
        target_pairs = prepare(TARGET, TARGET_TRAIN, work / "hela", base)
        prep_s = time.perf_counter() - start
        source = work / "source" / "last.pt"
        start = time.perf_counter()
        if not source.exists():
            cfg = experiment(max(1, args.pretrain // PATCHES_PER_EPOCH), args.threads, 0)
            train_model(cfg, get_task(cfg), source_pairs, [], source.parent)
        pretrain_min = (time.perf_counter() - start) / 60
        rows.append(("DSB model as it is (no HeLa training)", 0, 0.0, score(source, base)))
        runs = [("scratch", epochs, {}),
                ("fine-tuned (train.init)", epochs, {"init": str(source), "optimizer": {"lr": 0.001}}),
                ("fine-tuned, encoder frozen 2 epochs then at 0.3x lr", epochs,
                 {"init": str(source), "optimizer": {"lr": 0.001},
                  "fine_tune": {"freeze_encoder_epochs": 2, "encoder_lr_factor": 0.3}}),
                ("scratch, 4x the patches", 4 * epochs, {})]
        for seed in args.seeds:
            for label, n_epochs, train in runs:
                cfg = experiment(n_epochs, args.threads, seed, **train)
                out = work / f"{label.split()[0]}_{len(train)}_{n_epochs}_{seed}"
                start = time.perf_counter()
                train_model(cfg, get_task(cfg), target_pairs, [], out)
                minutes = (time.perf_counter() - start) / 60
                rows.append((f"{label}, seed {seed}", n_epochs * PATCHES_PER_EPOCH, minutes, score(out / "last.pt", cfg)))
                print(rows[-1], flush=True)
    print(f"\nSource: DSB2018 fluo, {len(names)} images, {args.pretrain} patches ({pretrain_min:.1f} min). Target: HeLa "
          f"(CTC N2DL-HeLa 02) frames {', '.join(TARGET_TRAIN)} for training, {TARGET_TEST[0]}-{TARGET_TEST[-1]} for "
          f"testing; preparation {prep_s:.0f} s; {args.threads} threads, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; no GPU\n")
    print("| start | patches on HeLa | training min | F1@0.5 pooled | F1@0.75 pooled |")
    print("|---|---:|---:|---:|---:|")
    for label, patches, minutes, s in rows:
        print(f"| {label} | {patches} | {minutes:.1f} | {s['f1@0.5']:.3f} | {s['f1@0.75']:.3f} |")


if __name__ == "__main__":
    main()
