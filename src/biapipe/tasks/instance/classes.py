"""A class per object (``targets.instance.classes: N``): ground truth, targets, votes, scores.

Ground truth is a class image per label image (``data.<split>.classes``, paired by name):
pixel value 1..N is a class, 0 none. An object's true class is the majority of the non-zero
class pixels inside it, so a class image may be a painted mask that only roughly follows the
objects. An object without any class pixel is an error naming the file: silently training it
as some class would teach the network a wrong answer.

The network learns N extra channels, one-hot on object pixels and 0 elsewhere, by a soft
cross-entropy on object pixels only (:class:`biapipe.training.losses.ClassedLoss`; why:
docs/architecture.md, "A class per object").

An object's predicted class is the majority vote of its pixels' most probable class.

Per-class scores (:func:`class_matching`): objects are matched one to one regardless of class at
IoU 0.5 (:func:`.metrics.match_pairs`); a matched pair whose two classes are both c is a true
positive of class c; a predicted object of class c that is not one is a false positive of c, a
true object of class c that is not one a false negative of c. So a match with the wrong class
counts once as FP of the predicted class and once as FN of the true class. ``class_accuracy``
is the share of matched pairs whose classes agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...core import imageio
from ...core.errors import InputError
from ...core.tables import column_sum, ratio
from .metrics import Overlap, match_pairs, overlap

#: the IoU at which per-class figures are counted
CLASS_IOU = 0.5


@dataclass(frozen=True)
class ClassedLabels:
    """Post-processed objects with a class each: ``classes[i]`` is the class (1..N) of label i
    (``classes[0]`` = 0, the background)."""

    labels: np.ndarray
    classes: np.ndarray

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The label image, so code that only needs the objects takes it as before."""
        return self.labels if dtype is None else self.labels.astype(dtype)

    def class_map(self) -> np.ndarray:
        """(Z)YX image of each object's class (0 background)."""
        return self.classes[self.labels].astype(np.uint8 if self.classes.max(initial=0) < 256 else np.uint16)


# --------------------------------------------------------------------------- ground truth


def read_class_image(path: str | Path, ndim: int, label_shape: Sequence[int], n_classes: int) -> np.ndarray:
    """A class image checked against its label image's shape and the number of classes."""
    classes = imageio.read_label(path, ndim)
    check_class_shape(classes.shape, label_shape, path)
    return check_class_values(classes, n_classes, path)


def check_class_shape(shape: Sequence[int], label_shape: Sequence[int], path: str | Path) -> None:
    if tuple(shape) != tuple(label_shape):
        raise InputError(path, f"class image of shape {tuple(shape)} does not match its label image of "
                               f"shape {tuple(label_shape)}")


def check_class_values(classes: np.ndarray, n_classes: int, path: str | Path) -> np.ndarray:
    """``classes`` (all of a class image or a block of it), or an error naming ``path`` when a
    value is not a class."""
    top = int(classes.max(initial=0))
    if top > n_classes or (classes.size and int(classes.min()) < 0):
        raise InputError(path, f"class image holds value {top if top > n_classes else int(classes.min())}; "
                               f"classes are 1..{n_classes} (targets.instance.classes), 0 none")
    return classes


def object_classes(labels: np.ndarray, classes: np.ndarray, n_classes: int,
                   path: str | Path | None = None) -> np.ndarray:
    """Class of each label id by majority of its non-zero class pixels (ties: the lower class);
    an array indexed by label id, 0 for ids absent from ``labels``."""
    labels = np.asarray(labels).astype(np.intp, copy=False)
    top = int(labels.max(initial=0))
    inside = (labels > 0) & (classes > 0)
    counts = np.bincount(labels[inside] * n_classes + (classes[inside].astype(np.intp) - 1),
                         minlength=(top + 1) * n_classes).reshape(top + 1, n_classes)
    present = np.bincount(labels.ravel(), minlength=top + 1) > 0
    present[0] = False
    check_classed(np.flatnonzero(present & (counts.sum(axis=1) == 0)), n_classes, path)
    out = np.where(present, counts.argmax(axis=1) + 1, 0)
    return out.astype(np.int64)


def check_classed(unclassed: np.ndarray, n_classes: int, path: str | Path | None) -> None:
    """Stop, naming the class image, when some objects (``unclassed``: their ids) have no class pixel."""
    if unclassed.size:
        raise InputError(path, f"object {int(unclassed[0])} of its label image has no class pixel "
                               f"({unclassed.size} such object(s)); give every object a class 1..{n_classes}")


def one_hot(pixel_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """(Z)YX classes 0..N -> float32 (Z)YXN: the class targets, one-hot on each object's pixels,
    0 in the background (class 0)."""
    return (pixel_classes[..., np.newaxis] == np.arange(1, n_classes + 1)).astype(np.float32)


# --------------------------------------------------------------------------- prediction


def vote(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each object's class (1..N) by majority vote of its pixels' most probable class, from the
    (Z)YXN class probabilities; indexed by label id (0 for the background and absent ids)."""
    labels = np.asarray(labels).astype(np.intp, copy=False)
    n = probabilities.shape[-1]
    top = int(labels.max(initial=0))
    best = np.argmax(probabilities, axis=-1)
    inside = labels > 0
    counts = np.bincount(labels[inside] * n + best[inside], minlength=(top + 1) * n).reshape(top + 1, n)
    out = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1) + 1, 0)
    out[0] = 0
    return out.astype(np.int64)


def classes_from_map(labels: np.ndarray, class_map: np.ndarray) -> np.ndarray:
    """The per-id classes a class map was drawn from (a written output read back)."""
    n = int(class_map.max(initial=0))
    if n == 0:
        return np.zeros(int(np.asarray(labels).max(initial=0)) + 1, dtype=np.int64)
    one_hot = class_map[..., np.newaxis] == np.arange(1, n + 1)
    return vote(labels, one_hot)


# --------------------------------------------------------------------------- scores


def class_matching(pred: np.ndarray, pred_classes: np.ndarray, gt: np.ndarray, gt_classes: np.ndarray,
                   n_classes: int) -> dict[str, float]:
    """Per-class TP, FP, FN and F1 at IoU 0.5 (module docstring), ``class_matched`` (pairs
    matched at 0.5) and ``class_accuracy`` (share of them with the true class)."""
    ov = overlap(gt, pred)
    return class_matching_overlap(ov, pred_classes[ov.pred_ids.astype(np.intp)],
                                  gt_classes[ov.gt_ids.astype(np.intp)], n_classes)


def class_matching_overlap(ov: Overlap, pred_cls: np.ndarray, true_cls: np.ndarray,
                           n_classes: int) -> dict[str, float]:
    """:func:`class_matching` from an overlap table, with the class of each of its predicted and
    true objects (in the order of ``ov.pred_ids`` and ``ov.gt_ids``): the block-wise path's entry."""
    gi, pj, _ = match_pairs(ov, CLASS_IOU)
    agree = true_cls[gi] == pred_cls[pj]
    out: dict[str, float] = {"class_matched": int(gi.size), "class_accuracy": ratio(int(agree.sum()), int(gi.size))}
    for c in range(1, n_classes + 1):
        tp = int(np.sum(agree & (true_cls[gi] == c)))
        fp, fn = int(np.sum(pred_cls == c)) - tp, int(np.sum(true_cls == c)) - tp
        out.update(class_figures(c, tp, fp, fn))
    return out


def class_figures(c: int, tp: float, fp: float, fn: float) -> dict[str, float]:
    key = f"class{c}"
    return {f"{key}_tp": tp, f"{key}_fp": fp, f"{key}_fn": fn,
            f"{key}_precision": ratio(tp, tp + fp), f"{key}_recall": ratio(tp, tp + fn),
            f"{key}_f1": ratio(2 * tp, 2 * tp + fp + fn)}


def summarize_classes(metrics: pd.DataFrame, n_classes: int) -> dict[str, float]:
    """Pooled per-class figures (summed counts), their mean F1 over classes and the pooled
    class accuracy of matched objects; NaN columns when no image was scored with classes."""
    if "class_matched" not in metrics.columns:
        return {}
    scored = metrics[metrics["class_matched"].notna()]
    out: dict[str, float] = {}
    f1 = []
    for c in range(1, n_classes + 1):
        counts = [column_sum(scored, f"class{c}_{k}") for k in ("tp", "fp", "fn")]
        figures = class_figures(c, *counts)
        out.update({f"pooled_{k}" if k.endswith(("precision", "recall", "f1")) else k: v
                    for k, v in figures.items()})
        f1.append(figures[f"class{c}_f1"])
    agree = sum(column_sum(scored, f"class{c}_tp") for c in range(1, n_classes + 1))
    out["pooled_class_accuracy"] = ratio(agree, column_sum(scored, "class_matched"))
    valid = [v for v in f1 if not np.isnan(v)]
    out["pooled_class_f1_mean"] = float(np.mean(valid)) if valid else float("nan")
    return out


# --------------------------------------------------------------------------- demo


def size_classes(labels: np.ndarray, min_large: float) -> np.ndarray:
    """The demo's class image: objects of at least ``min_large`` pixels are class 2, smaller
    ones class 1 (a property a network can see)."""
    labels = np.asarray(labels).astype(np.intp, copy=False)
    sizes = np.bincount(labels.ravel())
    by_id = np.where(sizes >= min_large, 2, 1)
    by_id[0] = 0
    return by_id[labels].astype(np.uint8)
