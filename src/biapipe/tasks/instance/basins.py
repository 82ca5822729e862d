"""Seeds at the bottoms of contour-map basins (``postprocess.instance.seed_contour_depth``; why:
docs/architecture.md, "Seeds from contour basins")."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import h_minima

#: Threshold keys the growth mask depends on: with the depth, they make a cached result's key.
MASK_KEYS = ("mask_threshold", "mask_distance")


def contour_basins(contour: np.ndarray, depth: float, sampling: np.ndarray | None = None,
                   mask: np.ndarray | None = None, thresholds: dict[str, float] | None = None,
                   cache: dict[Any, np.ndarray] | None = None) -> np.ndarray:
    """The bottom of every basin at least ``depth`` deep of the contour map smoothed by one voxel
    (less along coarse axes): h-minima. Outside ``mask`` the map is a wall, so an outline with a
    gap does not drain into the background; each mask region is filled on its own crop.

    ``cache`` (one dict per prediction, e.g. while tuning, where only the seed thresholds change
    between most trials) keeps results by depth and the mask's thresholds (``thresholds``).
    """
    key = (depth, *((thresholds or {}).get(k) for k in MASK_KEYS))
    if cache is not None and key in cache:
        return cache[key]
    sigma = 1.0 / (np.ones(contour.ndim) if sampling is None else np.asarray(sampling, dtype=float))
    smooth = ndimage.gaussian_filter(contour.astype(np.float32, copy=False), sigma)
    if mask is None:
        out = h_minima(smooth, depth).astype(bool)
    else:
        regions, _ = ndimage.label(mask)
        out = np.zeros(mask.shape, dtype=bool)
        for index, box in enumerate(ndimage.find_objects(regions), start=1):
            inside = regions[box] == index
            walled = np.pad(np.where(inside, smooth[box], np.float32(1.0)), 1, constant_values=1.0)
            out[box] |= h_minima(walled, depth)[(slice(1, -1),) * mask.ndim].astype(bool) & inside
    if cache is not None:
        cache[key] = out
    return out
