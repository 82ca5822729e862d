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
    for p in replaced:
        masked[(slice(None), *p)] = _replacement(image, hidden, p, radius, replace, rng)
    mask = np.zeros((1, *spatial), dtype=np.float32)
    mask[(0, *points.T)] = 1.0
    return masked, mask


def _replacement(image: np.ndarray, hidden: np.ndarray, p: np.ndarray, radius: int, replace: str,
                 rng: np.random.Generator) -> np.ndarray:
    """Per channel, the value a hidden pixel gets: from visible pixels of its neighbourhood."""
    lo = np.maximum(p - radius, 0)
    hi = np.minimum(p + radius + 1, hidden.shape)
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    visible = ~hidden[window]
    values = image[(slice(None), *window)][:, visible]  # C x candidates
    if values.shape[1] == 0:  # everything around is hidden (dense structured masks): a neutral value
        return np.zeros(image.shape[0], dtype=image.dtype)
    if replace == "median":
        return np.median(values, axis=1).astype(image.dtype)
    return values[:, int(rng.integers(values.shape[1]))]
