"""Block-wise detection post-processing: the points of a prediction too large for memory,
identical to :func:`biapipe.postprocess.detection.detect_points` on the whole volume.

:func:`detect_points` has three steps, and only the first is local:

1. *peak mask*: a voxel is a peak when it equals the maximum of its (2 min_distance + 1)
   window and is above the threshold. Read with a halo of ``min_distance + 1`` voxels, a
   block knows the exact mask on its core and on the one-voxel ring around it (at the
   volume border, ``mode="nearest"`` padding is the same for a block as for the volume).
2. *plateaus*: connected peaks (26-connectivity in 3D) make one point, at their centre
   of mass. A plateau can cross any number of blocks (a saturated sigmoid gives flat
   tops), so each block labels its peaks on core + ring and records, per block-local id,
   the voxel count and coordinate sums of its core voxels; the ring voxels, which lie in
   neighbouring cores (corners and edges included), say which ids of two blocks are one
   plateau, and a union-find over those sparse pairs joins them. Sums of integer
   coordinates are exact in float64, so the centres are bit-identical.
3. *suppression*: greedy close-point suppression (within a channel by ``min_distance``,
   Chebyshev; then by ``suppression_radius`` across or within classes) is not local: a
   point dropped by a stronger one no longer drops a weaker third, so chains run across
   any number of blocks. It therefore runs once on the global candidate list (the
   plateaus, with their scores), with the same functions as in memory, in the same order
   (plateaus ordered by their first voxel in raster order, which is how ``ndimage.label``
   numbers them, so ties are broken identically).

Memory is one grown block of the prediction at a time plus the candidate table (a few
numbers per plateau above the threshold) and, per block, the peak voxels on its faces.
``threshold: otsu`` is computed for the whole volume, exactly, from a histogram summed
over the blocks (two extra reads of the prediction); ``tuned`` must be resolved first,
as in memory (``task.postprocess_params()`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from ...core.errors import ConfigError
from ...data.blocks import Block
from .points import PointSet
from .postprocess import (
    DetectionParams,
    sort_points,
    suppress,
    suppress_close_points,
)

#: Bins of Otsu's histogram: skimage's default, which ``channel_threshold`` uses.
OTSU_BINS = 256


def required_halo(params: DetectionParams, ndim: int) -> tuple[int, ...]:
    """The smallest halo that gives exact results: the peak window's reach plus one voxel."""
    return (max(1, int(params.min_distance)) + 1,) * ndim


def detection_blocks(pred: Any, blocks: Sequence[Block], params: DetectionParams,
                     voxel_size: Sequence[float] | None = None,
                     halo: int | Sequence[int] | None = None) -> PointSet:
    """Points of a (Z)YXC score map (Zarr array, memmap, LazyImage or array), read one
    block (plus halo) at a time; the same :class:`PointSet` as ``detect_points(pred[...],
    params, voxel_size)``: global (Z)YX coordinates, scores, classes, sorted the same way.

    ``blocks`` must cover the volume (:func:`biapipe.large.predict.plan_blocks`). ``halo``
    (voxels, per axis or one number) defaults to :func:`required_halo`; a smaller one,
    0 included, is widened to it, since a narrower halo cannot see a core voxel's whole
    peak window; a larger one is allowed and only costs reads.
    """
    shape = tuple(int(s) for s in pred.shape[:-1])
    ndim, n_channels = len(shape), int(pred.shape[-1])
    covered = sum(math.prod(b.shape) for b in blocks)
    if covered != math.prod(shape):
        raise ValueError(f"blocks cover {covered} voxels of a volume of shape {shape} ({math.prod(shape)} voxels); "
                         "detection needs the whole volume's blocks")
    need = required_halo(params, ndim)
    given = need if halo is None else ((int(halo),) * ndim if isinstance(halo, int | np.integer) else tuple(halo))
    if len(given) != ndim:
        raise ValueError(f"halo {given} does not fit a {ndim}D volume")
    halo = tuple(max(int(h), n) for h, n in zip(given, need, strict=True))
    thresholds = block_thresholds(pred, blocks, params.threshold)
    found = [_Plateaus(shape) for _ in range(n_channels)]
    for block in blocks:
        grown = block.grown(halo, shape)
        region = np.asarray(pred[grown])
        for k in range(n_channels):
            found[k].add(region[..., k], block, grown, thresholds[k], params.min_distance)
    all_coords, all_scores, all_classes = [], [], []
    for k, plateaus in enumerate(found):
        coords, scores = plateaus.centres()
        keep = suppress_close_points(coords, scores, float(max(1, int(params.min_distance))), p=np.inf)
        all_coords.append(coords[keep])
        all_scores.append(scores[keep])
        all_classes.append(np.full(int(keep.sum()), k, dtype=np.int64))
    points = PointSet(np.concatenate(all_coords).reshape(-1, ndim), np.concatenate(all_classes), shape,
                      np.concatenate(all_scores))
    return sort_points(suppress(points, params, voxel_size))


def detection_table(pred: Any, blocks: Sequence[Block], task: Any,
                    halo: int | Sequence[int] | None = None) -> pd.DataFrame:
    """The detection task's points table ((z,)y,x, score, class) of a prediction, by blocks:
    what ``task.points_table(task.postprocess(whole))`` gives, with ``tuned`` resolved."""
    points = detection_blocks(pred, blocks, task.postprocess_params(), task.voxel_size, halo)
    return task.points_table(points)


# --------------------------------------------------------------------------- thresholds


def block_thresholds(pred: Any, blocks: Sequence[Block], threshold: float | str) -> list[float]:
    """Per channel, the number ``channel_threshold`` gives on the whole volume.

    A number is used as is. Otsu takes two passes over the blocks: min, max and
    finiteness, then a histogram on the global range, summed; ``np.histogram`` bins each
    value on its own once the range is fixed, so the sum is the whole-volume histogram
    and skimage's Otsu on it returns the same threshold.
    """
    n_channels = int(pred.shape[-1])
    if not isinstance(threshold, str):
        return [float(threshold)] * n_channels
    if threshold != "otsu":
        raise ConfigError("postprocess.detection.threshold", f"'{threshold}' must be resolved before use")
    from skimage.filters import threshold_otsu

    lows: list[Any] = [None] * n_channels
    highs: list[Any] = [None] * n_channels
    finite = [True] * n_channels
    for block in blocks:
        region = np.asarray(pred[block.slices])
        if not np.issubdtype(region.dtype, np.floating):
            raise ConfigError("postprocess.detection.threshold", "otsu by blocks needs a floating-point prediction")
        for k in range(n_channels):
            channel = region[..., k]
            if not np.isfinite(channel).all():
                finite[k] = False
                continue
            lo, hi = channel.min(), channel.max()  # numpy scalars: their dtype sets np.histogram's bin type
            lows[k] = lo if lows[k] is None or lo < lows[k] else lows[k]
            highs[k] = hi if highs[k] is None or hi > highs[k] else highs[k]
    ranged = [k for k in range(n_channels) if finite[k] and lows[k] is not None and float(highs[k]) > float(lows[k])]
    counts: dict[int, np.ndarray] = {}
    edges: dict[int, np.ndarray] = {}
    for block in blocks if ranged else []:
        region = np.asarray(pred[block.slices])
        for k in ranged:
            c, e = np.histogram(region[..., k], bins=OTSU_BINS, range=(lows[k], highs[k]))
            counts[k] = c if k not in counts else counts[k] + c
            edges.setdefault(k, e)
    out = [float("inf")] * n_channels
    for k in ranged:
        centres = (edges[k][:-1] + edges[k][1:]) / 2.0
        out[k] = float(threshold_otsu(hist=(counts[k], centres)))
    return out


# --------------------------------------------------------------------------- plateaus


class _Plateaus:
    """Peak plateaus of one channel, gathered block by block and joined across faces."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.n = 0  # block-local ids get global numbers n, n + 1, ...
        self.counts: list[np.ndarray] = []  # per id: core voxels
        self.sums: list[np.ndarray] = []  # per id: (ndim,) sums of core voxel coordinates
        self.first: list[np.ndarray] = []  # per id: smallest raster index of a core voxel
        self.values: list[np.ndarray] = []  # per id: its value (a plateau is flat)
        self.face: list[np.ndarray] = []  # (2, K): raster index, id of core peak voxels on a block face
        self.ring: list[np.ndarray] = []  # (2, K): raster index, id of peak voxels just outside the core

    def add(self, channel: np.ndarray, block: Block, grown: tuple[slice, ...], threshold: float,
            min_distance: int) -> None:
        """Peaks of ``channel`` (read over ``grown``) on the block's core and its one-voxel ring."""
        channel = np.asarray(channel, dtype=np.float32)  # as find_peaks does
        if not np.isfinite(threshold) or channel.size == 0 or float(channel.max()) <= threshold:
            return
        window = 2 * max(1, int(min_distance)) + 1
        peaks = (channel == ndimage.maximum_filter(channel, size=window, mode="nearest")) & (channel > threshold)
        ring_box = block.grown((1,) * len(self.shape), self.shape)
        local = tuple(slice(r.start - g.start, r.stop - g.start) for r, g in zip(ring_box, grown, strict=True))
        sub = peaks[local]
        labels, n = ndimage.label(sub, structure=np.ones((3,) * sub.ndim, dtype=bool))
        if n == 0:
            return
        where = np.nonzero(sub)  # raster order, in the box and so in the volume
        ids = labels[where].astype(np.int64) - 1
        coords = [w.astype(np.int64) + r.start for w, r in zip(where, ring_box, strict=True)]
        raster = np.ravel_multi_index(coords, self.shape)
        values = channel[local][where]
        core = np.ones(len(ids), dtype=bool)
        on_face = np.zeros(len(ids), dtype=bool)
        for c, a, b in zip(coords, block.start, block.stop, strict=True):
            core &= (c >= a) & (c < b)
            on_face |= (c == a) | (c == b - 1)
        on_face &= core
        cid = ids[core]
        self.counts.append(np.bincount(cid, minlength=n).astype(np.float64))
        self.sums.append(np.stack([np.bincount(cid, weights=c[core].astype(np.float64), minlength=n)
                                   for c in coords], axis=1))
        first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        present, at = np.unique(cid, return_index=True)  # raster order: the first hit is the smallest
        first[present] = raster[core][at]
        self.first.append(first)
        value = np.zeros(n, dtype=np.float64)
        value[ids] = values
        self.values.append(value)
        self.face.append(np.stack([raster[on_face], ids[on_face] + self.n]))
        self.ring.append(np.stack([raster[~core], ids[~core] + self.n]))
        self.n += n

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre of mass and score of every plateau, ordered by first voxel in raster order."""
        ndim = len(self.shape)
        if self.n == 0:
            return np.zeros((0, ndim), dtype=np.float64), np.zeros(0, dtype=np.float64)
        face = np.concatenate(self.face, axis=1)
        ring = np.concatenate(self.ring, axis=1)
        order = np.argsort(face[0], kind="stable")
        face_raster, face_id = face[0][order], face[1][order]
        pos = np.searchsorted(face_raster, ring[0])
        hit = pos < len(face_raster)
        hit[hit] = face_raster[pos[hit]] == ring[0][hit]
        if not hit.all():  # a ring voxel is a peak on another block's face: blocks must tile the volume
            raise RuntimeError("a peak next to a block is in no block's core; the blocks do not tile the volume")
        graph = sparse.coo_matrix((np.ones(ring.shape[1], dtype=np.int8), (ring[1], face_id[pos])),
                                  shape=(self.n, self.n))
        _, group = connected_components(graph, directed=False)
        counts = np.concatenate(self.counts)
        n_groups = int(group.max()) + 1
        size = np.bincount(group, weights=counts, minlength=n_groups)
        sums = np.concatenate(self.sums)
        total = np.stack([np.bincount(group, weights=sums[:, a], minlength=n_groups) for a in range(ndim)], axis=1)
        first = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, group, np.concatenate(self.first))
        score = np.zeros(n_groups, dtype=np.float64)
        score[group] = np.concatenate(self.values)
        real = np.flatnonzero(size > 0)
        real = real[np.argsort(first[real], kind="stable")]
        return total[real] / size[real, np.newaxis], score[real]
