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
import resource
import shutil
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


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and its children) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def snakemake(work: Path, cfg: Path, *args: str) -> tuple[float, float]:
    return timed([sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
                  str(work), "--configfile", str(cfg), "--cores", "2", "--quiet", "all", *args])


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


def loop(work: Path, cfg: dict, n: int) -> None:
    """The same per-image work as the workflow's jobs, in one process, writing every output."""
    cfg = validate_config(cfg)
    task = get_task(cfg)
    model = str(work / "results" / "bench" / "model" / "best.pt")
    out = work / "loop"
    shutil.rmtree(out, ignore_errors=True)
    folder = work / "data" / "test"
    ids = sorted(p.stem for p in (folder / "images").glob("*.tif"))[:n]
    stages.predict_batch(model=model, images=[str(folder / "images" / f"{i}.tif") for i in ids],
                         outs=[str(out / "p" / f"{i}.zarr") for i in ids], marker=str(out / "p.done"), task=task,
                         axes=None, normalize=cfg["normalize"], predict=cfg["predict"])
    stages.postprocess_batch(predictions=[str(out / "p" / f"{i}.zarr") for i in ids],
                             outs=[str(out / "m" / f"{i}.tif") for i in ids],
                             metrics=[str(out / "e" / f"{i}.csv") for i in ids],
                             images=[str(folder / "images" / f"{i}.tif") for i in ids],
                             labels=[str(folder / "labels" / f"{i}.tif") for i in ids], sides=[{} for _ in ids],
                             image_ids=ids, marker=str(out / "m.done"), task=task, axes=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three ways, interleaved; best kept")
    parser.add_argument("--loop", metavar="WORKDIR", help=argparse.SUPPRESS)  # the loop's own process
    args = parser.parse_args()
    if args.loop:
        loop(Path(args.loop), config(Path(args.loop), args.threads), args.images)
        return
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        work = Path(tmp)
        make_images(work, args.images)
        cfg = config(work, args.threads)
        cfg_path = work / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        first, _ = snakemake(work, cfg_path)
        rules = ("predict_batch", "postprocess_batch") if args.images > 1000 else ("predict", "postprocess")
        po_path = work / "predict_only.yaml"
        po_path.write_text(yaml.safe_dump({
            "experiment": "bench_po", "model": str(work / "results" / "bench" / "model" / "best.pt"),
            "data": {"test": cfg["data"]["test"]}, "predict": cfg["predict"]}))
        runs: dict[str, list[tuple[float, float]]] = {"loop": [], "workflow": [], "predict_only": []}
        for _ in range(args.repeats):
            runs["loop"].append(timed([sys.executable, __file__, "--loop", str(work), "--images", str(args.images),
                                       "--threads", str(args.threads)]))
            runs["workflow"].append(snakemake(work, cfg_path, "--forcerun", *rules))
            shutil.rmtree(work / "results" / "bench_po", ignore_errors=True)
            runs["predict_only"].append(snakemake(work, po_path))
            load.append(os.getloadavg()[0])
    best = {way: min(times) for way, times in runs.items()}
    jobs = "about 100 images" if args.images > 1000 else "one image"
    print(f"\n{args.images} test images of {SIZE}x{SIZE} (semantic, U-Net depth 3 width 16), predict + post-process + "
          f"score, {args.threads} threads, {os.cpu_count()} CPUs, load average {min(load):.1f}-{max(load):.1f}; "
          f"first run with training {first:.0f} s; best of {args.repeats} interleaved rounds, each way in its own "
          f"process from a cold start (imports, model load)\n")
    print("| way | wall s | CPU s | images/s | wall vs loop | CPU vs loop |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"loop": "Python loop, one process",
             "workflow": f"workflow (`snakemake`, jobs of {jobs})",
             "predict_only": f"predict-only workflow (`model:` best.pt, jobs of {jobs}, plan included)"}
    for way, (wall, cpu) in best.items():
        print(f"| {names[way]} | {wall:.1f} | {cpu:.1f} | {args.images / wall:.1f} | "
              f"{best['loop'][0] / wall:.2f} | {best['loop'][1] / cpu:.2f} |")


if __name__ == "__main__":
    main()
