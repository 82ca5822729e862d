"""Point tables (detection ground truth) and the training targets drawn from them.

A detection label is a CSV of point coordinates per image. It is read once, checked
against its image (a point outside the image or a misspelt column would otherwise
train silently on the wrong thing), and turned into a (Z)YXC float32 map with one
channel per class: a ball of given radius around each point (segmentation-style
target, trained with BCE + Dice) or a Gaussian bump (heat-map regression).

Sizes are given in physical units (those of ``data.voxel_size``) and converted to
pixels per axis here, so anisotropic volumes get flattened balls and Gaussians that
are round in physical space. Centres are rounded to the nearest pixel, which keeps a
Gaussian's peak value exactly 1 at its point and lets every point reuse one stencil.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...core.errors import InputError

#: Coordinate column sets accepted per dimensionality, in (Z)YX order.
COORD_COLUMNS = {2: ("y", "x"), 3: ("z", "y", "x")}
#: Names of the optional class and score (predicted points) columns.
CLASS_COLUMN = "class"
SCORE_COLUMN = "score"
#: A Gaussian stencil is cut at this many sigmas (values beyond are below 0.012).
GAUSSIAN_TRUNCATE = 3.0
TARGET_KINDS = ("ball", "gaussian")


@dataclass(frozen=True)
class PointSet:
    """Points of one image: (N, ndim) pixel coordinates (Z)YX, class index per point.

    ``classes`` holds channel indices 0..K-1 (all 0 when the task has no classes);
    ``shape`` is the spatial shape of the image the points belong to, when known;
    ``scores`` is set for predicted points.
    """

    coords: np.ndarray
    classes: np.ndarray
    shape: tuple[int, ...] | None = None
    scores: np.ndarray | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords, dtype=np.float64)
        if coords.ndim != 2:  # a flat list of one point per row, or an empty list
            coords = coords.reshape(len(coords), -1) if coords.size else coords.reshape(0, 0)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "classes", np.asarray(self.classes, dtype=np.int64).reshape(-1))
        if self.scores is not None:
            object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64).reshape(-1))
        if len(self.classes) != len(coords):
            raise ValueError(f"{len(coords)} points but {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def ndim(self) -> int:
        return int(self.coords.shape[1])

    def subset(self, keep: np.ndarray) -> PointSet:
        """The points selected by a boolean mask or index array."""
        scores = None if self.scores is None else self.scores[keep]
        return PointSet(self.coords[keep], self.classes[keep], self.shape, scores, self.path)


# --------------------------------------------------------------------------- reading


def read_points(
    path: str | Path,
    ndim: int,
    image_shape: Sequence[int] | None = None,
    class_values: Sequence[object] | None = None,
) -> PointSet:
    """Read and check one points CSV; every problem is an InputError naming ``path``.

    Coordinates come from columns ``y,x`` / ``z,y,x`` or napari's ``axis-0,axis-1[,axis-2]``
    (an ``index`` column is ignored); a ``score`` column is read when present. ``class_values`` lists the class column's values in
    channel order; None ignores any class column (one class). With ``image_shape`` every
    point must round to a pixel of the image.
    """
    table = _read_table(path)
    coords = _coordinates(table, path, ndim)
    if image_shape is not None:
        _check_inside(coords, tuple(int(s) for s in image_shape), path)
    classes = _class_indices(table, path, class_values)
    shape = None if image_shape is None else tuple(int(s) for s in image_shape)
    scores = _numeric_column(table[SCORE_COLUMN], SCORE_COLUMN, path, allow_missing=True) if SCORE_COLUMN in table.columns else None
    return PointSet(coords, classes, shape, scores, str(path))


def _read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "points file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise InputError(path, "points CSV is empty (expected a header such as 'y,x' or 'z,y,x')") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read points CSV ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    return table


def coordinate_columns(columns: Sequence[str]) -> list[str]:
    """The coordinate columns present, (Z)YX order: named axes, else napari's axis-N."""
    named = [c for c in ("z", "y", "x") if c in columns]
    if named:
        return named
    napari = sorted((c for c in columns if c.startswith("axis-") and c[5:].isdigit()), key=lambda c: int(c[5:]))
    return napari


def _coordinates(table: pd.DataFrame, path: str | Path, ndim: int) -> np.ndarray:
    columns = coordinate_columns(list(table.columns))
    wanted = ",".join(COORD_COLUMNS[ndim])
    if not columns:
        raise InputError(path, f"no coordinate columns (expected {wanted}, or napari's axis-0,axis-1...; "
                               f"found {','.join(table.columns) or 'none'})")
    if len(columns) != ndim:
        raise InputError(path, f"has {len(columns)} coordinate columns ({','.join(columns)}) but ndim is {ndim} "
                               f"(expected {wanted})")
    if columns[0] in ("y", "x", "z") and tuple(columns) != COORD_COLUMNS[ndim]:
        raise InputError(path, f"coordinate columns {','.join(columns)} do not match ndim {ndim} (expected {wanted})")
    values = np.empty((len(table), ndim), dtype=np.float64)
    for axis, name in enumerate(columns):
        values[:, axis] = _numeric_column(table[name], f"coordinate {name}", path)
    return values


def _numeric_column(column: pd.Series, name: str, path: str | Path, allow_missing: bool = False) -> np.ndarray:
    """Column as floats; the first empty, non-numeric or infinite cell is reported by CSV line.

    ``allow_missing`` lets empty or 'nan' cells through as NaN (scores of points that have none).
    """
    text = column.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    missing = text.str.lower().isin(["", "nan"]).to_numpy() if allow_missing else np.zeros(len(text), bool)
    bad = np.flatnonzero(~np.isfinite(numbers) & ~missing)
    if bad.size:
        row = int(bad[0])
        shown = text.iloc[row] or "<empty>"
        raise InputError(path, f"line {row + 2}: {name} = '{shown}' is not a finite number "
                               f"({bad.size} such row(s))")
    return numbers


def _check_inside(coords: np.ndarray, shape: tuple[int, ...], path: str | Path) -> None:
    """A point must round to a pixel: -0.5 <= c < size - 0.5 on every axis."""
    if len(shape) != coords.shape[1]:
        raise InputError(path, f"points have {coords.shape[1]} coordinates but the image has shape {shape}")
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    outside = np.flatnonzero(((coords < -0.5) | (coords >= upper)).any(axis=1))
    if outside.size:
        row = int(outside[0])
        point = ", ".join(f"{c:g}" for c in coords[row])
        raise InputError(path, f"line {row + 2}: point ({point}) lies outside the image of shape {shape} "
                               f"({outside.size} point(s) outside)")


def _class_indices(table: pd.DataFrame, path: str | Path, class_values: Sequence[object] | None) -> np.ndarray:
    if class_values is None:
        return np.zeros(len(table), dtype=np.int64)
    if CLASS_COLUMN not in table.columns:
        raise InputError(path, f"targets.detection.classes lists {len(class_values)} classes but the CSV has no "
                               f"'{CLASS_COLUMN}' column")
    lookup = {class_key(v): k for k, v in enumerate(class_values)}
    keys = [class_key(v) for v in table[CLASS_COLUMN]]
    indices = np.fromiter((lookup.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
    unknown = np.flatnonzero(indices < 0)
    if unknown.size:
        row = int(unknown[0])
        raise InputError(path, f"line {row + 2}: class '{keys[row]}' is not one of targets.detection.classes "
                               f"{[class_key(v) for v in class_values]}")
    return indices


def class_key(value: object) -> str:
    """Canonical text of a class value, so 1, 1.0, '1' and ' 1 ' are the same class."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number == int(number) else text


# --------------------------------------------------------------------------- targets


def pixel_sizes(size: float | Sequence[float], ndim: int, voxel_size: Sequence[float] | None) -> np.ndarray:
    """A physical length (one number, or one per axis) in pixels along each (Z)YX axis."""
    values = np.broadcast_to(np.asarray(size, dtype=np.float64), (ndim,)) if np.ndim(size) == 0 \
        else np.asarray(size, dtype=np.float64)
    if values.shape != (ndim,):
        raise ValueError(f"size {size!r} has {values.size} entries for ndim {ndim}")
    spacing = np.ones(ndim) if voxel_size is None else np.asarray(voxel_size, dtype=np.float64)
    return values / spacing


def ball_stencil(radius_px: Sequence[float]) -> np.ndarray:
    """Float32 0/1 ellipsoid with the given per-axis radii (pixels); always holds its centre."""
    radius_px = np.asarray(radius_px, dtype=np.float64)
    half = np.floor(radius_px + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    safe = np.maximum(radius_px, 1e-12)
    dist2 = sum((g / r) ** 2 for g, r in zip(grids, safe))
    return (dist2 <= 1.0 + 1e-9).astype(np.float32)


def gaussian_stencil(sigma_px: Sequence[float], truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """Unnormalized Gaussian exp(-d²/2σ²) per axis, exactly 1 at the centre, cut at ``truncate`` σ."""
    sigma_px = np.maximum(np.asarray(sigma_px, dtype=np.float64), 1e-12)
    half = np.ceil(truncate * sigma_px).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    dist2 = sum((g / s) ** 2 for g, s in zip(grids, sigma_px))
    return np.exp(-0.5 * dist2).astype(np.float32)


def stencil_half_widths(kind: str, size: float | Sequence[float], ndim: int,
                        voxel_size: Sequence[float] | None) -> tuple[int, ...]:
    """How far, in pixels per axis, a point's target reaches from its centre."""
    px = pixel_sizes(size, ndim, voxel_size)
    stencil = ball_stencil(px) if kind == "ball" else gaussian_stencil(px)
    return tuple(int(s) // 2 for s in stencil.shape)


def rounded_pixels(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest pixel of each point (half-way rounds up), clipped into the image."""
    pixels = np.floor(np.asarray(coords, dtype=np.float64) + 0.5).astype(np.int64)
    return np.clip(pixels, 0, np.asarray(shape, dtype=np.int64) - 1) if len(pixels) else pixels


def stamp(canvas: np.ndarray, centres: np.ndarray, stencil: np.ndarray) -> None:
    """Write ``max(canvas, stencil)`` around each centre, in place, clipped at the borders.

    Max rather than sum: overlapping bumps of close points stay at most 1, so each
    point keeps its own peak and a ball target stays binary.
    """
    half = np.asarray(stencil.shape) // 2
    shape = np.asarray(canvas.shape)
    for centre in centres:
        lo, hi = centre - half, centre + half + 1
        clo, chi = np.maximum(lo, 0), np.minimum(hi, shape)
        dst = tuple(slice(a, b) for a, b in zip(clo, chi))
        src = tuple(slice(a, b) for a, b in zip(clo - lo, chi - lo))
        np.maximum(canvas[dst], stencil[src], out=canvas[dst])


def point_targets(
    points: PointSet,
    shape: Sequence[int],
    n_channels: int,
    kind: str,
    size: float | Sequence[float],
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """(Z)YXC float32 map: channel k holds the balls/Gaussians of the points of class k.

    ``size`` is the ball radius or the Gaussian sigma in physical units (pixels when
    ``voxel_size`` is None).
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r} (choose from {', '.join(TARGET_KINDS)})")
    px = pixel_sizes(size, ndim, voxel_size)
    stencil = ball_stencil(px) if kind == "ball" else gaussian_stencil(px)
    target = np.zeros(shape + (n_channels,), dtype=np.float32)
    pixels = rounded_pixels(points.coords, shape)
    for k in range(n_channels):
        channel = np.zeros(shape, dtype=np.float32)
        stamp(channel, pixels[points.classes == k], stencil)
        target[..., k] = channel
    return target
