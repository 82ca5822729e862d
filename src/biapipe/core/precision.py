"""Average precision from scored detections: the ranking metric detection and instance
segmentation papers compare (COCO, Pascal VOC, BiaPy).

Every prediction of a data set carries a score and a flag saying whether it matched a
true object (at an IoU threshold, or within a distance tolerance). Ranked by score,
highest first, the predictions give a precision-recall curve: after the k best,
precision = matched / k and recall = matched / (true objects). Ties keep their input
order (a stable sort, as COCO's ``mergesort``). The curve is made monotone (precision at
recall r is the best precision at any recall >= r) and then summarized:

- ``coco101`` (the default, what pycocotools reports): the mean of the monotone precision
  at the 101 recalls 0, 0.01, ..., 1, each read at the first rank reaching that recall;
  recalls never reached count 0.
- ``all``: the area under the monotone curve, sum of (r_k - r_{k-1}) * p(r_k) over the
  ranks (Pascal VOC since 2010).

AP is pooled over the data set, never averaged over images: one image's ranking says
nothing about how its scores compare with another image's. With no true object AP is
undefined (NaN); with true objects but no prediction it is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INTERPOLATIONS = ("coco101", "all")
#: The recalls at which COCO reads precision.
COCO_RECALLS = np.linspace(0.0, 1.0, 101)
#: COCO's IoU thresholds 0.5, 0.55, ..., 0.95 (rounded so that they print as such).
COCO_IOUS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def precision_recall(scores: Sequence[float], matched: Sequence[bool], n_true: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) after each of the predictions ranked by score, highest first."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    matched = np.asarray(matched, dtype=bool).reshape(-1)
    if scores.shape != matched.shape:
        raise ValueError(f"{scores.size} scores but {matched.size} match flags")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; every prediction needs a score to be ranked")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(matched[order])
    ranks = np.arange(1, len(order) + 1)
    return tp / ranks, tp / n_true if n_true > 0 else np.full(len(order), np.nan)


def monotone(precision: np.ndarray) -> np.ndarray:
    """The precision envelope: at each rank, the best precision at this or any later rank."""
    return np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]


def average_precision(scores: Sequence[float], matched: Sequence[bool], n_true: int,
                      interpolation: str = "coco101") -> float:
    """AP of scored predictions against ``n_true`` true objects (module docstring)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if n_true <= 0:
        return float("nan")
    precision, recall = precision_recall(scores, matched, n_true)
    if precision.size == 0:
        return 0.0
    envelope = monotone(precision)
    if interpolation == "all":
        steps = np.diff(np.concatenate([[0.0], recall]))
        return float(np.sum(steps * envelope))
    first = np.searchsorted(recall, COCO_RECALLS, side="left")
    reached = first < len(recall)
    return float(np.sum(envelope[first[reached]]) / len(COCO_RECALLS))
