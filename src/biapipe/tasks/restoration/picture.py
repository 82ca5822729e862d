"""How the report draws one restored test image: input, restored output and target side by side.

The output and the target share one display range (the target's), so leftover noise or a
wrong intensity shows as it is instead of being stretched away; the input keeps its own.
A super-resolution input sits on its coarser grid: each panel is viewed on its own grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...data import display
from ...data.lazy import open_lazy
from ..gallery import Picture, ReportImage, caption
from .output import read_restored


def _plane(path: str, ndim: int, max_side: int, axes: str | None, restored: bool) -> tuple[np.ndarray, Any]:
    """The middle plane (Y, X, C) of a (Z)YXC image, every n-th pixel; restored TIFFs by their own reader."""
    if restored and not str(path).lower().endswith(".zarr"):
        image: Any = read_restored(path, ndim)
    else:
        image = open_lazy(path, ndim, None if restored else axes)
    view = display.view_for(tuple(image.shape[:-1]), max_side)
    plane = np.asarray(image[view.spatial_key + (slice(None),)], dtype=np.float32)
    return (plane.max(axis=0) if ndim == 3 else plane), view


def _shared_range(planes: list[np.ndarray], reference: np.ndarray) -> list[np.ndarray]:
    """Planes mapped to 0..1 with the reference's 1st..99.8th percentile per channel."""
    low = np.nanpercentile(reference, display.DISPLAY_PERCENTILES[0], axis=(0, 1))
    high = np.nanpercentile(reference, display.DISPLAY_PERCENTILES[1], axis=(0, 1))
    span = np.where(high > low, high - low, 1.0)
    return [np.clip(np.nan_to_num((p - low) / span), 0, 1) for p in planes]


def restoration_picture(image: ReportImage, role: str, path: Path, ndim: int, axes: str | None,
                        max_side: int, metric: str) -> Picture:
    """Input | restored | target (when there is one) of a test image, as one PNG."""
    source, view = _plane(image.image, ndim, max_side, axes, restored=False)
    restored, _ = _plane(image.output, ndim, max_side, axes, restored=True)
    panels = [(display.to_rgb(display.display_range(source)), f"input {image.id}"
               + (f" (z = {view.z})" if view.z is not None else ""))]
    target = None
    if image.label is not None and image.label != image.image:
        target, _ = _plane(image.label, ndim, max_side, axes, restored=False)
    if target is not None and target.shape[-1] == restored.shape[-1]:
        restored_shown, target_shown = _shared_range([restored, target], target)
        panels += [(display.to_rgb(restored_shown), "restored (target's display range)"),
                   (display.to_rgb(target_shown), "target")]
    else:
        panels.append((display.to_rgb(display.display_range(restored)), "restored"))
    fig = display.new_figure(len(panels))
    for k, (picture, title) in enumerate(panels, start=1):
        display.show(fig.add_subplot(1, len(panels), k), picture, title)
    return Picture(f"{role}: {image.id}", display.save_figure(fig, path), caption(image, [metric]))
