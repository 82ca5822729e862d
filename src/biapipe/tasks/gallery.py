"""What the report's gallery hooks of a Task receive and return (``Task.report_gallery``).

The report shows a few test images as pictures: by default the best, the median and the
worst by the task's ``main_metric``, because the mean hides what the failures look like.
How an image is drawn (outlines, points, side by side) is each workflow's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import display


@dataclass(frozen=True)
class ReportImage:
    """One test image with everything written about it."""

    id: str
    #: the raw image file
    image: str
    #: its ground truth (a file, or a class name); None when unlabelled
    label: str | None
    #: the post-processed output (large images: in the task's large format)
    output: str
    #: its row of metrics.csv (empty when unscored)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the task's side outputs of this image (name -> path), e.g. the object table
    side: dict[str, str] = field(default_factory=dict)
    #: the task's per-image details file (e.g. point assignments), when written
    details: str | None = None


@dataclass(frozen=True)
class Picture:
    """A PNG of the gallery, with its title and a one-line caption."""

    title: str
    path: Path
    caption: str


def pick_examples(images: Sequence[ReportImage], column: str) -> list[tuple[str, ReportImage]]:
    """(role, image) for the best, median and worst image by ``column`` (higher is better),
    each image once; without that score, the first three images in name order."""
    scored = [(float(im.metrics[column]), im.id, im) for im in images
              if column and np.isfinite(_number(im.metrics.get(column)))]
    if not scored:
        return [(f"example {k + 1}", im) for k, im in enumerate(sorted(images, key=lambda i: i.id)[:3])]
    scored.sort(key=lambda s: (-s[0], s[1]))
    picks = [("best", scored[0]), ("median", scored[(len(scored) - 1) // 2]), ("worst", scored[-1])]
    seen: set[str] = set()
    out = []
    for role, (_, name, image) in picks:
        if name not in seen:
            seen.add(name)
            out.append((role, image))
    return out


def caption(image: ReportImage, columns: Sequence[str]) -> str:
    """``image: col = value, ...`` for the columns its metrics have."""
    values = [f"{c} = {_format(image.metrics[c])}" for c in columns if c in image.metrics]
    return f"{image.id}: " + (", ".join(values) if values else "not scored")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _format(value: Any) -> str:
    number = _number(value)
    if np.isnan(number):
        return str(value) if not pd.isna(value) else "n/a"
    return f"{number:.4g}"


class GalleryHooks:
    """The report hooks every Task has (mixed into ``Task``): which test images the report
    shows and how one is drawn; workflows override :meth:`report_picture`."""

    ndim: int
    cfg: Any
    main_metric: str

    def report_gallery(self, images: Sequence[ReportImage], folder: Path) -> list[Picture]:
        """The report's pictures of test images, written as PNGs into ``folder``: by default the
        best, median and worst image by :attr:`main_metric`, each drawn by :meth:`report_picture`."""
        return [self.report_picture(image, role, folder / f"{k}_{role.replace(' ', '_')}_{image.id}.png")
                for k, (role, image) in enumerate(pick_examples(images, self.main_metric))]

    def report_picture(self, image: ReportImage, role: str, path: Path) -> Picture:
        """One test image as a picture (default: the image alone; workflows draw their output on it)."""
        view = display.view_for(display.image_shape(image.image, self.ndim, self.cfg["data"]["axes"]),
                                self.cfg["report"]["max_side"])
        fig = display.new_figure(1)
        display.show(fig.add_subplot(1, 1, 1), display.image_plane(image.image, self.ndim, view,
                                                                   self.cfg["data"]["axes"]), image.id)
        return Picture(f"{role}: {image.id}", display.save_figure(fig, path), caption(image, [self.main_metric]))
