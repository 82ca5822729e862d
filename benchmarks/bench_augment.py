"""Augmentation cost per patch: CPU data path (one patch at a time, as TrainPatches does it)
and, when CUDA is present, the batched GPU path the training loop uses there.

Two settings: the defaults (nnU-Net-like probabilities, so most patches only get a few
cheap transforms) and every transform on every patch (the worst case). Timings are the
mean over ``--patches`` drawn patches, after a warm-up.

Run: .venv/bin/python benchmarks/bench_augment.py [--threads 1] [--patches 64]   (prints one markdown table)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from biapipe.data.augment import Augmenter

SHAPES = {"2D 128x128": (128, 128), "2D 256x256": (256, 256), "3D 32x64x64": (32, 64, 64),
          "3D 32x128x128": (32, 128, 128)}
EVERYTHING = Augmenter(rotate=1, scale=1, elastic=1, blur=1, poisson_noise=1, gaussian_noise=1, brightness=1,
                       contrast=1, gamma=1, cutout=1)


def cpu_ms(aug: Augmenter, shape: tuple[int, ...], n: int) -> float:
    rng = np.random.default_rng(0)
    image = torch.rand((1, 1, *shape))
    target = (torch.rand((1, 1, *shape)) > 0.5).long()
    draws = [aug.draw(rng) for _ in range(n + 2)]
    for d in draws[:2]:
        aug.apply(image, target, [d])
    start = time.perf_counter()
    for d in draws[2:]:
        if not d.is_neutral:  # the data path skips the torch stage for neutral draws
            aug.apply(image, target, [d])
    return (time.perf_counter() - start) / n * 1e3


def gpu_ms(aug: Augmenter, shape: tuple[int, ...], n: int, batch: int = 8) -> float:
    rng = np.random.default_rng(0)
    image = torch.rand((batch, 1, *shape), device="cuda")
    target = (torch.rand((batch, 1, *shape), device="cuda") > 0.5).long()
    rows = [torch.stack([aug.draw(rng).to_tensor() for _ in range(batch)]) for _ in range(n // batch + 1)]
    aug.apply(image, target, rows[0])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for r in rows[1:]:
        aug.apply(image, target, r)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (len(rows[1:]) * batch) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a loader worker uses 1)")
    parser.add_argument("--patches", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    head = "| patch | defaults, CPU ms | everything, CPU ms |"
    head += " defaults, GPU ms | everything, GPU ms |" if cuda else ""
    print(head)
    print("|---|---|---|" + ("---|---|" if cuda else ""))
    for name, shape in SHAPES.items():
        row = [f"{cpu_ms(Augmenter(), shape, args.patches):.2f}", f"{cpu_ms(EVERYTHING, shape, args.patches):.2f}"]
        if cuda:
            row += [f"{gpu_ms(Augmenter(), shape, args.patches):.2f}", f"{gpu_ms(EVERYTHING, shape, args.patches):.2f}"]
        print(f"| {name} | " + " | ".join(row) + " |")
    print(f"\n(per patch; CPU {args.threads} thread(s); GPU: batches of 8"
          f"{', ' + torch.cuda.get_device_name() if cuda else ''})")


if __name__ == "__main__":
    main()
