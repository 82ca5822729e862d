"""Overlap metrics of a class map against its ground truth.

Besides the ratios (IoU, Dice) each image reports the raw pixel counts behind them,
because a dataset figure averaged over images weighs a tiny image as much as a huge
one; with the counts, pooled figures (sum of intersections / sum of unions) can be
computed exactly later without rereading any image.

Absent classes: when class k occurs in neither prediction nor ground truth, its IoU
and Dice are undefined and reported as NaN, so that means over images or classes
(``nanmean``) skip them instead of rewarding or punishing a class that was never
there. When k occurs in only one of the two, the overlap is empty and IoU = Dice = 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...core.errors import InputError
from ...core.tables import column_sum, nanmean, ratio


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, n_classes: int, ignore_mask: np.ndarray | None = None
) -> np.ndarray:
    """(n_classes, n_classes) pixel counts, rows = ground truth, columns = prediction."""
    if pred.shape != gt.shape:
        raise InputError(None, f"prediction of shape {pred.shape} does not match ground truth of shape {gt.shape}")
    if ignore_mask is not None:
        if ignore_mask.shape != gt.shape:
            raise InputError(None, f"ignore mask of shape {ignore_mask.shape} does not match ground truth {gt.shape}")
        keep = ~ignore_mask.astype(bool, copy=False)
        pred, gt = pred[keep], gt[keep]
    pred = np.asarray(pred).ravel()
    gt = np.asarray(gt).ravel()
    _check_range(pred, n_classes, "prediction")
    _check_range(gt, n_classes, "ground truth")
    flat = gt.astype(np.int64) * n_classes + pred.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _check_range(values: np.ndarray, n_classes: int, what: str) -> None:
    """A class index outside 0..K-1 would silently land in another cell of the matrix."""
    if values.size and (values.min() < 0 or values.max() >= n_classes):
        bad = np.unique(values[(values < 0) | (values >= n_classes)])
        raise InputError(None, f"{what} has values {_few(bad)} outside the class range 0..{n_classes - 1}")


def _few(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return "{" + shown + (", ..." if len(values) > limit else "") + "}"


def semantic_metrics(
    pred: np.ndarray, gt: np.ndarray, n_classes: int, ignore_mask: np.ndarray | None = None
) -> dict[str, float]:
    """Per-class IoU/Dice with their counts, foreground IoU and pixel accuracy of one image.

    ``ignore_mask`` marks pixels excluded from every count (e.g. unlabelled regions).
    Keys: ``iou_k``, ``dice_k``, ``inter_k``, ``union_k``, ``pred_k``, ``gt_k`` for each
    class k; ``foreground_iou`` (any class > 0 against background) with ``fg_inter``
    and ``fg_union``; ``pixel_accuracy`` with ``n_correct`` and ``n_pixels``.
    """
    return metrics_from_confusion(confusion_matrix(pred, gt, n_classes, ignore_mask))


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Per-class, foreground and accuracy figures of one confusion matrix (rows = truth)."""
    out: dict[str, float] = {}
    for k in range(cm.shape[0]):
        out.update(class_scores(cm, k))
    out.update(foreground_scores(cm))
    n_correct, n_pixels = int(np.trace(cm)), int(cm.sum())
    out.update({"pixel_accuracy": ratio(n_correct, n_pixels), "n_correct": n_correct, "n_pixels": n_pixels})
    return out


def class_scores(cm: np.ndarray, k: int) -> dict[str, float]:
    inter, n_pred, n_gt = int(cm[k, k]), int(cm[:, k].sum()), int(cm[k, :].sum())
    union = n_pred + n_gt - inter
    return {
        f"iou_{k}": ratio(inter, union),
        f"dice_{k}": ratio(2 * inter, n_pred + n_gt),
        f"inter_{k}": inter,
        f"union_{k}": union,
        f"pred_{k}": n_pred,
        f"gt_{k}": n_gt,
    }


def foreground_scores(cm: np.ndarray) -> dict[str, float]:
    """Foreground as one class: a pixel of class 2 predicted as class 1 still counts."""
    inter = int(cm[1:, 1:].sum())
    n_pred, n_gt = int(cm[:, 1:].sum()), int(cm[1:, :].sum())
    union = n_pred + n_gt - inter
    return {"foreground_iou": ratio(inter, union), "fg_inter": inter, "fg_union": union}


def summarize_semantic(metrics: pd.DataFrame, n_classes: int) -> dict[str, float]:
    """Dataset figures two ways: ``mean_*`` averages the per-image values (NaN skipped),
    ``pooled_*`` divides summed pixel counts, so large images weigh more. ``*_miou``
    averages the per-class IoU over the classes that occur.
    """
    per_class: dict[str, float] = {}
    for k in range(n_classes):
        per_class.update(_both(metrics, f"iou_{k}", f"inter_{k}", f"union_{k}"))
        per_class.update(_pooled_dice(metrics, k))
    row: dict[str, float] = {"n_images": int(len(metrics))}
    row.update(_both(metrics, "foreground_iou", "fg_inter", "fg_union"))
    for how in ("mean", "pooled"):
        row[f"{how}_miou"] = nanmean([per_class[f"{how}_iou_{k}"] for k in range(n_classes)])
    row.update(_both(metrics, "pixel_accuracy", "n_correct", "n_pixels"))
    row.update(per_class)
    return row


def _both(metrics: pd.DataFrame, column: str, numerator: str, denominator: str) -> dict[str, float]:
    return {
        f"mean_{column}": nanmean(metrics[column]) if column in metrics else float("nan"),
        f"pooled_{column}": _pooled(metrics, numerator, denominator),
    }


def _pooled_dice(metrics: pd.DataFrame, k: int) -> dict[str, float]:
    column = f"dice_{k}"
    inter = 2 * column_sum(metrics, f"inter_{k}")
    total = column_sum(metrics, f"pred_{k}") + column_sum(metrics, f"gt_{k}")
    return {
        f"mean_{column}": nanmean(metrics[column]) if column in metrics else float("nan"),
        f"pooled_{column}": ratio(inter, total),
    }


def _pooled(metrics: pd.DataFrame, numerator: str, denominator: str) -> float:
    return ratio(column_sum(metrics, numerator), column_sum(metrics, denominator))
