"""Training on a volume larger than memory, default settings: block-wise preparation, patches read
from disk, peak RSS per phase, patches/s beside the in-memory path.

A synthetic labelled uint16 volume of ``--gb`` gigabytes (blobs on noise, label = blobs) is
written slab by slab into Zarr. Then, each phase in a fresh process so its peak RSS is its own:

- ``stats``: dataset normalization statistics (the example's percentile scope), block by block;
- ``prepare``: the prepare stage (normalized image and targets, block by block over
  ``train.memory_gb``);
- ``train``: the 3D example's network and patch (``config/examples/semantic_3d.yaml``: U-Net
  depth 2, width 8, patches 16x32x32, batch 2), ``--patches`` patches of one epoch, half of them
  foreground-centred, no validation; reported: set-up (foreground index), data-only patches/s,
  training patches/s. With ``--compare`` the same run the other way: on disk (``train.memory_gb``
  0.25) when the default held the pair in memory, in memory when it did not (only for volumes
  that fit this machine's RAM).

    .venv/bin/python benchmarks/bench_large_training.py [--gb 1 8] [--compare 1] [--patches 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
import zarr

from bench_large import PeakRSS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "semantic_3d.yaml"


def generate(workdir: Path, gb: float, chunks=(32, 256, 256), seed: int = 0) -> tuple[int, ...]:
    """Image and label stores, one slab of chunks at a time."""
    yx = 2048 if gb >= 1 else 1024
    z = max(32, round(gb * 2**30 / (2 * yx * yx) / 32) * 32)
    shape = (z, yx, yx)
    image = zarr.create_array(store=str(workdir / "image.zarr"), shape=shape, dtype=np.uint16, chunks=chunks,
                              overwrite=True)
    label = zarr.create_array(store=str(workdir / "label.zarr"), shape=shape, dtype=np.uint8, chunks=chunks,
                              overwrite=True)
    rng = np.random.default_rng(seed)
    y = np.arange(yx) / 23.0
    x = np.arange(yx) / 29.0
    for z0 in range(0, z, chunks[0]):
        n = min(chunks[0], z - z0)
        phase = (z0 + np.arange(n)) / 7.0
        blob = (np.sin(y[None, :, None] + phase[:, None, None]) + np.cos(x)[None, None, :]) > 1.2
        label[z0:z0 + n] = blob.astype(np.uint8)
        image[z0:z0 + n] = rng.integers(0, 200, blob.shape, dtype=np.uint16) + 3000 * blob.astype(np.uint16)
    return shape


def config(memory_gb: float | None, patches: int) -> dict:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["data"] = {"train": {"images": "unused"}}
    cfg["train"].update(epochs=1, patches_per_epoch=patches, val_fraction=0.0, threads=2, num_workers=0)
    if memory_gb is not None:
        cfg["train"]["memory_gb"] = memory_gb
    return cfg


def phase(name: str, workdir: Path, memory_gb: float | None, patches: int) -> dict:
    from biapipe.core.config import validate_config
    from biapipe.tasks import get_task
    from biapipe.workflow import stages

    cfg = validate_config(config(memory_gb, patches))
    task = get_task(cfg)
    out: dict = {"phase": name, "train.memory_gb": cfg["train"]["memory_gb"]}
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        if name == "stats":
            manifest = workdir / "manifest.json"
            manifest.write_text(json.dumps({"images": [str(workdir / "image.zarr")]}))
            stages.normalize_stats(manifest=str(manifest), out=str(workdir / "stats.json"), ndim=3, axes="ZYX",
                                   normalize=cfg["normalize"], memory_gb=cfg["train"]["memory_gb"])
        elif name == "prepare":
            stages.prepare(image=str(workdir / "image.zarr"), label=str(workdir / "label.zarr"),
                           image_out=str(workdir / "normalized.zarr"), targets_out=str(workdir / "targets.zarr"),
                           task=task, axes="ZYX", normalize=cfg["normalize"], memory_gb=cfg["train"]["memory_gb"],
                           patch_size=cfg["train"]["patch_size"], stats=str(workdir / "stats.json"))
        else:
            out.update(train(cfg, task, workdir))
        out["seconds"] = time.perf_counter() - t0
    out["peak_rss_gb"] = rss.peak / 2**30
    return out


def train(cfg, task, workdir: Path) -> dict:
    from biapipe.training.loop import train_model

    pairs = [(str(workdir / "normalized.zarr"), str(workdir / "targets.zarr"))]
    t0 = time.perf_counter()
    data = task.build_datasets(pairs, [])
    setup = time.perf_counter() - t0
    on_disk = type(data.train.sampler.samples[0].image).__name__ != "ndarray"
    t0 = time.perf_counter()
    for i in range(len(data.train)):
        data.train[i]
    data_rate = len(data.train) / (time.perf_counter() - t0)
    del data
    t0 = time.perf_counter()
    train_model(cfg, task, pairs, [], workdir / f"model_{'disk' if on_disk else 'memory'}")
    wall = time.perf_counter() - t0
    return {"images": "on disk" if on_disk else "in memory", "setup_s": setup, "data_patches_s": data_rate,
            "train_patches_s": cfg["train"]["patches_per_epoch"] / max(wall - setup, 1e-9)}


def run_phase(name: str, workdir: Path, memory_gb: float | None, patches: int) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--workdir", str(workdir), "--patches", str(patches)]
    if memory_gb is not None:
        cmd += ["--memory-gb", str(memory_gb)]
    return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, nargs="+", default=[1.0, 8.0])
    ap.add_argument("--compare", type=float, nargs="*", default=[1.0],
                    help="sizes also trained with the pair in memory")
    ap.add_argument("--patches", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_large_training"))
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--memory-gb", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.workdir, args.memory_gb, args.patches)))
        return
    rows = []
    for gb in args.gb:
        work = args.workdir / f"{gb:g}gb"
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        shape = generate(work, gb)
        print(f"# {gb:g} GB: {'x'.join(map(str, shape))} uint16 written in {time.perf_counter() - t0:.0f} s",
              flush=True)
        for name in ("stats", "prepare", "train"):
            rows.append({"gb": gb, **run_phase(name, work, None, args.patches)})
            print(json.dumps(rows[-1]), flush=True)
        if gb in args.compare:  # the other way of holding the pair, same patches
            other = 0.25 if rows[-1]["images"] == "in memory" else 1000.0
            rows.append({"gb": gb, **run_phase("train", work, other, args.patches)})
            print(json.dumps(rows[-1]), flush=True)
        subprocess.run(["rm", "-rf", str(work)], check=True)
    print("\n| volume | phase | train.memory_gb | images | seconds | peak RSS GB | set-up s | data patches/s "
          "| training patches/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gb']:g} GB | {r['phase']} | {r['train.memory_gb']:g} | {r.get('images', '')} "
              f"| {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r.get('setup_s', float('nan')):.1f} "
              f"| {r.get('data_patches_s', float('nan')):.0f} | {r.get('train_patches_s', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
