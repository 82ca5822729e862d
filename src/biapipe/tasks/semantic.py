"""Semantic segmentation: every pixel gets one of K classes.

Targets are class maps (int16, -1 = ignored) and the model outputs K logits per pixel.
The same label mapping (``targets.binarize``, ``targets.ignore_value``) is applied to
the ground truth at evaluation time, so training and scoring agree on what a class is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from .. import imageio
from ..errors import InputError
from ..metrics.semantic import ratio, semantic_metrics
from ..postprocess.semantic import mask_dtype, semantic_postprocess
from .base import Task

#: Class-map value of pixels excluded from loss and metrics.
IGNORE = -1


class SemanticTask(Task):
    name: ClassVar[str] = "semantic"
    output_dir: ClassVar[str] = "masks"
    output_suffix: ClassVar[str] = ".tif"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        targets = cfg["targets"]
        self.n_classes: int = int(targets["classes"])
        self.binarize: bool = bool(targets["binarize"])
        self.ignore_value: int | None = targets["ignore_value"]

    # ------------------------------------------------------------------ training side
    def out_channels(self) -> int:
        return self.n_classes

    def make_targets(self, label: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        return self.class_map(label, path)[..., np.newaxis]

    def class_map(self, label: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """(Z)YX labels -> int16 class indices, IGNORE where ``ignore_value``.

        Values that are neither a class nor ignored are an error rather than clipped:
        an instance label image fed to a 2-class task would otherwise train on garbage.
        """
        label = np.asarray(label)
        ignored = self._ignored(label)
        if self.binarize:
            valid = (label >= 0) | ignored
        else:
            valid = ((label >= 0) & (label < self.n_classes)) | ignored
        if not valid.all():
            raise InputError(path, self._range_problem(label[~valid]))
        classes = (label > 0).astype(np.int16) if self.binarize else label.astype(np.int16)
        classes[ignored] = IGNORE
        return classes

    def _ignored(self, label: np.ndarray) -> np.ndarray:
        if self.ignore_value is None:
            return np.zeros(label.shape, dtype=bool)
        return label == self.ignore_value

    def _range_problem(self, bad_values: np.ndarray) -> str:
        bad = np.unique(bad_values)
        shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if len(bad) > 5 else "")
        return (
            f"label values {{{shown}}} outside the class range 0..{self.n_classes - 1} "
            "(set targets.classes, targets.binarize or targets.ignore_value)"
        )

    def foreground(self, target: np.ndarray) -> np.ndarray:
        return target[..., 0] > 0

    def loss(self) -> torch.nn.Module:
        from ..losses import CrossEntropyDiceLoss  # lazy: keeps prediction-only imports light

        weights = self.cfg["train"]["loss"]
        return CrossEntropyDiceLoss(ce_weight=weights["ce"], dice_weight=weights["dice"], ignore_index=IGNORE)

    # ------------------------------------------------------------------ prediction side
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)

    def postprocess(self, prediction: np.ndarray) -> np.ndarray:
        pp = self.cfg["postprocess"]
        return semantic_postprocess(prediction, pp["threshold"], pp["z_median"], pp["min_size"])

    def write_output(self, path: str | Path, output: np.ndarray) -> None:
        imageio.write_tiff(path, np.asarray(output).astype(mask_dtype(self.n_classes), copy=False))

    def read_output(self, path: str | Path) -> np.ndarray:
        return imageio.read_label(path, self.ndim)

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: np.ndarray, label: np.ndarray, path: str | Path | None = None) -> dict[str, float]:
        """Scores against the ground truth mapped like the targets; ignored pixels are not counted."""
        gt = self.class_map(label, path)
        ignored = gt == IGNORE
        gt[ignored] = 0
        output = np.asarray(output)
        if output.shape != gt.shape:
            raise InputError(
                path, f"prediction of shape {output.shape} does not match ground truth of shape {gt.shape}"
            )
        return semantic_metrics(output, gt, self.n_classes, ignored if ignored.any() else None)

    def summarize(self, metrics: pd.DataFrame) -> pd.DataFrame:
        """Dataset figures two ways: ``mean_*`` averages the per-image values (NaN skipped),
        ``pooled_*`` divides summed pixel counts, so large images weigh more. ``*_miou``
        averages the per-class IoU over the classes that occur.
        """
        per_class: dict[str, float] = {}
        for k in range(self.n_classes):
            per_class.update(_both(metrics, f"iou_{k}", f"inter_{k}", f"union_{k}"))
            per_class.update(_pooled_dice(metrics, k))
        row: dict[str, float] = {"n_images": int(len(metrics))}
        row.update(_both(metrics, "foreground_iou", "fg_inter", "fg_union"))
        for how in ("mean", "pooled"):
            row[f"{how}_miou"] = _nanmean([per_class[f"{how}_iou_{k}"] for k in range(self.n_classes)])
        row.update(_both(metrics, "pixel_accuracy", "n_correct", "n_pixels"))
        row.update(per_class)
        return pd.DataFrame([row])


def _both(metrics: pd.DataFrame, column: str, numerator: str, denominator: str) -> dict[str, float]:
    return {
        f"mean_{column}": _nanmean(metrics[column]) if column in metrics else float("nan"),
        f"pooled_{column}": _pooled(metrics, numerator, denominator),
    }


def _pooled_dice(metrics: pd.DataFrame, k: int) -> dict[str, float]:
    column = f"dice_{k}"
    inter = 2 * _sum(metrics, f"inter_{k}")
    total = _sum(metrics, f"pred_{k}") + _sum(metrics, f"gt_{k}")
    return {
        f"mean_{column}": _nanmean(metrics[column]) if column in metrics else float("nan"),
        f"pooled_{column}": ratio(inter, total),
    }


def _pooled(metrics: pd.DataFrame, numerator: str, denominator: str) -> float:
    return ratio(_sum(metrics, numerator), _sum(metrics, denominator))


def _sum(metrics: pd.DataFrame, column: str) -> float:
    return float(metrics[column].sum()) if column in metrics else 0.0


def _nanmean(values: Any) -> float:
    """Mean ignoring NaN; NaN (not a warning) when nothing is left."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")
