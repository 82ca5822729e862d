"""End-to-end throughput for many small test images: Snakemake vs the same work in one Python loop.

Trains a small model once on demo data, then predicts, post-processes and scores N test images
of 64x64 (hard links of one demo image, so making 10,000 takes seconds) two ways, on the same
machine and threads:

* the workflow (``snakemake --forcerun`` of the prediction rules): parse, header checks, DAG,
  then one predict and one post-processing job per batch of about 100 images
  (``predict.batch_images: auto``), each image with its own outputs;
* one Python loop over the images calling the same library functions (normalize, tiled
  prediction, post-processing, scoring, writing each output): the floor no workflow can beat;
* a predict-only run (config key ``model``: the experiment's best.pt) over the same images:
  the same jobs without the training experiment around them.

Goal: the workflow within 20 % of the loop. Prints a markdown table.

    .venv/bin/python benchmarks/bench_throughput.py [--images 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from biapipe.core.config import validate_config
from biapipe.data.demo import make_demo_data
from biapipe.tasks import get_task
from biapipe.workflow import stages

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def snakemake(work: Path, cfg: Path, *args: str) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(work),
           "--configfile", str(cfg), "--cores", "2", "--quiet", "all", *args]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def config(work: Path, threads: int) -> dict:
    data = work / "data"
    return {"experiment": "bench", "workflow": "semantic", "ndim": 2, "seed": 0,
            "data": {s: {"images": str(data / s / "images"), "labels": str(data / s / "labels")}
                     for s in ("train", "val", "test")},
            "targets": {"binarize": True},
            "train": {"model": {"depth": 3, "width": 16}, "patch_size": [64, 64], "epochs": 1, "patches_per_epoch": 8,
                      "threads": threads},
            "predict": {"tile_size": [SIZE, SIZE], "threads": threads}}


def make_images(work: Path, n: int) -> None:
    make_demo_data(work / "data", 2, 4, 1, 1, SIZE, seed=0)
    for kind in ("images", "labels"):
        folder = work / "data" / "test" / kind
        source = folder / "test_000.tif"
        for i in range(1, n):
            os.link(source, folder / f"test_{i:06d}.tif")


def loop(work: Path, cfg: dict, n: int) -> float:
    """The same per-image work as the workflow's jobs, in one process, writing every output."""
    cfg = validate_config(cfg)
    task = get_task(cfg)
    model = str(work / "results" / "bench" / "model" / "best.pt")
    out = work / "loop"
    folder = work / "data" / "test"
    ids = sorted(p.stem for p in (folder / "images").glob("*.tif"))[:n]
    start = time.perf_counter()
    stages.predict_batch(model=model, images=[str(folder / "images" / f"{i}.tif") for i in ids],
                         outs=[str(out / "p" / f"{i}.zarr") for i in ids], marker=str(out / "p.done"), task=task,
                         axes=None, normalize=cfg["normalize"], predict=cfg["predict"])
    stages.postprocess_batch(predictions=[str(out / "p" / f"{i}.zarr") for i in ids],
                             outs=[str(out / "m" / f"{i}.tif") for i in ids],
                             metrics=[str(out / "e" / f"{i}.csv") for i in ids],
                             images=[str(folder / "images" / f"{i}.tif") for i in ids],
                             labels=[str(folder / "labels" / f"{i}.tif") for i in ids], sides=[{} for _ in ids],
                             image_ids=ids, marker=str(out / "m.done"), task=task, axes=None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        work = Path(tmp)
        make_images(work, args.images)
        cfg = config(work, args.threads)
        cfg_path = work / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        first = snakemake(work, cfg_path)
        rules = ("predict_batch", "postprocess_batch") if args.images > 1000 else ("predict", "postprocess")
        workflow_s = snakemake(work, cfg_path, "--forcerun", *rules)
        loop_s = loop(work, cfg, args.images)
        po_path = work / "predict_only.yaml"
        po_path.write_text(yaml.safe_dump({
            "experiment": "bench_po", "model": str(work / "results" / "bench" / "model" / "best.pt"),
            "data": {"test": cfg["data"]["test"]}, "predict": cfg["predict"]}))
        predict_only_s = snakemake(work, po_path)
    print(f"\n{args.images} test images of {SIZE}x{SIZE} (semantic, U-Net depth 3 width 16), predict + post-process + "
          f"score, {args.threads} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; first "
          f"run with training {first:.0f} s\n")
    print("| way | wall s | images/s | vs loop |")
    print("|---|---:|---:|---:|")
    print(f"| Python loop, one process | {loop_s:.1f} | {args.images / loop_s:.1f} | 1.00 |")
    jobs = 'about 100 images' if args.images > 1000 else 'one image'
    print(f"| workflow (`snakemake`, jobs of {jobs}) | "
          f"{workflow_s:.1f} | {args.images / workflow_s:.1f} | {loop_s / workflow_s:.2f} |")
    print(f"| predict-only workflow (`model:` best.pt, jobs of {jobs}) | "
          f"{predict_only_s:.1f} | {args.images / predict_only_s:.1f} | {loop_s / predict_only_s:.2f} |")


if __name__ == "__main__":
    main()
