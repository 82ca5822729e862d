"""Pictures for the run report: one plane of an image, small and in display range, with
outlines or points drawn on it.

Pictures are made from the files on disk, read lazily, so a volume larger than memory
costs one plane: a 3D image shows one z-plane (or, when small, its maximum projection),
and an image whose longest edge exceeds ``max_side`` is read at every n-th pixel (a
downsampled overview). Labels and points are taken at the same plane and step, so they
stay on their pixels. Figures are matplotlib's object-oriented ones (pyplot's global
state is not thread-safe, and report jobs run as threads of the Snakemake process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.imageio import atomic_path, open_array
from .lazy import open_lazy

#: Volumes up to this many voxels are shown by their maximum projection when asked.
PROJECT_VOXELS = 2**26
#: Display range of an image: these percentiles map to black and white.
DISPLAY_PERCENTILES = (1.0, 99.8)
#: Colours (RGB, 0-1) of ground truth, prediction, and the three point kinds.
TRUE_COLOUR = (0.2, 1.0, 0.2)
PRED_COLOUR = (1.0, 0.2, 1.0)
POINT_COLOURS = {"tp": "#33ff33", "fp": "#ff3333", "fn": "#33ccff", "pred": "#ff33ff"}


@dataclass(frozen=True)
class View:
    """What a picture shows of a (Z)YX image: plane ``z`` (None in 2D or when ``project``ed
    along z) read at every ``step``-th pixel along Y and X."""

    shape: tuple[int, ...]
    z: int | None
    step: int
    project: bool = False

    @property
    def spatial_key(self) -> tuple[slice, ...]:
        yx = (slice(None, None, self.step),) * 2
        if len(self.shape) == 2:
            return yx
        return ((slice(None) if self.project else slice(self.z, self.z + 1)),) + yx

    def to_pixels(self, coords: np.ndarray) -> np.ndarray:
        """(N, ndim) (Z)YX coordinates -> (N, 2) picture coordinates (y, x)."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, len(self.shape))
        return coords[:, -2:] / self.step

    def near_plane(self, coords: np.ndarray, depth: float) -> np.ndarray:
        """Which points show in this view: all in 2D or a projection, else those within ``depth`` of z."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, len(self.shape))
        if len(self.shape) == 2 or self.project:
            return np.ones(len(coords), dtype=bool)
        return np.abs(coords[:, 0] - float(self.z)) <= depth


def view_for(shape: Sequence[int], max_side: int, z: int | None = None, project: bool = False) -> View:
    """The view of a (Z)YX image: every n-th pixel so that the longest edge is at most
    ``max_side``; plane ``z`` (default the middle), or the projection if asked and small."""
    shape = tuple(int(s) for s in shape)
    step = max(1, math.ceil(max(shape[-2:]) / max(int(max_side), 1)))
    if len(shape) == 2:
        return View(shape, None, step)
    if project and math.prod(shape) <= PROJECT_VOXELS:
        return View(shape, None, step, project=True)
    return View(shape, shape[0] // 2 if z is None else int(np.clip(z, 0, shape[0] - 1)), step)


def image_shape(path: str | Path, ndim: int, axes: str | None = None) -> tuple[int, ...]:
    """Spatial (Z)YX shape of an image file, from its header."""
    return tuple(open_lazy(path, ndim, axes).shape[:-1])


def image_plane(path: str | Path, ndim: int, view: View, axes: str | None = None) -> np.ndarray:
    """The view of an image as (Y, X, 3) floats in [0, 1] (grey images repeat their channel;
    two channels become red and green; a fourth is dropped)."""
    image = open_lazy(path, ndim, axes)
    plane = np.asarray(image[view.spatial_key + (slice(None),)], dtype=np.float32)
    if ndim == 3:
        plane = plane.max(axis=0)
    return to_rgb(display_range(plane))


def display_range(plane: np.ndarray) -> np.ndarray:
    """Each channel of a (Y, X, C) plane mapped from its 1st..99.8th percentile to 0..1."""
    out = np.empty(plane.shape, dtype=np.float32)
    for c in range(plane.shape[-1]):
        channel = plane[..., c]
        finite = channel[np.isfinite(channel)]
        low, high = np.percentile(finite, DISPLAY_PERCENTILES) if finite.size else (0.0, 1.0)
        out[..., c] = np.clip((channel - low) / (high - low if high > low else 1.0), 0, 1)
    return np.nan_to_num(out)


def to_rgb(plane: np.ndarray) -> np.ndarray:
    channels = plane.shape[-1]
    if channels == 1:
        return np.repeat(plane, 3, axis=-1)
    if channels == 2:
        return np.concatenate([plane, np.zeros(plane.shape[:-1] + (1,), plane.dtype)], axis=-1)
    return plane[..., :3]


def label_plane(path: str | Path, ndim: int, view: View) -> np.ndarray:
    """The view of a label image or volume (TIFF, Zarr, OME-Zarr), (Y, X) integers; a
    projection keeps, per pixel, the largest label along z."""
    arr = open_array(path)
    index: list[Any] = []
    extra = arr.ndim - ndim  # singleton axes that read_label would drop (e.g. a channel of 1)
    for size in arr.shape:
        if extra and size == 1:
            index.append(0)
            extra -= 1
        else:
            index.append(slice(None))
    spatial = [i for i, k in enumerate(index) if isinstance(k, slice)]
    for axis, key in zip(spatial, view.spatial_key, strict=True):
        index[axis] = key
    plane = np.asarray(arr[tuple(index)])
    return plane.max(axis=0) if plane.ndim == 3 else plane


def overlay(picture: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None) -> np.ndarray:
    """The picture with the outlines of true (green) and predicted (magenta) objects or classes."""
    from skimage.segmentation import find_boundaries

    out = np.array(picture, dtype=np.float32, copy=True)
    for labels, colour in ((truth, TRUE_COLOUR), (prediction, PRED_COLOUR)):
        if labels is not None and np.any(labels):
            out[find_boundaries(np.asarray(labels), mode="inner")] = colour
    return out


def new_figure(panels: int, size: float = 4.0, rows: int = 1) -> Any:
    """A matplotlib Figure (Agg canvas) for ``panels`` pictures in ``rows`` rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = math.ceil(panels / rows)
    fig = Figure(figsize=(size * cols, size * rows), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def show(ax: Any, picture: np.ndarray, title: str) -> None:
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def draw_points(ax: Any, yx: np.ndarray, kind: str, label: str) -> None:
    """Points as open circles of the kind's colour (tp, fp, fn, or pred for unscored points)."""
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    ax.scatter(yx[:, 1], yx[:, 0], s=36, facecolors="none", edgecolors=POINT_COLOURS[kind], linewidths=1.2,
               label=f"{label} ({len(yx)})")


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a figure as PNG, atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
