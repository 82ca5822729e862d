"""What the workflows whose output is a label image (semantic masks, instance labels) share:
TIFF outputs, and for images processed block by block an OME-Zarr label volume written
block by block and scored against a ground truth that may itself exceed memory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zarr

from ..core.imageio import read_label
from ..data import display
from ..data.blocks import Block
from ..large.plan import postprocess_plan
from ..large.volumes import SpatialView, label_volume, scoring_pair
from .base import Task
from .gallery import Picture, ReportImage, caption


class LabelImageTask(Task):
    output_suffix: ClassVar[str] = ".tif"
    large_output_suffix: ClassVar[str | None] = ".ome.zarr"
    #: dtype of a block-wise label volume (its number of labels is unknown until the end)
    large_label_dtype: ClassVar[Any] = np.uint32

    def postprocess_large(self, pred_zarr: str | Path, out_path: str | Path, side: dict[str, str] | None,
                          image_path: str | None, segmented: tuple[str, list[str]] | None) -> None:
        """The prediction's labels, block by block, as OME-Zarr (``*.ome.zarr``) or BigTIFF (``*.tif``).
        ``segmented`` = (raw-id store, per-block records) when blocks were segmented by separate jobs."""
        pred = zarr.open_array(str(pred_zarr), mode="r")
        blocks = postprocess_plan(pred.shape, pred.chunks, self.cfg["predict"])
        with label_volume(out_path, pred.shape[:-1], self.large_label_dtype, pred.chunks[:-1],
                          self.cfg["data"]["voxel_size"]) as (out, work):
            n = self.segment_blocks(pred, out, blocks, work, segmented)
            if side:
                self.write_side_outputs_large(side, out, blocks, n, image_path, pred)

    def segment_blocks(self, pred: Any, out: Any, blocks: list[Block], work: Path,
                       segmented: tuple[str, list[str]] | None) -> int:
        """Fill ``out`` from ``pred`` block by block; returns the number of labels."""
        raise NotImplementedError

    def write_side_outputs_large(self, side: dict[str, str], labels: Any, blocks: list[Block], n: int,
                                 image_path: str | None, prediction: Any = None) -> None:
        """The side outputs of a block-wise label volume (``prediction``: the lazy (Z)YXC
        prediction it was made from); none by default."""

    def evaluate_large(self, output_path: str | Path, label_path: str | Path) -> dict[str, float]:
        pred, gt, blocks = scoring_pair(output_path, label_path, self.ndim, self.cfg["predict"])
        return self.score_blocks(pred, gt, blocks, label_path)

    def score_blocks(self, pred: SpatialView, gt: SpatialView, blocks: list[Block],
                     label_path: str | Path) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ report
    def report_picture(self, image: ReportImage, role: str, path: Path) -> Picture:
        """The image beside itself with the outlines of the true (green) and predicted (magenta)
        objects or classes; a volume at the plane with the most ground truth (when it is small),
        an image larger than ``report.max_side`` downsampled."""
        axes = self.cfg["data"]["axes"]
        shape = display.image_shape(image.image, self.ndim, axes)
        z = _busiest_plane(image.label, shape, self.ndim) if image.label is not None else None
        view = display.view_for(shape, self.cfg["report"]["max_side"], z)
        picture = display.image_plane(image.image, self.ndim, view, axes)
        truth = self.display_truth(display.label_plane(image.label, self.ndim, view)) if image.label else None
        pred = display.label_plane(image.output, self.ndim, view)
        fig = display.new_figure(2)
        where = f" (z = {view.z})" if view.z is not None else ""
        step = f", every {view.step}th pixel" if view.step > 1 else ""
        display.show(fig.add_subplot(1, 2, 1), picture, f"{image.id}{where}{step}")
        display.show(fig.add_subplot(1, 2, 2), display.overlay(picture, truth, pred),
                     "truth (green), prediction (magenta)")
        return Picture(f"{role}: {image.id}", display.save_figure(fig, path), caption(image, [self.main_metric]))

    def display_truth(self, labels: np.ndarray) -> np.ndarray:
        """Ground truth as the report outlines it (default: as stored)."""
        return labels


def _busiest_plane(label: str, shape: tuple[int, ...], ndim: int) -> int | None:
    """The z-plane with the most labelled pixels of a small volume (None in 2D or when large)."""
    if ndim != 3 or math.prod(shape) > display.PROJECT_VOXELS:
        return None
    labels = read_label(label, ndim)
    return int(np.argmax((labels > 0).sum(axis=(1, 2))))
