"""The report's pictures of a classification run: the misclassified test images, the most
confident mistakes first (a confident mistake is a wrong label or a class the model
confuses systematically; an unsure one is a hard image)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...data import display
from ..gallery import Picture, ReportImage


def misclassified_gallery(task: Any, images: Sequence[ReportImage], folder: Path) -> list[Picture]:
    """One montage of up to ``report.examples`` misclassified images, titled true -> predicted."""
    wrong = [im for im in images if im.metrics and int(im.metrics.get("correct", 1)) == 0]
    wrong.sort(key=lambda im: (-float(im.metrics["confidence"]), im.id))
    shown = wrong[: int(task.cfg["report"]["examples"])]
    if not shown:
        return []
    axes, max_side = task.cfg["data"]["axes"], task.cfg["report"]["max_side"]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = display.new_figure(rows * cols, size=3.0, rows=rows)
    for k, image in enumerate(shown):
        view = display.view_for(display.image_shape(image.image, task.ndim, axes), max_side)
        title = (f"{image.id}\n{image.metrics['true_class']} -> {image.metrics['predicted_class']} "
                 f"({float(image.metrics['confidence']):.2f})")
        display.show(fig.add_subplot(rows, cols, k + 1), display.image_plane(image.image, task.ndim, view, axes), title)
    path = display.save_figure(fig, folder / "misclassified.png")
    return [Picture("misclassified test images", path,
                    f"{len(shown)} of {len(wrong)} misclassified images (of {len(images)}), most confident first: "
                    "true class -> predicted class (its probability)")]
