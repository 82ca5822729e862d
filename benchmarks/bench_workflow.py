"""End-to-end per-image cost through Snakemake: amortized start-up vs one process per job.

Trains a small model once on demo data, then times re-running prediction (with normalization),
post-processing and scoring for N test images (``--forcerun predict``) in two modes:

* threads (the default workflow profile, ``force-use-threads``): per-image `run:` jobs execute in
  the one Snakemake process, so ``import torch`` and the model load are paid once;
* subprocess (``--workflow-profile none``): Snakemake spawns one Python process per job, the
  usual way, paying interpreter start, imports and model load for every image and stage.

Prints a markdown table. Usage: python benchmarks/bench_workflow.py [--images 24] [--size 256]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(work: Path, cfg: Path, *args: str) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(work),
           "--configfile", str(cfg), "--cores", "2", "--quiet", "all", *args]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = {
            "experiment": "bench", "workflow": "semantic", "ndim": 2, "seed": 0,
            "data": {"demo": {"folder": str(work / "data"), "n_train": 4, "n_val": 1, "n_test": args.images, "size": args.size}},
            "targets": {"binarize": True},
            "train": {"model": {"depth": 3, "width": 16}, "patch_size": [64, 64], "epochs": 1, "patches_per_epoch": 8},
            "predict": {"tile_size": [256, 256], "mode": "tiled"},
        }
        cfg_path = work / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        first = snakemake(work, cfg_path)
        rows = []
        for mode, extra in (("threads (default)", ()), ("subprocess per job", ("--workflow-profile", "none"))):
            seconds = snakemake(work, cfg_path, "--forcerun", "predict", *extra)
            rows.append((mode, seconds, seconds / args.images))
    print(f"\nPer-image stages (predict with normalization + postprocess with scoring + aggregate) for {args.images} images of "
          f"{args.size}x{args.size}, 2 cores; first full run incl. training: {first:.1f} s\n")
    print("| mode | wall s | s per image |")
    print("|---|---|---|")
    for mode, seconds, per in rows:
        print(f"| {mode} | {seconds:.1f} | {per:.3f} |")


if __name__ == "__main__":
    main()
