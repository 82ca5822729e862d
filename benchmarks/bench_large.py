"""Large volumes: block-wise prediction + post-processing with flat peak memory.

A synthetic uint16 volume of ``--gb`` gigabytes is generated slab by slab into a Zarr
store (never whole in memory), predicted block by block into a one-channel (sigmoid) float32
prediction Zarr, then thresholded (+ z median 3) into an OME-Zarr mask. Each size runs in a
fresh process so its peak RSS (sampled by a thread, and ``ru_maxrss``) is its own, and its
work directory is deleted once it is measured (8 GB of input make ~15 GB of zstd stores).

``--model example`` is the U-Net of ``config/examples/semantic_3d.yaml`` (depth 2, width 8,
batch norm). ``--model minimal`` (the default from 1 GB up) is the smallest real network: one 3x3x3
convolution (a fixed local mean, 1 -> 1 channel) and a sigmoid, so the figures measure the
block machinery (lazy reads, tiling, blending, Zarr writes, post-processing), not
convolution FLOPs; ``--model unet`` is a tiny 3D U-Net (depth 2, width 4), ~1 Mvox/s
on 2 CPU cores, too slow for gigabytes.

    .venv/bin/python benchmarks/bench_large.py [--gb 1 4 8] [--memory-gb 1] [--model minimal|unet]
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
from typing import Self

import numpy as np
import psutil
import zarr


def synthetic_volume(path: Path, gb: float, chunks=(32, 256, 256), seed: int = 0,
                     slab_chunks: int = 2) -> tuple[int, ...]:
    """Blobs on noise, written ``slab_chunks`` z-slabs of chunks per write.

    The blob pattern sin(y/23 + z/7) + cos(x/29) > 1.2 is separable: per plane it is one
    broadcast comparison of 1D profiles (the sine's phase shift is a rotation of two
    precomputed profiles), so no 2D trigonometry is recomputed.
    """
    yx = 2048 if gb >= 1 else 1024
    z = max(32, round(gb * 2**30 / (2 * yx * yx) / 32) * 32)
    shape = (z, yx, yx)
    arr = zarr.create_array(store=str(path), shape=shape, dtype=np.uint16, chunks=chunks, overwrite=True)
    rng = np.random.default_rng(seed)
    y = np.arange(yx, dtype=np.float64) / 23.0
    sin_y, cos_y = np.sin(y)[:, None], np.cos(y)[:, None]
    cos_x = np.cos(np.arange(yx, dtype=np.float64) / 29.0)[None, :]
    step = chunks[0] * slab_chunks
    for z0 in range(0, z, step):
        slab = rng.integers(0, 200, (min(step, z - z0), yx, yx), dtype=np.uint16)
        for i, plane in enumerate(slab):
            phase = (z0 + i) / 7.0  # sin(y + p) = sin(y) cos(p) + cos(y) sin(p)
            blob = (sin_y * np.cos(phase) + cos_y * np.sin(phase) + cos_x) > 1.2
            plane[blob] += 3000
        arr[z0:z0 + slab.shape[0]] = slab
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

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_model(kind: str):
    """The network, 1 input and 1 output channel; the activation (sigmoid) is applied outside."""
    import torch

    from biapipe.models.unet import UNet

    if kind == "unet":
        return UNet(3, 1, 1, depth=2, width=4)
    if kind == "example":  # the network of config/examples/semantic_3d.yaml, one output channel
        import yaml

        from biapipe.core.config import validate_config
        from biapipe.models.registry import build_model
        from biapipe.tasks import get_task

        cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/examples/semantic_3d.yaml").read_text())
        spec = get_task(validate_config(cfg)).model_spec(1)
        return build_model({**spec, "out_channels": 1}).eval()
    if kind != "minimal":
        raise ValueError(f"unknown model {kind!r}")
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    with torch.no_grad():  # logit = (local mean - 1600) / 100: ~+15 on blobs, ~-15 on background
        conv.weight.fill_(1.0 / (27 * 100.0))
        conv.bias.fill_(-16.0)
    return torch.nn.Sequential(conv)


def one_size(gb: float, memory_gb: float, workdir: Path, model_kind: str,
             tile: tuple[int, ...] = (32, 128, 128), threads: int = 2) -> dict[str, float]:
    import torch

    from biapipe.data.lazy import open_lazy
    from biapipe.tasks.semantic.large import semantic_blocks
    from biapipe.large.predict import (
        BlockPredictor,
        create_prediction_store,
        plan_blocks,
        prediction_chunks,
    )
    from biapipe.core.omezarr import create_ome_zarr
    from biapipe.inference.predict import make_batch_fn
    from biapipe.inference.predictor import prepare_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # in a child process, so this process's ru_maxrss is the block machinery's alone
    cmd = [sys.executable, __file__, "--generate", "--gb", str(gb), "--workdir", str(workdir)]
    shape = tuple(json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout))
    t_gen = time.perf_counter() - t0
    model = prepare_model(make_model(model_kind), torch.device("cpu"))
    fn = make_batch_fn(model, torch.sigmoid, torch.device("cpu"))
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        image = open_lazy(workdir / "raw.zarr", 3)
        out_shape = shape + (1,)
        chunks = prediction_chunks(out_shape, 3)
        blocks = plan_blocks(shape, chunks[:-1], 1, 1, memory_gb, tile=tile)
        pred = create_prediction_store(workdir / "pred.zarr", out_shape, chunks)
        predictor = BlockPredictor(image, fn, tile, overlap=0.125, batch_size=2, divisor=4)
        for block in blocks:
            pred[block.slices] = predictor.predict(block)
        t_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        mask = create_ome_zarr(workdir / "mask.ome.zarr", shape, np.uint8, chunks[:-1], "zyx", [1.0, 0.5, 0.5])
        semantic_blocks(pred, mask, blocks, workdir / "components.zarr", 0.5, 3, 0)
        t_post = time.perf_counter() - t0
    voxels = math.prod(shape)
    return {"gb": gb, "shape": "x".join(map(str, shape)), "blocks": len(blocks),
            "block_shape": "x".join(map(str, blocks[0].shape)), "model": model_kind,
            "peak_rss_gb": rss.peak / 2**30, "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "gen_s": t_gen, "predict_s": t_pred, "post_s": t_post,
            "predict_mvox_s": voxels / t_pred / 1e6, "post_mvox_s": voxels / t_post / 1e6,
            "tile_overhead": predictor.tiles_run / len(predictor.grid)}


def disk_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--memory-gb", type=float, default=1.0, help="block budget (predict.memory_gb)")
    ap.add_argument("--model", choices=["minimal", "unet", "example"], default=None,
                    help="network: minimal (one 3x3x3 conv + sigmoid; default from 1 GB), unet (tiny 3D U-Net) "
                         "or example (the U-Net of config/examples/semantic_3d.yaml)")
    ap.add_argument("--tile", type=int, nargs=3, default=[32, 128, 128], help="tile ZYX")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_large"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        print(json.dumps(synthetic_volume(args.workdir / "raw.zarr", args.gb[0])))
        return
    if args.one:
        row = one_size(args.gb[0], args.memory_gb, args.workdir, args.model, tuple(args.tile), args.threads)
        row["disk_gb"] = disk_gb(args.workdir)
        shutil.rmtree(args.workdir, ignore_errors=True)
        print(json.dumps(row))
        return
    rows = []
    for gb in args.gb:
        workdir = args.workdir / f"{gb:g}gb"
        model = args.model or ("minimal" if gb >= 1 else "unet")
        cmd = [sys.executable, __file__, "--one", "--gb", str(gb), "--memory-gb", str(args.memory_gb),
               "--model", model, "--tile", *map(str, args.tile), "--threads", str(args.threads),
               "--workdir", str(workdir)]
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # also when the run failed
        row = json.loads(out.splitlines()[-1])
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmodel: {', '.join(sorted({r['model'] for r in rows}))}; block budget --memory-gb {args.memory_gb:g}; "
          f"tile {'x'.join(map(str, args.tile))}, overlap 0.125; 1 output channel (sigmoid), float32 prediction")
    print("| input GB | shape (ZYX) | blocks (shape) | peak RSS (GB) | generate s | predict Mvox/s | post Mvox/s "
          "| predict + post min | tiles run / grid | stores on disk (GB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gb']:g} | {r['shape']} | {r['blocks']} ({r['block_shape']}) | "
              f"{max(r['peak_rss_gb'], r['maxrss_gb']):.2f} | {r['gen_s']:.0f} | {r['predict_mvox_s']:.2f} | "
              f"{r['post_mvox_s']:.2f} | {(r['predict_s'] + r['post_s']) / 60:.1f} | {r['tile_overhead']:.2f} | "
              f"{r['disk_gb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
