"""Object-level scores: predicted instances matched one-to-one to ground-truth instances.

Matching is the part that does not scale naively: an image with 5,000 nuclei has
25 million (prediction, truth) pairs, but each object overlaps only a handful of
others. So the overlap counts of the pairs that actually co-occur are taken from one
pass over the pixels, IoUs are computed for those pairs only, and the optimal
assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``) is solved separately
on each connected group of overlapping objects, which is almost always a single pair.

At each IoU threshold t a pair may be matched only if its IoU >= t; the assignment
maximises the number of matches, then their total IoU. For t > 0.5 the matching is
unique anyway (an object cannot have IoU > 0.5 with two disjoint objects).

Per image and threshold: TP, FP, FN, precision, recall, F1, accuracy TP/(TP+FP+FN)
(the "AP" of the DSB2018 challenge), mean IoU of the matched pairs and panoptic
quality PQ = sum(matched IoU) / (TP + FP/2 + FN/2). Ratios with a zero denominator
(nothing to measure) are NaN, as in the semantic metrics. The counts are kept so that
dataset figures can be pooled exactly (``summarize_matching``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from ...core.errors import InputError
from ...core.tables import column_sum as _sum
from ...core.tables import nanmean as _nanmean
from ...core.tables import ratio

#: IoU thresholds reported when the config does not say otherwise.
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: Per-threshold columns, in the order they appear in the table.
PER_THRESHOLD = ("tp", "fp", "fn", "precision", "recall", "f1", "accuracy", "mean_iou", "pq", "sum_iou")

#: Beyond this many ids per pixel, label ids are compacted with a sort instead of a bincount.
_BINCOUNT_SLACK = 4


def threshold_key(threshold: float) -> str:
    """Column suffix of a threshold: 0.5 -> '0.5', 0.75 -> '0.75'."""
    return f"{float(threshold):g}"


@dataclass(frozen=True)
class Overlap:
    """Sparse overlap of two label images: object ids, sizes and co-occurring pairs."""

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_areas: np.ndarray
    pred_areas: np.ndarray
    #: indices into gt_ids / pred_ids of every pair sharing at least one pixel
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        union = self.gt_areas[self.pair_gt] + self.pred_areas[self.pair_pred] - self.intersection
        return self.intersection / union


def object_sizes(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted object ids (> 0) and their pixel counts; ids need not be consecutive."""
    flat = label.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= _BINCOUNT_SLACK * flat.size + 1024:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        return ids, counts[ids]
    ids, counts = np.unique(flat, return_counts=True)
    keep = ids > 0
    return ids[keep], counts[keep]


def overlap(gt: np.ndarray, pred: np.ndarray) -> Overlap:
    """Overlap counts of every co-occurring (truth, prediction) pair, from one pass over the pixels."""
    gt, pred = _check_pair(gt, pred)
    gt_ids, gt_areas = object_sizes(gt)
    pred_ids, pred_areas = object_sizes(pred)
    both = (gt > 0) & (pred > 0)
    g = np.searchsorted(gt_ids, gt[both]).astype(np.int64)
    p = np.searchsorted(pred_ids, pred[both]).astype(np.int64)
    n_pred = max(len(pred_ids), 1)
    keys, counts = np.unique(g * n_pred + p, return_counts=True)
    return Overlap(gt_ids, pred_ids, gt_areas.astype(np.int64), pred_areas.astype(np.int64),
                   keys // n_pred, keys % n_pred, counts.astype(np.int64))


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise InputError(None, f"prediction of shape {pred.shape} does not match ground truth of shape {gt.shape}")
    for arr, what in ((gt, "ground truth"), (pred, "prediction")):
        if arr.dtype.kind not in "uib":
            raise InputError(None, f"{what} labels must be integers, got dtype {arr.dtype}")
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise InputError(None, f"{what} labels have negative values (min {arr.min()})")
    return gt, pred


# --------------------------------------------------------------------------- assignment


def match_pairs(ov: Overlap, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching at ``threshold``: (gt index, pred index, IoU) of matched pairs."""
    iou = ov.iou
    keep = iou >= threshold
    gi, pj, w = ov.pair_gt[keep], ov.pair_pred[keep], iou[keep]
    if gi.size == 0:
        return gi, pj, w
    n_gt = len(ov.gt_ids)
    graph = sparse.coo_matrix((np.ones(gi.size), (gi, n_gt + pj)), shape=(n_gt + len(ov.pred_ids),) * 2)
    _, component = connected_components(graph, directed=False)
    group = component[gi]
    sizes = np.bincount(group)
    single = sizes[group] == 1
    chosen = [np.flatnonzero(single)]
    for g in np.unique(group[~single]):
        edges = np.flatnonzero(group == g)
        chosen.append(edges[_assign(gi[edges], pj[edges], w[edges])])
    take = np.concatenate(chosen)
    return gi[take], pj[take], w[take]


def _assign(gi: np.ndarray, pj: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Hungarian assignment on one small group: most matches first, then largest total IoU."""
    rows, r = np.unique(gi, return_inverse=True)
    cols, c = np.unique(pj, return_inverse=True)
    bonus = 1.0 / (min(len(rows), len(cols)) + 1)  # total IoU bonus < 1: never trades a match away
    cost = np.zeros((len(rows), len(cols)))
    cost[r, c] = -(1.0 + bonus * w)
    a, b = linear_sum_assignment(cost)
    edge_of = {(int(x), int(y)): k for k, (x, y) in enumerate(zip(r, c))}
    return np.array([edge_of[(int(x), int(y))] for x, y in zip(a, b) if (int(x), int(y)) in edge_of], dtype=int)


# --------------------------------------------------------------------------- scores


def scores(tp: float, fp: float, fn: float, sum_iou: float) -> dict[str, float]:
    """The per-threshold figures from the counts (shared by per-image and pooled figures)."""
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp, tp + fp + fn),
        "mean_iou": ratio(sum_iou, tp),
        "pq": ratio(sum_iou, tp + 0.5 * fp + 0.5 * fn),
        "sum_iou": sum_iou,
    }


def matching_metrics(pred: np.ndarray, gt: np.ndarray,
                     thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict[str, float]:
    """All matching figures of one image: ``n_pred``, ``n_gt`` and ``{figure}@{t}`` per threshold."""
    return matching_from_overlap(overlap(gt, pred), thresholds)


def matching_from_overlap(ov: Overlap, thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict[str, float]:
    """Per-threshold matching figures of an overlap table, whole-image or accumulated block by block."""
    n_gt, n_pred = len(ov.gt_ids), len(ov.pred_ids)
    out: dict[str, float] = {"n_pred": n_pred, "n_gt": n_gt}
    for t in thresholds:
        _, _, w = match_pairs(ov, float(t))
        tp = int(w.size)
        figures = scores(tp, n_pred - tp, n_gt - tp, float(w.sum()))
        out.update({f"{name}@{threshold_key(t)}": figures[name] for name in PER_THRESHOLD})
    return out


def summarize_matching(metrics: pd.DataFrame, thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict[str, float]:
    """Dataset figures: ``pooled_*`` from summed TP/FP/FN (every object weighs the same),
    ``mean_*`` averaging the per-image ratios (every image weighs the same; NaN skipped).

    ``*_accuracy@mean`` averages the accuracy over the thresholds, the DSB2018 score when
    the thresholds are 0.5..0.95.
    """
    row: dict[str, float] = {"n_images": int(len(metrics)), "n_pred": _sum(metrics, "n_pred"),
                             "n_gt": _sum(metrics, "n_gt")}
    pooled_acc, mean_acc = [], []
    for t in thresholds:
        key = threshold_key(t)
        pooled = scores(*(_sum(metrics, f"{c}@{key}") for c in ("tp", "fp", "fn", "sum_iou")))
        for name in PER_THRESHOLD:
            if name in ("tp", "fp", "fn", "sum_iou"):
                row[f"{name}@{key}"] = pooled[name]
            else:
                row[f"pooled_{name}@{key}"] = pooled[name]
                row[f"mean_{name}@{key}"] = _nanmean(metrics.get(f"{name}@{key}", pd.Series(dtype=float)))
        pooled_acc.append(pooled["accuracy"])
        mean_acc.append(row[f"mean_accuracy@{key}"])
    row["pooled_accuracy@mean"] = _nanmean(pooled_acc)
    row["mean_accuracy@mean"] = _nanmean(mean_acc)
    return row
