"""Validation scores of patches, for ``train.monitor: iou | f1``."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..data.sources import IGNORE_INDEX

#: Monitors that are scores of the validation patches (higher is better) rather than losses.
SCORE_MONITORS = ("iou", "f1")


class Scored(Protocol):
    """What scoring needs from a task (see ``tasks/base.py``)."""

    def activate(self, logits: torch.Tensor) -> torch.Tensor: ...

    def foreground(self, target: np.ndarray) -> np.ndarray: ...

    def object_counts(self, prediction: np.ndarray, target: np.ndarray) -> tuple[int, int, int] | None: ...


class ValidationScorer:
    """Foreground IoU and F1 of the validation patches, for ``train.monitor: iou | f1``.

    Predicted foreground is ``task.activate`` then a threshold: for class maps the
    argmax is a foreground class (any class > 0; ignored pixels are skipped); for
    per-channel maps, ``task.foreground`` applied to the activated prediction and to
    the target (e.g. instance: foreground > 0.5, or signed distance > 0).

    F1 is the object F1 at IoU 0.5 where the task can count objects on a patch
    (:meth:`Scored.object_counts`: the instance workflow runs its watershed on the
    prediction and on the target); otherwise the pixel F1 (Dice) of the foreground.
    """

    def __init__(self, task: Scored) -> None:
        self.task = task
        self.counts = np.zeros(3)  # pixel tp, fp, fn
        self.objects = np.zeros(3)  # object tp, fp, fn at IoU 0.5
        self.counts_objects = False

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        probs = self.task.activate(logits)
        if target.is_floating_point():
            pred_fg = self._foreground(probs)
            true_fg = self._foreground(target)
            valid = np.ones_like(true_fg)
        else:
            classes = target[:, 0]
            pred_fg = (probs.argmax(1) > 0).cpu().numpy()
            true_fg = (classes > 0).cpu().numpy()
            valid = (classes != IGNORE_INDEX).cpu().numpy()
        self.counts += [np.sum(pred_fg & true_fg & valid), np.sum(pred_fg & ~true_fg & valid),
                        np.sum(~pred_fg & true_fg & valid)]
        for p, t in zip(probs.float().movedim(1, -1).cpu().numpy(), target.float().movedim(1, -1).cpu().numpy()):
            counts = self.task.object_counts(p, t)
            if counts is None:
                break
            self.counts_objects = True
            self.objects += counts

    def _foreground(self, maps: torch.Tensor) -> np.ndarray:
        channels_last = maps.float().movedim(1, -1).cpu().numpy()
        return np.stack([np.asarray(self.task.foreground(m), dtype=bool) for m in channels_last])

    def result(self) -> dict[str, float]:
        """``iou`` and ``f1``; 1.0 when there is nothing to find and nothing was found."""
        tp, fp, fn = self.counts
        if self.counts_objects:
            otp, ofp, ofn = self.objects
            f1 = 2 * otp / (2 * otp + ofp + ofn) if otp + ofp + ofn else 1.0
        else:
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        return {"iou": float(tp / (tp + fp + fn)) if tp + fp + fn else 1.0, "f1": float(f1)}
