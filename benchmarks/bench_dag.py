"""How long Snakemake takes to parse the workflow and build the DAG (`snakemake -n`) for
datasets of many images; prints a markdown table.

    .venv/bin/python benchmarks/bench_dag.py                      # 1,000 / 10,000 / 50,000 images
    .venv/bin/python benchmarks/bench_dag.py --sizes 10000 --profile prof.out   # + cProfile of one run

The images are real 16x16 uint8 TIFFs, but only one image and one label file is written:
every other file is a hard link to them, so making 100,000 pairs takes seconds and the
header checks still open, stat and parse every path (a link is a file like any other).
``--train`` images (default 20, validation carved out by `train.val_fraction`) are training
images, the rest are test images with labels: one `prepare` job per training image, and per
batch of test images (``predict.batch_images: auto``: one image per job up to 32 test
images, else about 100 in at least 4 jobs) one `predict` and one `postprocess` job.

Two timings per size: `cold`, the first parse (every header read, probe cache written to
`.snakemake/biapipe/probe-cache.json`), and `warm`, a second parse with the cache (what
every later `snakemake` call, and every cluster job, pays). Targets on 2 quiet cores: 10,000
images in < 10 s, 100,000 in < 60 s.
Wall and CPU seconds of the Snakemake process are both shown: on a shared machine the wall
time grows with the load, the CPU time hardly. `--smk-profile profiles/slurm` adds a profile
(e.g. to see what the cluster profile's groups cost; docs/cluster.md, "Scale").
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

import numpy as np
import tifffile
import yaml

from biapipe.workflow.smk import batch_count

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = Path(os.environ.get("BIAPIPE_BENCH_SNAKEFILE", REPO / "workflow" / "Snakefile"))
SIZE = 16
LINKS_PER_FILE = 50_000


def make_dataset(root: Path, n_images: int, n_train: int) -> None:
    """n_images image/label pairs: a few real TIFFs, everything else hard links to them (a new
    original every LINKS_PER_FILE links: file systems cap the links of one file)."""
    proto = root / "proto"
    proto.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    label = (rng.random((SIZE, SIZE)) > 0.5).astype(np.uint8)
    made = 0
    for split, ids in (("train", range(n_train)), ("test", range(n_train, n_images))):
        for kind, arr in (("images", image), ("labels", label)):
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in ids:
                src = proto / f"{kind}_{made // LINKS_PER_FILE}.tif"
                if not src.exists():
                    tifffile.imwrite(src, arr)
                os.link(src, folder / f"img_{i:06d}.tif")
                made += 1


def make_model(path: Path) -> Path:
    """A checkpoint of the benchmark's network (random weights): what a predict-only run plans with."""
    from biapipe.core.config import validate_config
    from biapipe.models.checkpoint import checkpoint_dict, save_checkpoint
    from biapipe.models.info import model_meta
    from biapipe.models.registry import build_model
    from biapipe.tasks import get_task

    cfg = validate_config({**config(path.parent), "data": {"train": {"images": "."}}})
    spec = get_task(cfg).model_spec(1)
    save_checkpoint(path, checkpoint_dict(spec, build_model(spec).state_dict(), 1, 0.0, "semantic", "val_loss",
                                          config=model_meta(cfg)))
    return path


def predict_only_config(root: Path, model: Path) -> dict:
    """Only test images (every image of the dataset) and a model: nothing is trained."""
    return {"experiment": "bench", "model": str(model),
            "data": {"test": {"images": str(root / "test" / "images"), "labels": str(root / "test" / "labels")}},
            "predict": {"tile_size": [SIZE, SIZE]}}


def config(root: Path) -> dict:
    return {
        "experiment": "bench",
        "workflow": "semantic",
        "ndim": 2,
        "seed": 0,
        "data": {s: {"images": str(root / s / "images"), "labels": str(root / s / "labels")} for s in ("train", "test")},
        "targets": {"classes": 2, "binarize": True},
        "train": {"patch_size": [SIZE, SIZE]},
        "predict": {"tile_size": [SIZE, SIZE]},
    }


def dry_run(workdir: Path, cfgfile: Path, profile_out: str | None = None, extra: list[str] = ()) -> tuple[float, float]:
    cmd = [sys.executable]
    if profile_out:
        cmd += ["-m", "cProfile", "-o", profile_out]
    cmd += ["-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir)]
    cmd += ["--configfile", str(cfgfile), "--cores", "2", "-n", "--quiet", *extra]
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--train", type=int, default=20, help="training images (the rest are test images)")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the warm run of the last size to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the generated datasets (printed paths)")
    ap.add_argument("--smk-profile", metavar="DIR", help="also pass --profile DIR (e.g. profiles/slurm: groups)")
    ap.add_argument("--predict-only", action="store_true",
                    help="every image is a test image, predicted with a given checkpoint (config key model)")
    args = ap.parse_args()
    extra = ["--profile", str(Path(args.smk_profile).resolve())] if args.smk_profile else []

    rows = []
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix=f"bench_dag_{n}_"))
        try:
            t0 = time.perf_counter()
            make_dataset(root / "data", n, 0 if args.predict_only else args.train)
            t_make = time.perf_counter() - t0
            cfgfile = root / "cfg.yaml"
            cfg = predict_only_config(root / "data", make_model(root / "model.pt")) if args.predict_only \
                else config(root / "data")
            cfgfile.write_text(yaml.safe_dump(cfg))
            cold = dry_run(root, cfgfile, extra=extra)
            warm = dry_run(root, cfgfile, extra=extra)
            if args.profile and n == args.sizes[-1]:
                dry_run(root, cfgfile, args.profile, extra=extra)
            rows.append((n, t_make, cold, warm))
            print(f"{n} images: cold {cold[0]:.1f} s, warm {warm[0]:.1f} s (cpu {warm[1]:.1f} s)", file=sys.stderr)
        finally:
            if args.keep:
                print(f"kept {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)

    where = f" --profile {args.smk_profile}" if args.smk_profile else ""
    what = "predict-only (model: a checkpoint), every image a test image" if args.predict_only else \
        f"{args.train} training images, the rest test images"
    print(f"\n`snakemake -n{where}` (parse, header checks, DAG, dry-run schedule); semantic 2D, {what};")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (wall time grows with load, CPU time less)\n")
    print("| images | jobs | cold wall (s) | cold CPU (s) | warm wall (s) | warm CPU (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, _, cold, warm in rows:
        if args.predict_only:  # predict + postprocess per batch, aggregate, report, all
            jobs = 2 * batch_count(n, "auto") + 3
        else:  # prepare per training image, predict + postprocess per batch
            jobs = args.train + 2 * batch_count(n - args.train, "auto") + 4
        print(f"| {n:,} | {jobs:,} | {cold[0]:.1f} | {cold[1]:.1f} | {warm[0]:.1f} | {warm[1]:.1f} |")


if __name__ == "__main__":
    main()
