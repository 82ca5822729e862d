"""Average precision of instance segmentation in the COCO manner, beside the DSB "AP".

The matching figures of :mod:`.metrics` judge the objects post-processing kept; the
``accuracy@t`` column, TP / (TP + FP + FN), is what the DSB2018 challenge called AP.
COCO's AP instead ranks every predicted object of the data set by a score and averages
the precision over recall (:mod:`biapipe.core.precision`, 101 recall points), at each IoU
threshold 0.50, 0.55, ..., 0.95; ``ap@0.5:0.95`` is the mean over the ten.

The score of an object is the mean foreground probability over its pixels (written by
post-processing to ``objects/{image}.csv``). Matching: COCO lets predictions, highest
score first, take the unmatched true object of highest IoU >= t. For t > 0.5 an object
can overlap at most one other object by more than half its union, so every candidate
pair is uncontested and any matching takes all of them: a prediction is a true positive
at t exactly when the IoU of its one-to-one match at 0.5 (:func:`.metrics.match_pairs`)
is >= t. So one number per predicted object, ``iou``, stored in
``metrics/{image}_matches.csv`` with its label and score, gives every threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ...core.precision import COCO_IOUS, average_precision
from ...core.tables import column_sum
from .metrics import match_pairs, overlap, threshold_key

#: Figures of the summary: the COCO mean over IoU 0.5:0.95, and the usual single thresholds.
SUMMARY_THRESHOLDS = (0.5, 0.75)


def matches_table(pred: np.ndarray, gt: np.ndarray, objects: pd.DataFrame | None) -> pd.DataFrame:
    """One row per predicted object: ``label``, ``score`` (from the object table; NaN when
    absent) and ``iou`` of its one-to-one match at IoU 0.5 (0 when unmatched)."""
    ov = overlap(gt, pred)
    _, matched_pred, iou = match_pairs(ov, 0.5)
    best = np.zeros(len(ov.pred_ids))
    best[matched_pred] = iou
    scores = np.full(len(ov.pred_ids), np.nan)
    if objects is not None and {"label", "score"} <= set(objects.columns):
        by_label = dict(zip(objects["label"].to_numpy(np.int64), objects["score"].to_numpy(np.float64)))
        scores = np.array([by_label.get(int(i), np.nan) for i in ov.pred_ids], dtype=np.float64)
    return pd.DataFrame({"label": ov.pred_ids.astype(np.int64), "score": scores, "iou": best})


def coco_ap(metrics: pd.DataFrame, details: Mapping[str, pd.DataFrame]) -> dict[str, float]:
    """``ap@0.5:0.95``, ``ap@0.5`` and ``ap@0.75`` over the images that have matches tables
    (their true objects from metrics.csv's ``n_gt``); NaN when an object has no score."""
    images = metrics[metrics["image"].astype(str).isin(list(details))]
    n_true = int(column_sum(images, "n_gt"))
    tables = [t for t in details.values() if len(t)]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({"score": [], "iou": []})
    scores, iou = table["score"].to_numpy(np.float64), table["iou"].to_numpy(np.float64)
    if np.isnan(scores).any():
        per_t = {t: float("nan") for t in COCO_IOUS}
    else:
        per_t = {t: average_precision(scores, iou >= t, n_true) for t in COCO_IOUS}
    out = {"ap@0.5:0.95": float(np.mean(list(per_t.values())))}
    out.update({f"ap@{threshold_key(t)}": per_t[t] for t in SUMMARY_THRESHOLDS})
    return out
