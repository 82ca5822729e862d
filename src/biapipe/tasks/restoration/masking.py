"""Blind-spot masking for Noise2Void (Krull et al., 2019) and N2V2 (Höck et al., 2022).

A network that sees a pixel learns to copy it, noise included. Noise2Void hides a sparse set
of pixels from the network (each replaced by a value that carries nothing of it) and scores
the prediction only there: the network must infer each pixel from its neighbours, which share
the signal but not the (pixel-wise independent) noise.

Replacement values come from pixels within ``radius`` that are neither the masked pixel nor
any other masked pixel, so no masked pixel's value is anywhere in the network input: its own
prediction cannot see it, directly or through another blind spot. ``median`` (N2V2) uses the
median of those pixels instead of one of them. A structured mask (structN2V) also replaces the
pixels along X next to each blind spot, for noise correlated along the scan line.

Masks are a pure function of a key (seed, stream, epoch, index), like the patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Key = Sequence[int]


def grid_positions(shape: Sequence[int], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """One random pixel in each cell of a grid of about ``1 / fraction`` pixels per cell
    (stratified: blind spots cover the patch evenly); returns (n, ndim) coordinates."""
    ndim = len(shape)
    cell = max(1, int(round(fraction ** (-1.0 / ndim))))
    starts = np.stack(np.meshgrid(*[np.arange(0, n, cell) for n in shape], indexing="ij"), axis=-1).reshape(-1, ndim)
    offsets = rng.integers(0, cell, size=starts.shape)
    points = starts + offsets
    return points[np.all(points < np.asarray(shape), axis=1)]


def blind_spot(image: np.ndarray, key: Key, fraction: float, radius: int, replace: str = "neighbour",
               structured: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(masked copy of the C(Z)YX ``image``, 1(Z)YX float mask of the scored pixels)."""
    rng = np.random.default_rng(list(key))
    spatial = image.shape[1:]
    points = grid_positions(spatial, fraction, rng)
    hidden = np.zeros(spatial, dtype=bool)
    hidden[tuple(points.T)] = True
    replaced = points
    if structured:
        extra = []
        for d in range(-int(structured), int(structured) + 1):
            if d:
                moved = points.copy()
                moved[:, -1] += d
                extra.append(moved[(moved[:, -1] >= 0) & (moved[:, -1] < spatial[-1])])
        replaced = np.unique(np.concatenate([points, *extra]), axis=0)
        hidden[tuple(replaced.T)] = True
    masked = image.copy()
    masked[(slice(None), *replaced.T)] = replacements(image, hidden, replaced, radius, replace, rng)
    mask = np.zeros((1, *spatial), dtype=np.float32)
    mask[(0, *points.T)] = 1.0
    return masked, mask


#: Blind spots x neighbourhood entries gathered at once: bounds the memory of one gather (about
#: 100 MB with a radius of 8 in 3D) whatever the patch and share.
GATHER_ENTRIES = 2**21


def replacements(image: np.ndarray, hidden: np.ndarray, points: np.ndarray, radius: int, replace: str,
                 rng: np.random.Generator) -> np.ndarray:
    """C x n values for the hidden ``points`` (n x ndim), each from the visible pixels of its
    neighbourhood within ``radius``; 0 where everything around a point is hidden (dense
    structured masks). Array operations over many points at a time, not a loop per point: a
    validation patch holds thousands of blind spots (benchmarks/bench_masking.py)."""
    # flat indices into copies padded by ``radius`` (the rim counts as hidden): one 1D gather
    padded_hidden = np.pad(hidden, radius, constant_values=True).ravel()
    shape = tuple(n + 2 * radius for n in hidden.shape)
    padded = np.pad(image, [(0, 0)] + [(radius, radius)] * hidden.ndim).reshape(image.shape[0], -1)
    steps = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(*[steps] * hidden.ndim, indexing="ij"), axis=-1).reshape(-1, hidden.ndim)
    flat_offsets = np.ravel_multi_index((offsets + radius).T, shape) - np.ravel_multi_index([radius] * hidden.ndim, shape)
    centres = np.ravel_multi_index((points + radius).T, shape) if len(points) else np.zeros(0, dtype=np.intp)
    step = max(1, GATHER_ENTRIES // len(flat_offsets))
    out = np.zeros((image.shape[0], len(points)), dtype=np.float64)
    for start in range(0, len(points), step):
        where = centres[start:start + step, None] + flat_offsets[None, :]  # n x k
        visible = ~padded_hidden[where]
        values = padded[:, where].astype(np.float64)  # C x n x k
        count = visible.sum(axis=1)
        if replace == "median":  # hidden entries sort last; the median of the first `count`
            ranked = np.sort(np.where(visible[None], values, np.inf), axis=2)
            low = np.take_along_axis(ranked, np.maximum(count - 1, 0)[None, :, None] // 2, axis=2)[..., 0]
            high = np.take_along_axis(ranked, (count // 2)[None, :, None], axis=2)[..., 0]
            chunk = (low + high) / 2
        else:  # one visible neighbour per point, uniformly: the largest of uniform draws among the visible
            pick = np.argmax(np.where(visible, rng.random(visible.shape), -1.0), axis=1)
            chunk = np.take_along_axis(values, pick[None, :, None], axis=2)[..., 0]
        chunk[:, count == 0] = 0
        out[:, start:start + step] = chunk
    return out.astype(image.dtype)
