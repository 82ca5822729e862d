"""Large volumes: block-wise prediction + post-processing with flat peak memory.

A synthetic uint16 volume of ``--gb`` gigabytes is generated chunk by chunk into a Zarr
store (never whole in memory), predicted block by block with a tiny 3D U-Net into a
prediction Zarr, then thresholded into an OME-Zarr mask. Each size runs in a fresh
process so its peak RSS (sampled by a thread, and ``ru_maxrss``) is its own.

    .venv/bin/python benchmarks/bench_large.py --gb 1 2 [--memory-gb 1] [--workdir /tmp/bench_large]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import zarr


def synthetic_volume(path: Path, gb: float, chunks=(32, 256, 256), seed: int = 0) -> tuple[int, ...]:
    """Blobs on noise, written one z-slab of chunks at a time."""
    yx = 2048 if gb >= 1 else 1024
    z = max(32, int(round(gb * 2**30 / (2 * yx * yx) / 32)) * 32)
    shape = (z, yx, yx)
    arr = zarr.create_array(store=str(path), shape=shape, dtype=np.uint16, chunks=chunks, overwrite=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((yx, yx))
    for z0 in range(0, z, chunks[0]):
        slab = rng.integers(0, 200, (min(chunks[0], z - z0), yx, yx), dtype=np.uint16)
        blobs = ((np.sin(yy / 23.0 + z0) + np.cos(xx / 29.0)) > 1.2).astype(np.uint16) * 3000
        arr[z0:z0 + slab.shape[0]] = slab + blobs
    return shape


class PeakRSS:
    """Samples this process's RSS every few milliseconds on a thread."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_size(gb: float, memory_gb: float, workdir: Path) -> dict[str, float]:
    import torch

    from biapipe.large.labels import semantic_blocks
    from biapipe.large.lazy import open_lazy
    from biapipe.large.predict import BlockPredictor, create_prediction_store, plan_blocks, prediction_chunks
    from biapipe.models import UNet
    from biapipe.omezarr import create_ome_zarr
    from biapipe.predict import make_batch_fn, prepare_model

    torch.manual_seed(0)
    torch.set_num_threads(2)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shape = synthetic_volume(workdir / "raw.zarr", gb)
    t_gen = time.perf_counter() - t0
    model = prepare_model(UNet(3, 1, 2, depth=2, width=4), torch.device("cpu"))
    fn = make_batch_fn(model, lambda x: torch.softmax(x, 1), torch.device("cpu"))
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        image = open_lazy(workdir / "raw.zarr", 3)
        out_shape = shape + (2,)
        chunks = prediction_chunks(out_shape, 3)
        blocks = plan_blocks(shape, chunks[:-1], 1, 2, memory_gb)
        pred = create_prediction_store(workdir / "pred.zarr", out_shape, chunks)
        predictor = BlockPredictor(image, fn, (32, 128, 128), overlap=0.125, batch_size=2, divisor=4)
        for block in blocks:
            pred[block.slices] = predictor.predict(block)
        t_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        mask = create_ome_zarr(workdir / "mask.ome.zarr", shape, np.uint8, chunks[:-1], "zyx", [1.0, 0.5, 0.5])
        semantic_blocks(pred, mask, blocks, workdir / "components.zarr", 0.5, 3, 0)
        t_post = time.perf_counter() - t0
    voxels = math.prod(shape)
    return {"gb": gb, "shape": "x".join(map(str, shape)), "blocks": len(blocks),
            "peak_rss_gb": rss.peak / 2**30, "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "gen_s": t_gen, "predict_s": t_pred, "post_s": t_post,
            "predict_mvox_s": voxels / t_pred / 1e6, "post_mvox_s": voxels / t_post / 1e6,
            "tile_overhead": predictor.tiles_run / len(predictor.grid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--memory-gb", type=float, default=1.0, help="block budget (predict.memory_gb)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_large"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.gb[0], args.memory_gb, args.workdir)))
        shutil.rmtree(args.workdir, ignore_errors=True)
        return
    rows = []
    for gb in args.gb:
        cmd = [sys.executable, __file__, "--one", "--gb", str(gb), "--memory-gb", str(args.memory_gb),
               "--workdir", str(args.workdir / f"{gb:g}gb")]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    print("| input GB | shape (ZYX) | blocks | peak RSS (GB) | predict Mvox/s | post Mvox/s | tiles run / grid |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gb']:g} | {r['shape']} | {r['blocks']} | {max(r['peak_rss_gb'], r['maxrss_gb']):.2f} | "
              f"{r['predict_mvox_s']:.2f} | {r['post_mvox_s']:.2f} | {r['tile_overhead']:.2f} |")


if __name__ == "__main__":
    main()
