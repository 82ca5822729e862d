"""Training targets for instance segmentation, derived from instance label images.

A network cannot output "object 17" directly, so instance segmentation trains it on
per-pixel maps from which objects can be re-assembled by a watershed: the foreground
mask, the contours that separate touching objects, a distance to the object boundary
(peaks at object centres make good seeds), a signed distance (foreground and distance
in one channel), dilated centroids and the areas where objects touch. Any combination
can be configured (``targets.instance.channels``); each is a float map on the same grid.

Distances and neighbourhoods are measured in physical units (``data.voxel_size``),
scaled so that the smallest voxel edge is 1: in a stack with 5x coarser z, a contour
one pixel wide in YX does not become five slices thick in z.

Image borders are not object boundaries: an object cut by the border gets no contour
there and its distance keeps growing towards the border, because at prediction time
the network sees tiles whose edges are not object edges either.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ...core.config import defaults
from ...core.errors import ConfigError, InputError

#: Every channel a target can have, in the order the config may list them.
CHANNELS = ("foreground", "contour", "distance", "signed_distance", "centroid", "touching")
#: Channels holding 0/1 values (trained with BCE/Dice, activated with a sigmoid).
BINARY_CHANNELS = frozenset({"foreground", "contour", "centroid", "touching"})
#: Value range of each channel (targets and activated predictions).
CHANNEL_RANGES = {name: (-1.0, 1.0) if name == "signed_distance" else (0.0, 1.0) for name in CHANNELS}
CONTOUR_MODES = ("thick", "inner", "outer")


class SemanticLabelWarning(UserWarning):
    """A label image looks like a binary mask rather than instance labels."""


@dataclass(frozen=True)
class TargetSpec:
    """What to compute from a label image; built from ``targets.instance`` and ``data.voxel_size``."""

    channels: tuple[str, ...]
    contour_mode: str
    contour_width: float
    centroid_radius: float
    background_distance: float | None
    voxel_size: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_channels(self.channels)
        if self.contour_mode not in CONTOUR_MODES:
            raise ConfigError("targets.instance.contour_mode",
                              f"'{self.contour_mode}' is not one of {', '.join(CONTOUR_MODES)}")
        if self.contour_width <= 0:
            raise ConfigError("targets.instance.contour_width", f"must be > 0, got {self.contour_width}")

    @classmethod
    def from_config(cls, section: dict[str, Any], voxel_size: Sequence[float] | None = None) -> TargetSpec:
        """From ``targets.instance`` and ``data.voxel_size``."""
        return cls(channels=tuple(section["channels"]), contour_mode=section["contour_mode"],
                   contour_width=float(section["contour_width"]), centroid_radius=float(section["centroid_radius"]),
                   background_distance=section["background_distance"],
                   voxel_size=None if voxel_size is None else tuple(voxel_size))

    @classmethod
    def defaults(cls, voxel_size: Sequence[float] | None = None, **overrides: Any) -> TargetSpec:
        """The schema's ``targets.instance`` with ``overrides`` (for callers without a config)."""
        return cls.from_config(defaults("targets.instance", **overrides), voxel_size)

    def sampling(self, ndim: int) -> np.ndarray:
        return normalized_sampling(self.voxel_size, ndim)


def check_channels(channels: Sequence[str]) -> None:
    """Channels must be known, unique, and able to delimit objects (a mask and seeds)."""
    key = "targets.instance.channels"
    if not channels:
        raise ConfigError(key, "needs at least one channel")
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ConfigError(key, f"unknown channel '{unknown[0]}' (choose from {', '.join(CHANNELS)})")
    if len(set(channels)) != len(channels):
        raise ConfigError(key, f"lists a channel twice: {list(channels)}")
    if not set(channels) & {"foreground", "distance", "signed_distance"}:
        raise ConfigError(key, f"{list(channels)} gives no object mask or seeds; add foreground, distance "
                               "or signed_distance")


def normalized_sampling(voxel_size: Sequence[float] | None, ndim: int) -> np.ndarray:
    """Voxel size scaled so its smallest edge is 1 (isotropic 1 when unset)."""
    if voxel_size is None:
        return np.ones(ndim)
    vs = np.asarray(voxel_size, dtype=float)
    if vs.shape != (ndim,) or np.any(vs <= 0):
        raise ConfigError("data.voxel_size", f"needs {ndim} positive entries, got {list(voxel_size)}")
    return vs / vs.min()


# --------------------------------------------------------------------------- label checks


def prepare_labels(label: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Check an instance label image and return it as unsigned integers.

    Non-integer or negative values are errors naming ``path``. A 0/1 image with several
    connected components is almost certainly a semantic mask given by mistake; it is
    relabelled by connected components with a warning, since training on it as "one
    object" would teach the network that touching nuclei are a single instance.
    """
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            raise InputError(path, "instance label image contains NaN or Inf")
        if not np.all(label == np.round(label)):
            raise InputError(path, f"instance label image has non-integer values (dtype {label.dtype})")
    elif label.dtype.kind == "b":
        label = label.astype(np.uint8)
    elif label.dtype.kind not in "ui":
        raise InputError(path, f"unsupported instance label dtype {label.dtype}")
    if label.size and label.min() < 0:
        raise InputError(path, f"instance label image has negative values (min {label.min()}); "
                               "labels must be 0 (background) or a positive object id")
    label = _as_unsigned(label)
    return _relabel_if_semantic(label, path)


def _as_unsigned(label: np.ndarray) -> np.ndarray:
    if label.dtype.kind == "u" and label.dtype.itemsize <= 4:
        return label
    top = int(label.max()) if label.size else 0
    return label.astype(np.uint32 if top < 2**32 else np.uint64)


def _relabel_if_semantic(label: np.ndarray, path: str | Path | None) -> np.ndarray:
    if label.size == 0 or label.max() != 1:
        return label
    components, n = ndimage.label(label > 0)
    if n <= 1:
        return label
    warnings.warn(
        f"{path or 'label image'}: holds only 0/1 with {n} separate regions; it looks like a semantic mask, "
        "not instance labels. Relabelling it by connected components (touching objects stay merged).",
        SemanticLabelWarning,
        stacklevel=3,
    )
    return components.astype(np.uint32)


# --------------------------------------------------------------------------- targets


def instance_targets(label: np.ndarray, spec: TargetSpec) -> np.ndarray:
    """(Z)YX instance labels -> float32 (Z)YXC target with ``spec.channels`` in order."""
    label = np.asarray(label)
    sampling = spec.sampling(label.ndim)
    wanted = set(spec.channels)
    maps: dict[str, np.ndarray] = {}
    if wanted & {"contour", "touching"}:
        thick, touching = boundary_maps(label, neighbourhood(sampling, spec.contour_width))
        maps["touching"] = touching
        maps["contour"] = contour_map(label, thick, touching, spec.contour_mode)
    if wanted & {"distance", "signed_distance", "centroid"}:
        raw, maxima = inner_distance(label, sampling)
        maps["distance"] = normalize_per_object(raw, label, maxima)
        if "signed_distance" in wanted:
            maps["signed_distance"] = signed_distance(label, maps["distance"], maxima, sampling,
                                                      spec.background_distance)
        if "centroid" in wanted:
            maps["centroid"] = centroid_map(label, raw, sampling, spec.centroid_radius)
    maps["foreground"] = label > 0
    out = np.empty(label.shape + (len(spec.channels),), dtype=np.float32)
    for c, name in enumerate(spec.channels):
        out[..., c] = maps[name]
    return out


def neighbourhood(sampling: np.ndarray, radius: float) -> np.ndarray:
    """Boolean footprint of the points within ``radius`` (physical units) of the centre.

    The face neighbours are always included, so a voxel whose z-neighbour 5 units away
    belongs to another object still counts as being on the boundary.
    """
    half = np.floor(radius / sampling).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, sampling))
    ball = dist2 <= radius**2 + 1e-9
    cross = ndimage.generate_binary_structure(len(sampling), 1)
    return _centre_union(ball, cross)


def _centre_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    shape = np.maximum(a.shape, b.shape)
    out = np.zeros(shape, dtype=bool)
    for arr in (a, b):
        offset = tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(shape, arr.shape))
        out[offset] |= arr
    return out


def boundary_maps(label: np.ndarray, footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(thick, touching): pixels whose neighbourhood holds two different values / two different objects.

    Rank filters over the label ids do this in two passes whatever the number of objects.
    """
    work = label.astype(np.uint32 if int(label.max(initial=0)) < 2**32 - 1 else np.uint64, copy=False)
    top = ndimage.maximum_filter(work, footprint=footprint, mode="nearest")
    low = ndimage.minimum_filter(work, footprint=footprint, mode="nearest")
    thick = top != low
    big = np.iinfo(work.dtype).max
    low_object = ndimage.minimum_filter(np.where(work > 0, work, big), footprint=footprint, mode="nearest")
    touching = (top > 0) & (low_object < top)
    return thick, touching


def contour_map(label: np.ndarray, thick: np.ndarray, touching: np.ndarray, mode: str) -> np.ndarray:
    """Boundary pixels: ``thick`` both sides, ``inner`` inside objects, ``outer`` outside them.

    ``outer`` also keeps object pixels where two objects touch, otherwise touching
    objects would have nothing between them to separate them.
    """
    if mode == "thick":
        return thick
    if mode == "inner":
        return thick & (label > 0)
    return thick & ((label == 0) | touching)


def inner_distance(label: np.ndarray, sampling: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each object pixel to the nearest pixel outside its object, and each object's maximum.

    One small EDT per object on its bounding box grown by one pixel (other objects and
    background are "outside"), so cost follows the objects, not the image size. Returns
    the float32 map (0 in background) and an array indexed by label id.
    """
    dist = np.zeros(label.shape, dtype=np.float32)
    top = int(label.max(initial=0))
    maxima = np.zeros(top + 1, dtype=np.float64)
    for idx, box in enumerate(ndimage.find_objects(label), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, label.shape))
        inside = label[grown] == idx
        d = _edt_inside(inside, sampling)
        dist[grown][inside] = d[inside]
        maxima[idx] = float(d[inside].max())
    return dist, maxima


def _edt_inside(inside: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """EDT of an object crop; an object filling its whole crop (the whole image) is padded with background."""
    if inside.all():
        padded = np.pad(inside, 1)
        core = tuple(slice(1, -1) for _ in range(inside.ndim))
        return ndimage.distance_transform_edt(padded, sampling=sampling)[core]
    return ndimage.distance_transform_edt(inside, sampling=sampling)


def normalize_per_object(raw: np.ndarray, label: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """Divide each object's distances by its own maximum: 1 at every object's centre, whatever its size."""
    scale = np.where(maxima > 0, maxima, 1.0).astype(np.float32)
    return np.where(label > 0, raw / scale[label], 0.0).astype(np.float32)


def signed_distance(label: np.ndarray, inside: np.ndarray, maxima: np.ndarray, sampling: np.ndarray,
                    background_distance: float | None) -> np.ndarray:
    """Normalized distance inside objects, minus the scaled distance to the nearest object outside.

    Outside values fall from 0 at the object surface to -1 at ``background_distance``
    (default: the median object radius) and stay -1 beyond, so the map is continuous
    across boundaries and far background is exactly -1.
    """
    if not np.any(label):
        return np.full(label.shape, -1.0, dtype=np.float32)
    scale = background_distance or float(np.median(maxima[maxima > 0]))
    outside = ndimage.distance_transform_edt(label == 0, sampling=sampling)
    negative = -np.minimum(outside / max(scale, 1e-6), 1.0)
    return np.where(label > 0, inside, negative).astype(np.float32)


def centroid_map(label: np.ndarray, raw_distance: np.ndarray, sampling: np.ndarray, radius: float) -> np.ndarray:
    """A ball of ``radius`` around each object's centroid, cut to the object.

    An object whose centroid lies outside it (a crescent) uses its innermost pixel
    instead, so every object gets exactly one seed inside itself.
    """
    points = np.zeros(label.shape, dtype=bool)
    ids = np.array([i for i, box in enumerate(ndimage.find_objects(label), start=1) if box is not None])
    if ids.size == 0:
        return points
    centres = np.rint(ndimage.center_of_mass(np.ones(label.shape), label, ids)).astype(int)
    for idx, centre in zip(ids, centres):
        points[_seed_point(label, raw_distance, int(idx), tuple(centre))] = True
    dist, nearest = ndimage.distance_transform_edt(~points, sampling=sampling, return_indices=True)
    same_object = label[tuple(nearest)] == label
    return (dist <= radius) & same_object & (label > 0)


def _seed_point(label: np.ndarray, raw_distance: np.ndarray, idx: int, centre: tuple[int, ...]) -> tuple[int, ...]:
    if label[centre] == idx:
        return centre
    box = ndimage.find_objects((label == idx).astype(np.uint8))[0]
    crop = np.where(label[box] == idx, raw_distance[box], -1.0)
    local = np.unravel_index(int(np.argmax(crop)), crop.shape)
    return tuple(s.start + i for s, i in zip(box, local))
