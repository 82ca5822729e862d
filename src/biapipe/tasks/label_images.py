"""What the workflows whose output is a label image (semantic masks, instance labels) share:
TIFF outputs, and for images processed block by block an OME-Zarr label volume written
block by block and scored against a ground truth that may itself exceed memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zarr

from ..data.blocks import Block
from ..large.plan import postprocess_plan
from ..large.volumes import SpatialView, label_volume, scoring_pair
from .base import Task


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
                self.write_side_outputs_large(side, out, blocks, n, image_path)

    def segment_blocks(self, pred: Any, out: Any, blocks: list[Block], work: Path,
                       segmented: tuple[str, list[str]] | None) -> int:
        """Fill ``out`` from ``pred`` block by block; returns the number of labels."""
        raise NotImplementedError

    def write_side_outputs_large(self, side: dict[str, str], labels: Any, blocks: list[Block], n: int,
                                 image_path: str | None) -> None:
        """The side outputs of a block-wise label volume; none by default."""

    def evaluate_large(self, output_path: str | Path, label_path: str | Path) -> dict[str, float]:
        pred, gt, blocks = scoring_pair(output_path, label_path, self.ndim, self.cfg["predict"])
        return self.score_blocks(pred, gt, blocks, label_path)

    def score_blocks(self, pred: SpatialView, gt: SpatialView, blocks: list[Block],
                     label_path: str | Path) -> dict[str, float]:
        raise NotImplementedError
