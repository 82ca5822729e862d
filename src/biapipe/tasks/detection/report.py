"""The report's picture of a detection result: the points drawn on the image, coloured by
what the matching made of them (true positive, false positive, missed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...data import display
from ..gallery import Picture, ReportImage, caption

#: How each status is named in the legend.
STATUS_NAMES = {"tp": "matched", "fp": "false positive", "fn": "missed"}


def points_picture(task: Any, image: ReportImage, role: str, path: Path) -> Picture:
    """A 2D image, or a small volume's maximum projection (a large one's middle plane, with the
    points within the tolerance of it), with the points of its assignments table; unscored
    images show their predicted points."""
    axes = task.cfg["data"]["axes"]
    view = display.view_for(display.image_shape(image.image, task.ndim, axes), task.cfg["report"]["max_side"],
                            project=True)
    picture = display.image_plane(image.image, task.ndim, view, axes)
    fig = display.new_figure(2)
    display.show(fig.add_subplot(1, 2, 1), picture, image.id + (" (max projection)" if view.project else ""))
    ax = fig.add_subplot(1, 2, 2)
    display.show(ax, picture, "points")
    for kind, coords in _points(task, image):
        shown = view.near_plane(coords, task.tolerance)
        display.draw_points(ax, view.to_pixels(coords[shown]), kind, STATUS_NAMES.get(kind, "predicted"))
    ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    return Picture(f"{role}: {image.id}", display.save_figure(fig, path),
                   caption(image, [task.main_metric, "tp", "fp", "fn"]))


def _points(task: Any, image: ReportImage) -> list[tuple[str, np.ndarray]]:
    """(status, (N, ndim) coordinates) from the assignments table, or the predicted points."""
    if image.details and Path(image.details).is_file():
        table = pd.read_csv(image.details)
        out = []
        for status in ("tp", "fp", "fn"):
            side = "gt" if status == "fn" else "pred"
            rows = table[table["status"] == status]
            out.append((status, rows[[f"{side}_{a}" for a in task.axes]].to_numpy(dtype=np.float64)))
        return out
    return [("pred", task.read_output(image.output).coords)]
