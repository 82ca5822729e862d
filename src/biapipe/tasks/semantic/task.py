"""Semantic segmentation: every pixel gets one of K classes.

Targets are class maps (int16, -1 = ignored) and the model outputs K logits per pixel.
The same label mapping (``targets.binarize``, ``targets.ignore_value``) is applied to
the ground truth at evaluation time, so training and scoring agree on what a class is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from ...core import imageio
from ...core.errors import BiapipeError, InputError
from ...data.blocks import Block
from ..label_images import LabelImageTask
from .large import semantic_blocks, semantic_metrics_blocks
from .metrics import semantic_metrics, summarize_semantic
from .postprocess import mask_dtype, semantic_postprocess

#: Class-map value of pixels excluded from loss and metrics.
IGNORE = -1


class SemanticTask(LabelImageTask):
    name: ClassVar[str] = "semantic"
    output_dir: ClassVar[str] = "masks"
    large_label_dtype: ClassVar[Any] = np.uint8
    main_metric = "foreground_iou"
    main_score = "pooled_foreground_iou"
    main_score_name = "foreground IoU (pooled over pixels)"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        targets = cfg["targets"]
        self.n_classes: int = int(targets["classes"])
        self.binarize: bool = bool(targets["binarize"])
        self.ignore_value: int | None = targets["ignore_value"]

    @classmethod
    def classes_config(cls, values: Sequence[str]) -> dict[str, Any]:
        """``--classes K``: the number of classes."""
        if len(values) != 1 or not str(values[0]).isdigit():
            raise BiapipeError(f"--classes: the semantic workflow takes the number of classes, got {' '.join(values)}")
        return {"targets": {"classes": int(values[0])}}

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

    def check_label(self, path: str | Path, image_shape: tuple[int, ...]) -> None:
        self.class_map(self.read_label(path, image_shape), path)

    def foreground(self, target: np.ndarray) -> np.ndarray:
        return target[..., 0] > 0

    def loss(self) -> torch.nn.Module:
        from ...training.losses import CrossEntropyDiceLoss

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

    def summarize(self, metrics: pd.DataFrame, details: pd.DataFrame | None = None) -> pd.DataFrame:
        return pd.DataFrame([summarize_semantic(metrics, self.n_classes)])

    def display_truth(self, labels: np.ndarray) -> np.ndarray:
        """Classes as scored (``targets.binarize``), ignored pixels as background."""
        classes = self.class_map(labels)
        classes[classes == IGNORE] = 0
        return classes

    # ------------------------------------------------------------------ large images
    def segment_blocks(self, pred: Any, out: Any, blocks: list[Block], work: Path,
                       segmented: tuple[str, list[str]] | None) -> int:
        pp = self.cfg["postprocess"]
        semantic_blocks(pred, out, blocks, work / "components.zarr", pp["threshold"], pp["z_median"], pp["min_size"])
        return len(blocks)

    def score_blocks(self, pred: Any, gt: Any, blocks: list[Block], label_path: str | Path) -> dict[str, float]:
        def classes(g: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            c = self.class_map(g, label_path)
            ignored = c == IGNORE
            c[ignored] = 0
            return c, (ignored if ignored.any() else None)

        return semantic_metrics_blocks(pred, gt, self.n_classes, blocks, classes)

    # ------------------------------------------------------------------ export
    def activation_spec(self) -> list[list[Any]]:
        return [["softmax"]]

    def output_channel_names(self) -> list[str]:
        return [f"class_{k}" for k in range(self.out_channels())]
