"""The per-object table of a label volume larger than memory, accumulated block by block.

Sizes, coordinate sums (for centroids), bounding boxes and intensity sums all combine over
disjoint blocks, so the table equals :func:`biapipe.postprocess.instance.object_table` of
the whole volume while only one block of labels (and of the image) is in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from ...data.blocks import Block


class _Sums:
    """Per-label running sums for labels 1..n (index 0, the background, is ignored)."""

    def __init__(self, n: int, ndim: int, channels: int) -> None:
        self.count = np.zeros(n + 1, dtype=np.int64)
        self.coord = np.zeros((ndim, n + 1), dtype=np.float64)
        self.lo = np.full((ndim, n + 1), np.iinfo(np.int64).max, dtype=np.int64)
        self.hi = np.full((ndim, n + 1), -1, dtype=np.int64)
        self.intensity = np.zeros((channels, n + 1), dtype=np.float64)
        self.score = np.zeros(n + 1, dtype=np.float64)

    def add(self, labels: np.ndarray, start: Sequence[int], image: np.ndarray | None,
            score: np.ndarray | None = None) -> None:
        flat = labels.ravel().astype(np.intp, copy=False)
        n = len(self.count)
        self.count += np.bincount(flat, minlength=n)[:n]
        for a, grid in enumerate(np.indices(labels.shape, sparse=True)):
            coords = np.broadcast_to(grid + int(start[a]), labels.shape).ravel()
            self.coord[a] += np.bincount(flat, weights=coords, minlength=n)[:n]
        boxes = ndimage.find_objects(labels.astype(np.intp, copy=False))
        present = np.array([i + 1 for i, b in enumerate(boxes) if b is not None], dtype=np.intp)
        if present.size:
            for a in range(labels.ndim):
                lo = np.array([boxes[i - 1][a].start for i in present]) + int(start[a])
                hi = np.array([boxes[i - 1][a].stop for i in present]) - 1 + int(start[a])
                self.lo[a, present] = np.minimum(self.lo[a, present], lo)
                self.hi[a, present] = np.maximum(self.hi[a, present], hi)
        if image is not None:
            for c in range(image.shape[-1]):
                self.intensity[c] += np.bincount(flat, weights=image[..., c].ravel().astype(np.float64), minlength=n)[:n]
        if score is not None:
            self.score += np.bincount(flat, weights=np.asarray(score, np.float64).ravel(), minlength=n)[:n]


def object_table_blocks(labels: Any, blocks: Sequence[Block], n_objects: int, image: Any = None,
                        voxel_size: Sequence[float] | None = None,
                        score: Callable[[tuple[slice, ...]], np.ndarray] | None = None) -> pd.DataFrame:
    """One row per object of a label volume with labels 1..``n_objects``; ``image`` is a lazy
    (Z)YXC image on the same grid (mean intensities), or None; ``score`` reads a block's
    (Z)YX score map (the ``score`` column: its mean over each object), or None."""
    ndim = len(labels.shape)
    channels = int(image.shape[-1]) if image is not None else 0
    sums = _Sums(int(n_objects), ndim, channels)
    for block in blocks:
        region = image[block.slices] if image is not None else None
        sums.add(np.asarray(labels[block.slices]), block.start, region,
                 score(block.slices) if score is not None else None)
    ids = np.flatnonzero(sums.count[1:]) + 1
    axes = "zyx"[3 - ndim:]
    size_name = "volume" if ndim == 3 else "area"
    table: dict[str, Any] = {"label": ids.astype(np.int64), size_name: sums.count[ids]}
    if voxel_size is not None:
        table[f"{size_name}_scaled"] = sums.count[ids] * float(np.prod(voxel_size))
    for a, name in enumerate(axes):
        table[f"centroid_{name}"] = sums.coord[a, ids] / sums.count[ids]
    for a, name in enumerate(axes):
        table[f"bbox_{name}0"] = sums.lo[a, ids]
        table[f"bbox_{name}1"] = sums.hi[a, ids] + 1
    for c in range(channels):
        table["mean_intensity" if channels == 1 else f"mean_intensity_{c}"] = sums.intensity[c, ids] / sums.count[ids]
    if score is not None:
        table["score"] = sums.score[ids] / sums.count[ids]
    return pd.DataFrame(table)
