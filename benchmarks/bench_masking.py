"""Noise2Void blind-spot masking cost per patch (``tasks/restoration/masking.blind_spot``).

Each row times one patch shape, blind-spot share and replacement: the training shares (0.2 %,
1 %, 5 %), the validation share (1/16: one spot per 4x4 cell in 2D, 3x3x3 in 3D) and a
structured mask. ``--code DIR`` times the masking of another checkout (its ``src`` first on the
path), so one table can be printed before and after a change.

Run: .venv/bin/python benchmarks/bench_masking.py [--code DIR] [--seconds 1]   (prints one markdown table)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

CASES = [  # (patch C(Z)YX, share, replace, structured)
    ((1, 64, 64), 0.002, "median", None),
    ((1, 64, 64), 0.01, "median", None),
    ((1, 64, 64), 0.05, "neighbour", None),
    ((1, 64, 64), 1 / 16, "median", None),
    ((1, 64, 64), 0.01, "median", 2),
    ((1, 32, 64, 64), 0.002, "median", None),
    ((1, 32, 64, 64), 1 / 16, "median", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", default=None, help="checkout whose masking is timed (default: this one)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per row")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, str(Path(args.code) / "src"))
    from biapipe.tasks.restoration.masking import blind_spot

    rng = np.random.default_rng(0)
    print(f"masking code: {Path(sys.modules[blind_spot.__module__].__file__).resolve()}\n")
    print("| patch | share | replace | structured | blind spots | ms per patch |")
    print("|---|---:|---|---|---:|---:|")
    for shape, share, replace, structured in CASES:
        image = rng.normal(size=shape).astype(np.float32)
        spots = int(blind_spot(image, (0,), share, 2, replace, structured)[1].sum())
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            blind_spot(image, (1, n), share, 2, replace, structured)
            n += 1
        ms = (time.perf_counter() - start) / n * 1e3
        print(f"| {'x'.join(map(str, shape[1:]))} | {share:.3g} | {replace} | {structured or '—'} | {spots} | {ms:.2f} |")


if __name__ == "__main__":
    main()
