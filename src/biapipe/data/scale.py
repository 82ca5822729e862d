"""Object scale: how big the objects of an image are, and resampling an image to another scale.

A network learns objects at the sizes it was shown; nuclei twice as large or half as large
as in training are split or merged. So the typical object diameter of the training images is
recorded with the model, each test image's is estimated, and the test image is resampled to
the training scale before prediction (docs/architecture.md, "object scale").

The typical diameter of an image is twice the median, over the connected foreground regions,
of each region's largest distance to the background (the diameter of its largest inscribed
disc or ball), in units of the smallest voxel edge. The same measure serves ground truth
(training) and predictions (test): it needs a foreground mask only, so a large nucleus that a
model at the wrong scale cuts into pieces, or small touching nuclei it merges, still measure
about right, and the median ignores a few fragments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Objects smaller than this many pixels are fragments, not objects, when measuring the scale.
MIN_OBJECT_PIXELS = 4

#: Factors closer to 1 than this (ratio) are taken as 1: resampling costs more than it gains.
TOLERANCE = 1.15

#: Resampling factors are kept within [1 / LIMIT, LIMIT].
LIMIT = 4.0


def object_sizes(labels: np.ndarray) -> np.ndarray:
    """Pixel count of every object of a label image (ids > 0 that occur)."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.intp, copy=False))[1:]
    return counts[counts > 0]


def median_diameter(mask: np.ndarray, sampling: Sequence[float] | None = None) -> float | None:
    """Typical object diameter of a (Z)YX foreground mask (or label image: its objects > 0); None
    when no region has at least ``MIN_OBJECT_PIXELS`` pixels."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    regions, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(regions.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_OBJECT_PIXELS) + 1
    if keep.size == 0:
        return None
    spacing = np.ones(mask.ndim) if sampling is None else np.asarray(sampling, dtype=float)
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    radii = np.asarray(ndimage.maximum(depth, regions, keep), dtype=float)
    return float(2.0 * np.median(radii))


#: Diameters (pixels) the image-only blob measure tries: 2^(k/4) steps from 4 to 128.
BLOB_DIAMETERS = tuple(2.0 ** (k / 4.0) for k in range(8, 29))


def blob_diameter(image: np.ndarray, sampling: Sequence[float] | None = None) -> float | None:
    """Typical diameter of the bright blobs of a (Z)YX image, from its intensities alone: the finest
    diameter at which the scale-normalized Laplacian of Gaussian (its 99.5th percentile over the
    image) has a local maximum over scale. None when the response only grows with scale.

    A network cannot fool this measure (it sees no prediction), but touching objects in a cluster
    also form one larger blob, so it is used only as a check on the prediction's measure
    (``inference.rescale``)."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    spacing = np.ones(image.ndim) if sampling is None else np.asarray(sampling, dtype=float)
    responses = []
    for diameter in BLOB_DIAMETERS:
        sigma = diameter / (2.0 * math.sqrt(2.0)) / spacing  # a disc of diameter d: LoG peaks at sigma d / 2^1.5
        step = np.maximum(1, (sigma // 2).astype(int))  # subsampled so that every sigma is ~2-4 samples
        small = image[tuple(slice(None, None, int(k)) for k in step)]
        response = -ndimage.gaussian_laplace(small, sigma / step) * float(np.mean(sigma / step)) ** 2
        responses.append(float(np.percentile(response, 99.5)))
    r = np.asarray(responses)
    peaks = np.flatnonzero((r[1:-1] >= r[:-2]) & (r[1:-1] > r[2:])) + 1
    return float(BLOB_DIAMETERS[peaks[0]]) if peaks.size else None


def scale_factor(target: float | None, diameter: float | None) -> float:
    """Zoom that brings objects of ``diameter`` to ``target`` pixels: 1 when either is unknown or
    the two are within ``TOLERANCE`` of each other, else target / diameter within [1/LIMIT, LIMIT]."""
    if not target or not diameter or diameter <= 0:
        return 1.0
    factor = float(target) / float(diameter)
    if 1.0 / TOLERANCE <= factor <= TOLERANCE:
        return 1.0
    return float(min(max(factor, 1.0 / LIMIT), LIMIT))


def scaled_shape(shape: Sequence[int], factor: float) -> tuple[int, ...]:
    """Spatial shape of an image zoomed by ``factor`` (at least one pixel per axis)."""
    return tuple(max(1, int(round(s * factor))) for s in shape)


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A (Z)YXC float image resampled to spatial ``shape``: linear interpolation, with a Gaussian
    anti-aliasing filter when shrinking (what scikit-image does), channels kept apart."""
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    target = tuple(int(s) for s in shape) + (image.shape[-1],)
    if target == image.shape:
        return image
    shrinking = any(t < s for t, s in zip(target[:-1], image.shape[:-1]))
    out = resize(image, target, order=1, mode="reflect", anti_aliasing=shrinking, preserve_range=True)
    return out.astype(np.float32, copy=False)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A label image resampled to ``shape`` by nearest neighbour (ids are kept, never blended)."""
    from skimage.transform import resize

    labels = np.asarray(labels)
    if tuple(labels.shape) == tuple(shape):
        return labels
    out = resize(labels, tuple(int(s) for s in shape), order=0, mode="edge", anti_aliasing=False,
                 preserve_range=True)
    return out.astype(labels.dtype, copy=False)


def quantize_diameter(diameter: float) -> int:
    """A diameter rounded to the grid 2^(k/4) (…, 16, 19, 23, 27, 32, …): a plan built on it does
    not change when a few images more or less move the median by a pixel."""
    step = round(4.0 * math.log2(max(float(diameter), 1.0)))
    return int(round(2.0 ** (step / 4.0)))


def stored_scale(path: str | Path) -> dict[str, Any]:
    """What ``prepare`` recorded about a prepared (normalized or target) store: ``scale`` (the zoom
    applied), ``source_shape`` (the original spatial shape) and ``object_diameter`` (the original
    typical diameter; absent when unknown)."""
    import zarr

    attrs = dict(zarr.open_array(str(path), mode="r").attrs)
    return {"scale": float(attrs.get("scale", 1.0)), "source_shape": attrs.get("source_shape"),
            "object_diameter": attrs.get("object_diameter")}


def training_diameter(target_paths: Sequence[str | Path]) -> float | None:
    """Typical object diameter of a training set at the scale it is trained at: the median over
    its images of each one's diameter times the zoom ``prepare`` applied (None: no objects known)."""
    values = []
    for path in target_paths:
        attrs = stored_scale(path)
        if attrs["object_diameter"]:
            values.append(float(attrs["object_diameter"]) * attrs["scale"])
    return float(np.median(values)) if values else None


def object_stats(labels: np.ndarray, sampling: Sequence[float] | None = None) -> dict[str, float] | None:
    """What planning wants to know about the objects of one label image: typical ``diameter``,
    ``count``, ``foreground`` (share of pixels in objects) and ``touching`` (share of object
    pixels with a face neighbour in another object: how crowded the objects are); None when the
    image has no object to measure."""
    from scipy import ndimage

    labels = np.asarray(labels)
    diameter = median_diameter(labels, sampling)
    if diameter is None:
        return None
    labels = labels.astype(np.uint32, copy=False)
    inside = labels > 0
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    high = ndimage.maximum_filter(labels, footprint=cross, mode="nearest")
    low = ndimage.minimum_filter(np.where(inside, labels, np.iinfo(np.uint32).max).astype(np.uint32),
                                 footprint=cross, mode="nearest")
    touching = inside & ((high > labels) | (low < labels))
    return {"diameter": float(diameter), "count": int(object_sizes(labels).size),
            "foreground": float(inside.mean()), "touching": float(touching.sum() / max(int(inside.sum()), 1))}
