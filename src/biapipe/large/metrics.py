"""Metrics of volumes whose prediction and ground truth are both larger than memory.

Both metric families rest on counts that add up over disjoint regions: the semantic
confusion matrix, and the instance overlap table (object sizes and the intersection of
every co-occurring pair). Summing them block by block and scoring once at the end gives
exactly the whole-volume figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..metrics.instance import DEFAULT_IOU_THRESHOLDS, Overlap, matching_from_overlap
from ..metrics.semantic import _class_counts, _foreground, confusion_matrix, ratio
from .blocks import Block

#: Partial pair tables are reduced once they hold this many rows, bounding memory.
REDUCE_ROWS = 1 << 22


def _check_shapes(pred: Any, gt: Any) -> None:
    if tuple(pred.shape) != tuple(gt.shape):
        raise InputError(None, f"prediction of shape {tuple(pred.shape)} does not match ground truth of shape "
                               f"{tuple(gt.shape)}")


def semantic_metrics_blocks(pred: Any, gt: Any, n_classes: int, blocks: Sequence[Block],
                            gt_map: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None = None,
                            ) -> dict[str, float]:
    """The figures of :func:`biapipe.metrics.semantic.semantic_metrics` from summed per-block
    confusion matrices. ``gt_map`` turns a raw ground-truth block into (classes, ignore mask)."""
    _check_shapes(pred, gt)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for block in blocks:
        g = np.asarray(gt[block.slices])
        g, ignore = gt_map(g) if gt_map else (g, None)
        cm += confusion_matrix(np.asarray(pred[block.slices]), g, n_classes, ignore)
    return metrics_from_confusion(cm)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Per-class, foreground and accuracy figures of one confusion matrix (rows = truth)."""
    out: dict[str, float] = {}
    for k in range(cm.shape[0]):
        out.update(_class_counts(cm, k))
    out.update(_foreground(cm))
    n_correct, n_pixels = int(np.trace(cm)), int(cm.sum())
    out.update({"pixel_accuracy": ratio(n_correct, n_pixels), "n_correct": n_correct, "n_pixels": n_pixels})
    return out


class OverlapAccumulator:
    """Object sizes and pair intersections summed over blocks; ``result()`` is the Overlap of the whole."""

    def __init__(self) -> None:
        self.gt: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []
        self.rows = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        gt, pred = np.asarray(gt).astype(np.uint64), np.asarray(pred).astype(np.uint64)
        self.gt.append(_counts(gt[gt > 0]))
        self.pred.append(_counts(pred[pred > 0]))
        both = (gt > 0) & (pred > 0)
        self.pairs.append(_counts((gt[both] << np.uint64(32)) | pred[both]))
        self.rows += sum(p.shape[1] for p in (self.gt[-1], self.pred[-1], self.pairs[-1]))
        if self.rows > REDUCE_ROWS:
            self.gt, self.pred, self.pairs = [_reduce(self.gt)], [_reduce(self.pred)], [_reduce(self.pairs)]
            self.rows = sum(p.shape[1] for p in (*self.gt, *self.pred, *self.pairs))

    def result(self) -> Overlap:
        gt_ids, gt_areas = _reduce(self.gt)
        pred_ids, pred_areas = _reduce(self.pred)
        keys, inter = _reduce(self.pairs)
        g, p = keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)
        return Overlap(gt_ids, pred_ids, gt_areas.astype(np.int64), pred_areas.astype(np.int64),
                       np.searchsorted(gt_ids, g).astype(np.int64), np.searchsorted(pred_ids, p).astype(np.int64),
                       inter.astype(np.int64))


def _counts(values: np.ndarray) -> np.ndarray:
    ids, n = np.unique(values, return_counts=True)
    return np.stack([ids, n.astype(np.uint64)])


def _reduce(parts: Sequence[np.ndarray]) -> np.ndarray:
    table = np.concatenate([np.zeros((2, 0), np.uint64), *parts], axis=1)
    ids, inverse = np.unique(table[0], return_inverse=True)
    sums = np.bincount(inverse, weights=table[1].astype(np.float64)).astype(np.uint64)
    return np.stack([ids, sums])


def instance_metrics_blocks(pred: Any, gt: Any, blocks: Sequence[Block],
                            thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
                            gt_map: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """The figures of :func:`biapipe.metrics.instance.matching_metrics`, accumulated block by block
    (ids must be below 2**32, which uint32 label images guarantee)."""
    _check_shapes(pred, gt)
    acc = OverlapAccumulator()
    for block in blocks:
        g = np.asarray(gt[block.slices])
        acc.add(gt_map(g) if gt_map else g, np.asarray(pred[block.slices]))
    return matching_from_overlap(acc.result(), thresholds)
