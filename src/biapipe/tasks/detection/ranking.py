"""Average precision of point detection: predictions ranked by score, matched within the tolerance.

F1 and friends (:mod:`.metrics`) judge the points that survive the peak threshold, with the
matching that gives the most matches. AP judges the scores: it ranks every predicted point
of the data set by score and asks how precision falls as recall grows, so it does not
depend on the threshold. Its matching is the one COCO uses for boxes, with distance
instead of IoU: in score order, highest first, each prediction takes the nearest still
unmatched true point within the tolerance (physical units), or none. Per class, a
prediction may only take a true point of its own class; mAP is the mean AP over the
classes that have true points. Interpolation: COCO's 101 recall points
(:mod:`biapipe.core.precision`).

The matching is per image, written as two columns of ``metrics/{image}_assignments.csv``
(``ap_match`` class-agnostic, ``ap_match_class`` within the class), and AP is pooled over
the data set in ``summarize``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ...core.precision import average_precision
from ...core.tables import nanmean
from .metrics import candidate_pairs


def greedy_match(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, tolerance: float,
                 voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Per prediction: whether it is matched when predictions, highest score first, each take
    the nearest unmatched true point within ``tolerance`` (ties: the earlier row)."""
    matched = np.zeros(len(pred), dtype=bool)
    if len(pred) == 0 or len(gt) == 0:
        return matched
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    gt = np.asarray(gt, dtype=np.float64).reshape(len(gt), -1)
    i, j, d = candidate_pairs(pred, gt, tolerance, voxel_size)
    rank = np.empty(len(pred), dtype=np.int64)
    rank[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")] = np.arange(len(pred))
    taken = np.zeros(len(gt), dtype=bool)
    for k in np.lexsort((j, d, rank[i])):  # by prediction rank, then distance
        if not matched[i[k]] and not taken[j[k]]:
            matched[i[k]] = taken[j[k]] = True
    return matched


def class_matches(pred: np.ndarray, pred_classes: np.ndarray, scores: np.ndarray, gt: np.ndarray,
                  gt_classes: np.ndarray, tolerance: float, voxel_size: Sequence[float] | None) -> np.ndarray:
    """:func:`greedy_match` within each class: a prediction only takes a true point of its class."""
    pred_classes, gt_classes = np.asarray(pred_classes), np.asarray(gt_classes)
    matched = np.zeros(len(pred), dtype=bool)
    for k in np.unique(pred_classes):
        p, g = np.flatnonzero(pred_classes == k), np.flatnonzero(gt_classes == k)
        matched[p] = greedy_match(np.asarray(pred)[p], np.asarray(scores)[p], np.asarray(gt)[g], tolerance,
                                  voxel_size)
    return matched


def detection_ap(details: pd.DataFrame, class_names: Sequence[str] | None) -> dict[str, float]:
    """``ap`` (class-agnostic), ``ap_class_{name}`` and ``map`` from the assignments of every image.

    Each true point is one row with ``gt_row >= 0``, each prediction one with ``pred_row >= 0``
    (a matched pair is one row with both); predictions without a score give NaN.
    """
    preds = details[details["pred_row"] >= 0]
    truths = details[details["gt_row"] >= 0]
    out = {"ap": _ap(preds, "ap_match", len(truths))}
    if not class_names:
        out["map"] = out["ap"]
        return out
    for k, name in enumerate(class_names):
        out[f"ap_class_{name}"] = _ap(preds[preds["pred_class"] == k], "ap_match_class",
                                      int((truths["gt_class"] == k).sum()))
    out["map"] = nanmean([out[f"ap_class_{name}"] for name in class_names])
    return out


def _ap(preds: pd.DataFrame, flag: str, n_true: int) -> float:
    scores = preds["score"].to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        return float("nan")  # points without scores cannot be ranked
    return average_precision(scores, preds[flag].to_numpy(dtype=np.float64) > 0, n_true)
