"""Detection quality on real H&E cell points, and the speed of matching and suppression.

    .venv/bin/python benchmarks/bench_detection.py [--epochs N] [--workdir DIR] [--speed-only]

Quality: trains the detection workflow (real Snakemake, 2 classes, ball targets,
threshold tuned on a validation image) on the training images of
``../shared/data/bm_graz_he_cell_points`` and reports precision, recall, F1 and
localization error on the source's own test images 0007_01, 0008_01, 0020_01, at a
tolerance of 8 pixels (cells are ~15-25 pixels across, nearest neighbours ~20 apart),
class-agnostic and per class. Images are linked, never copied into the project.

Speed: optimal one-to-one matching of 100k predicted to 100k true points, close-point
suppression of 100k scored points, and peak finding on a 2048² map with ~10k peaks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from biapipe.tasks.detection.metrics import match_points
from biapipe.tasks.detection.postprocess import find_peaks, suppress_close_points

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO.parent / "shared" / "data" / "bm_graz_he_cell_points").resolve()
TEST = ["BM_GRAZ_HE_0007_01", "BM_GRAZ_HE_0008_01", "BM_GRAZ_HE_0020_01"]
VAL = ["BM_GRAZ_HE_0006_01"]
TOLERANCE = 8.0


# --------------------------------------------------------------------------- quality


def link_split(work: Path) -> Path:
    """train/val/test folders of symlinks to the shared images and points."""
    data = work / "data"
    names = sorted(p.stem for p in (DATA / "images").glob("*.tif"))
    for name in names:
        split = "test" if name in TEST else "val" if name in VAL else "train"
        for kind, suffix in (("images", ".tif"), ("points", ".csv")):
            folder = data / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / f"{name}{suffix}"
            if not link.exists():
                link.symlink_to(DATA / kind / f"{name}{suffix}")
    return data


def experiment(data: Path, epochs: int) -> dict[str, Any]:
    return {
        "experiment": "bm_graz",
        "workflow": "detection",
        "ndim": 2,
        "seed": 0,
        "data": {split: {"images": str(data / split / "images"), "labels": str(data / split / "points")}
                 for split in ("train", "val", "test")},
        "targets": {"detection": {"kind": "ball", "radius": 4.0, "classes": [1, 3]}},
        "train": {"model": {"depth": 3, "width": 8}, "patch_size": [128, 128], "batch_size": 4,
                  "epochs": epochs, "patches_per_epoch": 32, "val_patches": 16, "foreground_fraction": 0.8,
                  "threads": os.cpu_count() or 2, "early_stopping": {"patience": 15}},
        "predict": {"tile_size": [256, 256], "threads": os.cpu_count() or 2},
        "postprocess": {"detection": {"threshold": "tuned", "min_distance": 4, "suppression_radius": 8.0}},
        "evaluate": {"detection": {"tolerance": TOLERANCE}},
    }


def run_workflow(work: Path, epochs: int) -> float:
    cfgfile = work / "bm_graz.yaml"
    cfgfile.write_text(yaml.safe_dump(experiment(link_split(work), epochs), sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(work),
           "--configfile", str(cfgfile), "--cores", str(os.cpu_count() or 2), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def quality_table(work: Path, seconds: float) -> str:
    out = work / "results" / "bm_graz"
    metrics = pd.read_csv(out / "metrics.csv")
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    tuned = yaml.safe_load((out / "tuning" / "detection.json").read_text())
    history = pd.read_csv(out / "model" / "history.csv")
    lines = [f"Detection on bm_graz_he_cell_points test images (tolerance {TOLERANCE:g} px, threshold tuned on "
             f"{VAL[0]}: {tuned['threshold']:.3f}; {len(history)} epochs; whole run {seconds:.0f} s)", "",
             "| image | true | predicted | precision | recall | F1 | F1 class 1 | F1 class 3 | class acc. | loc. error (px) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in metrics.itertuples(index=False):
        r = row._asdict()
        lines.append(f"| {r['image']} | {r['n_gt']} | {r['n_pred']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['f1']:.3f} | {r['f1_class_1']:.3f} | {r['f1_class_3']:.3f} | {r['class_accuracy']:.3f} | "
                     f"{r['loc_error']:.2f} |")
    lines.append(f"| pooled | {summary['n_gt']} | {summary['n_pred']} | {summary['pooled_precision']:.3f} | "
                 f"{summary['pooled_recall']:.3f} | {summary['pooled_f1']:.3f} | {summary['pooled_f1_class_1']:.3f} | "
                 f"{summary['pooled_f1_class_3']:.3f} | {summary['mean_class_accuracy']:.3f} | "
                 f"{summary['pooled_loc_error']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- speed


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def speed_table(n: int = 100_000) -> str:
    rng = np.random.default_rng(0)
    side = float(np.sqrt(n) * 20)  # ~20 px between points, as in the H&E images
    gt = rng.uniform(0, side, size=(n, 2))
    pred = np.concatenate([gt[: int(0.9 * n)] + rng.normal(0, 2.0, size=(int(0.9 * n), 2)),
                           rng.uniform(0, side, size=(n - int(0.9 * n), 2))])
    scores = rng.random(n)
    t_match, match = best_of(lambda: match_points(pred, gt, TOLERANCE))
    t_supp, keep = best_of(lambda: suppress_close_points(pred, scores, 8.0))
    heat = np.zeros((2048, 2048), np.float32)
    peaks = rng.integers(0, 2048, size=(10_000, 2))
    heat[peaks[:, 0], peaks[:, 1]] = rng.uniform(0.5, 1.0, size=len(peaks))
    t_peaks, (coords, _) = best_of(lambda: find_peaks(heat, 0.3, 3))
    return "\n".join([
        "| operation | size | seconds | result |", "|---|---|---|---|",
        f"| match_points (KD-tree + Hungarian per group) | {n:,} vs {n:,} points, tol {TOLERANCE:g} | {t_match:.3f} | "
        f"{match.tp:,} matches |",
        f"| suppress_close_points | {n:,} points, radius 8 | {t_supp:.3f} | {int(keep.sum()):,} kept |",
        f"| find_peaks | 2048² map, 10k planted peaks | {t_peaks:.3f} | {len(coords):,} peaks |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here (default: a temp folder)")
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    print(speed_table())
    print()
    if args.speed_only:
        return
    if not DATA.is_dir():
        print(f"skipped quality: {DATA} not found")
        return
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(quality_table(args.workdir, run_workflow(args.workdir, args.epochs)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_detection_") as tmp:
        print(quality_table(Path(tmp), run_workflow(Path(tmp), args.epochs)))


if __name__ == "__main__":
    main()
