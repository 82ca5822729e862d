"""Overlapping tiles over a (Z)YX image, blended back into one prediction.

A network sees a bounded region at a time, so memory depends on the tile size and
the batch, never on the image. Overlapping tiles are blended with a window that
down-weights tile borders, where a network has the least context, which removes
seams. 2D and 3D share every line: an axis is an axis.

Windows are products of 1D windows and the grid is a Cartesian product of per-axis
tile starts, so the sum of weights at a pixel is the product of per-axis sums. That
lets the blend normalise with three small 1D arrays instead of a second image-sized
weight accumulator.

A network's output is worst at a tile edge (zero padding, missing context), yet a
window that is positive everywhere still gives it some weight. So on each side where
a neighbouring tile exists, the outer ``trim`` fraction of the overlap gets weight 0:
the neighbour sees those pixels with context. The rest of the overlap is blended.
When the trimmed margin is at least the network's receptive-field radius, tiled
prediction equals whole-image prediction away from the image border.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BLEND_KINDS = ("gaussian", "linear", "constant")

#: sigma of the gaussian window as a fraction of the tile edge (as nnU-Net and BiaPy use).
GAUSSIAN_SIGMA_FRACTION = 1 / 8

#: Default fraction of each overlap ignored on each tile side that faces a neighbour.
DEFAULT_TRIM = 0.25

#: A batch of tiles (N, *tile, C) -> predictions (N, *tile, C'), both channels-last float32.
BatchFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- grid


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def axis_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along one axis: the first at 0, the last flush with the border.

    Starts are spread evenly, so every overlap is at least the requested fraction
    and neighbouring overlaps differ by at most one pixel. An axis shorter than the
    tile gets one tile centred on it, starting at a negative offset: the part that
    sticks out is filled by padding and cropped away again.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= tile:
        return [-((tile - size) // 2)]
    stride = max(1, math.floor(tile * (1 - overlap)))
    n = math.ceil((size - tile) / stride) + 1
    return [int(s) for s in np.round(np.linspace(0, size - tile, n))]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie: per-axis starts and one tile shape."""

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(itertools.product(*self.starts))

    @property
    def ndim(self) -> int:
        return len(self.shape)


def tile_grid(
    shape: Sequence[int], tile_shape: Sequence[int], overlap: float, divisor: int | Sequence[int] = 1
) -> TileGrid:
    """Tile grid over a (Z)YX ``shape``.

    The tile is shrunk to the image where the image is smaller (no compute is spent on
    padding beyond what the network needs) and rounded up to a multiple of ``divisor``
    so every tile passes through the network's down-sampling unchanged.
    """
    shape = tuple(int(s) for s in shape)
    if len(tile_shape) != len(shape):
        raise ValueError(f"tile {tuple(tile_shape)} and image {shape} differ in dimensionality")
    divisors = _per_axis(divisor, len(shape))
    tile = tuple(round_up(min(t, s), d) for t, s, d in zip(tile_shape, shape, divisors, strict=True))
    starts = tuple(tuple(aligned_starts(axis_starts(s, t, overlap), s, t, d))
                   for s, t, d in zip(shape, tile, divisors, strict=True))
    return TileGrid(shape=shape, tile=tile, starts=starts)


def aligned_starts(starts: Sequence[int], size: int, tile: int, divisor: int) -> list[int]:
    """Tile starts moved onto the lattice of the whole image's own pooling grid.

    A network that pools by ``divisor`` computes a pixel from the pooling cells it falls in;
    a tile whose start is off that lattice pools other cells and disagrees with the whole
    image. Whole-image prediction pads the image to a multiple of the divisor, centred, so the
    lattice starts at ``-(padding // 2)``; the first tile moves down onto it, the last up
    (sticking out by less than a divisor, reflect-padded like the whole image), the others to
    the nearest point. Then tiled prediction equals whole-image prediction away from the
    border wherever the trimmed overlap exceeds the network's reach.
    """
    if divisor <= 1 or len(starts) < 2:
        return list(starts)
    origin = -((round_up(size, divisor) - size) // 2)
    moved = [origin + math.floor((starts[0] - origin) / divisor) * divisor]
    moved += [origin + round((s - origin) / divisor) * divisor for s in starts[1:-1]]
    moved.append(origin + math.ceil((starts[-1] - origin) / divisor) * divisor)
    return sorted(set(moved))


def _per_axis(value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        return (int(value),) * ndim
    if len(value) != ndim:
        raise ValueError(f"expected {ndim} values, got {tuple(value)}")
    return tuple(int(v) for v in value)


# --------------------------------------------------------------------------- windows


def window_1d(n: int, kind: str) -> np.ndarray:
    """One axis of a blend window; positive everywhere so image borders keep weight.

    gaussian: ``exp(-(i - c)^2 / (2 sigma^2))`` with ``c = (n - 1) / 2``, ``sigma = n / 8``
      (the border sits about 4 sigma out: weight ~3e-4, small but never zero).
    linear: ``1 - |i - c| / (c + 1)``, a ramp from ``1 / (c + 1)`` at the border to 1.
    constant: all ones (plain averaging of overlaps).
    """
    i = np.arange(n, dtype=np.float64)
    c = (n - 1) / 2
    if kind == "gaussian":
        sigma = n * GAUSSIAN_SIGMA_FRACTION
        w = np.exp(-((i - c) ** 2) / (2 * sigma**2))
    elif kind == "linear":
        w = 1 - np.abs(i - c) / (c + 1)
    elif kind == "constant":
        w = np.ones(n)
    else:
        raise ValueError(f"unknown blend window '{kind}' (known: {', '.join(BLEND_KINDS)})")
    return w.astype(np.float32)


def blend_window(tile_shape: Sequence[int], kind: str) -> np.ndarray:
    """The (Z)YX weight of each pixel of a tile: the outer product of per-axis windows."""
    out = np.ones((), dtype=np.float32)
    for n in tile_shape:
        out = np.multiply.outer(out, window_1d(int(n), kind))
    return out


def trim_margin(grid: TileGrid, axis: int, trim: float) -> int:
    """Pixels ignored at a tile side facing a neighbour along ``axis``.

    Taken from the smallest actual overlap, and at most half of it, so the trusted
    cores of neighbouring tiles always meet: every pixel keeps a positive weight.
    """
    if not 0 <= trim <= 0.5:
        raise ValueError(f"trim must be in [0, 0.5], got {trim}")
    starts = grid.starts[axis]
    if len(starts) < 2:
        return 0
    overlap = grid.tile[axis] - max(b - a for a, b in zip(starts, starts[1:]))
    return int(trim * overlap)


def axis_windows(grid: TileGrid, kind: str, trim: float = DEFAULT_TRIM) -> list[dict[int, np.ndarray]]:
    """Per axis, the 1D weight of the tile starting at each start: the window with its
    trimmed margins zeroed on the sides that face a neighbour."""
    out = []
    for axis, (size, tile, starts) in enumerate(zip(grid.shape, grid.tile, grid.starts, strict=True)):
        base = window_1d(tile, kind)
        m = trim_margin(grid, axis, trim)
        per_start = {}
        for s in starts:
            w = base.copy()
            if m and s > 0:
                w[:m] = 0
            if m and s + tile < size:
                w[tile - m :] = 0
            per_start[s] = w
        out.append(per_start)
    return out


def weight_sums_1d(grid: TileGrid, windows: list[dict[int, np.ndarray]]) -> list[np.ndarray]:
    """Per axis, the summed weight at each pixel; their outer product is the full
    weight sum because both the windows and the grid are separable."""
    sums = []
    for size, tile, per_start in zip(grid.shape, grid.tile, windows, strict=True):
        acc = np.zeros(size, dtype=np.float64)
        for s, w in per_start.items():
            lo, hi = max(s, 0), min(s + tile, size)
            acc[lo:hi] += w[lo - s : hi - s]
        sums.append(acc)
    return sums


class TileWindows:
    """The (Z)YXC window of a tile from its starts.

    At most 3**ndim distinct windows exist (first, inner, last along each axis), so
    each is built once. The channel axis is materialised rather than broadcast:
    numpy's inner loop then runs over whole rows instead of over C (often 1 or 2)
    values, which makes accumulation several times faster.
    """

    def __init__(self, windows: list[dict[int, np.ndarray]]) -> None:
        self.windows = windows
        self.ends = [(min(w), max(w)) for w in windows]
        self.cache: dict[tuple[Any, ...], np.ndarray] = {}

    def __call__(self, start: Sequence[int], channels: int) -> np.ndarray:
        key = (channels, *((s == lo, s == hi) for s, (lo, hi) in zip(start, self.ends, strict=True)))
        if key not in self.cache:
            out = np.ones((), dtype=np.float32)
            for per_start, s in zip(self.windows, start, strict=True):
                out = np.multiply.outer(out, per_start[s])
            self.cache[key] = np.repeat(out[..., np.newaxis], channels, axis=-1)
        return self.cache[key]


# --------------------------------------------------------------------------- tiles


def read_tile(image: Any, start: Sequence[int], tile: Sequence[int]) -> np.ndarray:
    """The (Z)YXC tile at ``start``, reflect-padded where it extends past the image.

    Reads only the tile's region, so ``image`` may be a lazy Zarr array or memmap.
    Padding per tile (rather than padding the image once) keeps memory at tile size.
    """
    shape = image.shape[:-1]
    inside = tuple(slice(max(s, 0), min(s + t, n)) for s, t, n in zip(start, tile, shape, strict=True))
    region = np.asarray(image[inside], dtype=np.float32)
    pad = [(sl.start - s, s + t - sl.stop) for sl, s, t in zip(inside, start, tile, strict=True)]
    if any(p for pair in pad for p in pair):
        region = _reflect_pad(region, pad + [(0, 0)])
    return region


def _reflect_pad(arr: np.ndarray, pad: list[tuple[int, int]]) -> np.ndarray:
    """Reflect padding that also works on axes of length 1, which reflect cannot mirror."""
    mode_axes = [n > 1 for n in arr.shape]
    if all(mode_axes):
        return np.pad(arr, pad, mode="reflect")
    for axis, (before_after, reflectable) in enumerate(zip(pad, mode_axes, strict=True)):
        if before_after == (0, 0):
            continue
        widths = [(0, 0)] * arr.ndim
        widths[axis] = before_after
        arr = np.pad(arr, widths, mode="reflect" if reflectable else "edge")
    return arr


def _batches(grid: TileGrid, batch_size: int) -> Iterator[list[tuple[int, ...]]]:
    it = iter(grid)
    while batch := list(itertools.islice(it, batch_size)):
        yield batch


def accumulate(out: np.ndarray, pred: np.ndarray, start: Sequence[int], window: np.ndarray) -> None:
    """Add one weighted tile prediction into the (Z)YXC sum, cropping padded parts.
    ``window`` is (Z)YXC like ``pred``."""
    dst, src = [], []
    for s, t, n in zip(start, window.shape[:-1], out.shape[:-1], strict=True):
        lo, hi = max(s, 0), min(s + t, n)
        dst.append(slice(lo, hi))
        src.append(slice(lo - s, hi - s))
    src_t = tuple(src)
    out[tuple(dst)] += pred[src_t] * window[src_t]


def normalise(out: np.ndarray, sums: list[np.ndarray], rows: int = 16) -> None:
    """Divide the weighted sum by the weight sum in place, a few rows at a time, so
    no image-sized temporary is made and a memmap streams.

    The array is seen as (rows, everything else): the factor of the first axis is
    per row and that of the other axes is one flat vector, so numpy's inner loops
    run over whole rows rather than over the channel axis.
    """
    first = (1.0 / sums[0]).astype(np.float32)[:, np.newaxis]
    rest = np.ones((), dtype=np.float64)
    for s in sums[1:]:
        rest = np.multiply.outer(rest, 1.0 / s)
    rest = np.multiply.outer(rest, np.ones(out.shape[-1])).astype(np.float32).ravel()
    flat = out.reshape(out.shape[0], -1)  # a view: out is C-contiguous (ours or a memmap)
    for i in range(0, flat.shape[0], rows):
        block = flat[i : i + rows]
        block *= first[i : i + rows]
        block *= rest


def run_tiled(
    image: Any,
    fn: BatchFn,
    tile_shape: Sequence[int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    divisor: int | Sequence[int] = 1,
    out: np.ndarray | None = None,
    trim: float = DEFAULT_TRIM,
) -> np.ndarray:
    """Apply ``fn`` to overlapping tiles of a (Z)YXC image and blend the results.

    ``fn`` maps a float32 batch (N, *tile, C) to (N, *tile, C'); ``image`` may be
    lazy (Zarr, memmap): only ``batch_size`` tiles are read at a time. The result is
    (Z)YXC float32, accumulated into ``out`` when given (zero-filled, e.g. a memmap for
    volumes larger than memory). Working memory is ``batch_size`` tiles in and out plus ``out``.
    ``trim`` is the fraction of each overlap ignored at tile sides facing a neighbour.
    """
    if blend not in BLEND_KINDS:
        raise ValueError(f"unknown blend window '{blend}' (known: {', '.join(BLEND_KINDS)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    grid = tile_grid(image.shape[:-1], tile_shape, overlap, divisor)
    windows = axis_windows(grid, blend, trim)
    tile_window = TileWindows(windows)
    for starts in _batches(grid, batch_size):
        batch = np.stack([read_tile(image, s, grid.tile) for s in starts])
        pred = np.asarray(fn(batch), dtype=np.float32)
        _check_prediction(pred, batch)
        if out is None:
            out = np.zeros(grid.shape + pred.shape[-1:], dtype=np.float32)
        elif out.shape != grid.shape + pred.shape[-1:] or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous of shape {grid.shape + pred.shape[-1:]}, got {out.shape}")
        for s, p in zip(starts, pred, strict=True):
            accumulate(out, p, s, tile_window(s, p.shape[-1]))
    assert out is not None  # the grid always has at least one tile
    normalise(out, weight_sums_1d(grid, windows))
    return out


def _check_prediction(pred: np.ndarray, batch: np.ndarray) -> None:
    if pred.ndim != batch.ndim or pred.shape[:-1] != batch.shape[:-1]:
        raise ValueError(
            f"tile function returned shape {pred.shape} for input {batch.shape}; "
            "expected the same batch and spatial shape with any number of channels"
        )
