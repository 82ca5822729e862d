"""Class probabilities -> a class mask, with the two clean-ups semantic masks usually need.

A single z-slice that the network gets wrong (a focus jump, a bright artefact) shows
up as a thin blip in 3D; a median along z only removes it without blurring the much
finer YX detail. Tiny specks are removed by component size, the knob users reach for
first when a mask looks noisy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def semantic_postprocess(
    prob: np.ndarray, threshold: float = 0.5, z_median: int = 0, min_size: int = 0
) -> np.ndarray:
    """(Z)YXC probabilities -> (Z)YX class mask (uint8; uint16 beyond 256 classes).

    Two classes: foreground where P(class 1) >= ``threshold`` (a tunable operating
    point); more classes: argmax. ``z_median`` > 1 filters the probabilities of a 3D
    image along z only (ignored in 2D, which has no z). ``min_size`` > 0 sets connected
    components (face connectivity, per class, background excluded) smaller than that
    many pixels to background.
    """
    prob = np.asarray(prob)
    n_classes = max(prob.shape[-1], 2)
    spatial_ndim = prob.ndim - 1
    if n_classes == 2:
        # Only the foreground channel decides; filtering the other would be wasted work.
        foreground = _z_median(prob[..., -1:], z_median, spatial_ndim)[..., 0]
        mask = (foreground >= threshold).astype(mask_dtype(n_classes))
    else:
        mask = np.argmax(_z_median(prob, z_median, spatial_ndim), axis=-1).astype(mask_dtype(n_classes))
    if min_size > 0:
        remove_small_components(mask, min_size)
    return mask


def mask_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned type holding class indices 0..n_classes-1."""
    return np.dtype(np.uint8) if n_classes <= 256 else np.dtype(np.uint16)


def _z_median(prob: np.ndarray, size: int, spatial_ndim: int) -> np.ndarray:
    if spatial_ndim != 3 or size <= 1:
        return prob
    return ndimage.median_filter(prob, size=(size, 1, 1, 1), mode="nearest")


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """In place: components of each class > 0 smaller than ``min_size`` pixels become 0."""
    for k in np.unique(mask):
        if k == 0:
            continue
        components, n = ndimage.label(mask == k)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            mask[small[components]] = 0
    return mask
