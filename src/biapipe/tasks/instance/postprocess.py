"""Per-pixel instance maps -> a label image, by marker-controlled watershed or Voronoi growth.

Three decisions, each from the channels the model predicts (``targets.instance.channels``):

- **seeds**, one connected blob per object: every channel present adds a condition and
  all must hold: foreground > ``seed_foreground``, contour <= ``seed_contour``,
  distance and signed distance > ``seed_distance``, centroid > ``seed_centroid``,
  touching <= ``seed_touching``. With ``seed_contour_depth`` > 0 the contour condition is
  instead "the bottom of a basin of the contour map at least that deep" (h-minima of the map
  smoothed by one voxel): a basin is an object's interior whatever its absolute contour
  level, so a dim or blurred object whose interior never drops below a fixed threshold still
  gets a seed, and two objects parted by a weak ridge get two. Seeds are cleaned (optional
  opening; thresholded blobs smaller than ``min_seed_size`` dropped) and numbered by
  connected components;
- **growth mask**, where objects may grow: foreground > ``mask_threshold``; without a
  foreground channel, signed distance > 2 * ``mask_threshold`` - 1 (0.5 is the object
  surface); with only a distance channel, distance > ``mask_distance``;
- **flooding surface**: 1 - distance (or signed distance), else the contour, else
  1 - foreground, so seeds meet on distance valleys or contour ridges.

Every threshold may be ``"otsu"`` (computed on that channel of each image). Comparisons
are strict for "high" conditions and inclusive for "low" ones, which is how Otsu's
threshold is meant to be applied. ``method: voronoi`` replaces flooding by nearest-seed
growth (Euclidean, voxel-size aware) into the mask or the whole image.

Clean-up afterwards: hole filling, min/max object size, clearing objects that touch the
YX border (not z: stacks are usually so thin in z that every object touches it), and
consecutive relabelling to uint16 (uint32 beyond 65,535 objects).

Thresholds can be tuned on validation data (:mod:`.tuning`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import relabel_sequential, watershed

from ...core.config import defaults
from ...core.errors import ConfigError
from .basins import contour_basins
from .targets import check_channels, neighbourhood, normalized_sampling

Threshold = float | str

#: Threshold keys of ``postprocess.instance`` and the channel each one applies to.
THRESHOLD_CHANNELS = {
    "seed_foreground": "foreground",
    "seed_contour": "contour",
    "seed_contour_depth": "contour",
    "seed_distance": "distance",
    "seed_centroid": "centroid",
    "seed_touching": "touching",
    "mask_threshold": "foreground",
    "mask_distance": "distance",
}



class NoSeedsWarning(UserWarning):
    """The growth mask has pixels but no seed survived the seed thresholds."""


@dataclass(frozen=True)
class InstanceParams:
    """The ``postprocess.instance`` section (``tuned`` is handled by the task)."""

    method: str
    seed_foreground: Threshold
    seed_contour: Threshold
    seed_contour_depth: float
    seed_distance: Threshold
    seed_centroid: Threshold
    seed_touching: Threshold
    mask_threshold: Threshold
    mask_distance: Threshold
    min_seed_size: int
    seed_opening: int
    voronoi_fill: str
    min_size: int
    max_size: int
    fill_holes: bool
    clear_border: bool
    z_median: int
    slice_by_slice: bool

    def __post_init__(self) -> None:
        if self.method not in ("watershed", "voronoi"):
            raise ConfigError("postprocess.instance.method", f"'{self.method}' is not watershed or voronoi")
        if self.voronoi_fill not in ("foreground", "image"):
            raise ConfigError("postprocess.instance.voronoi_fill", f"'{self.voronoi_fill}' is not foreground or image")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> InstanceParams:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})

    @classmethod
    def defaults(cls, **overrides: Any) -> InstanceParams:
        """The schema's ``postprocess.instance`` with ``overrides`` (for callers without a config)."""
        return cls.from_config(defaults("postprocess.instance", **overrides))

    def with_thresholds(self, thresholds: dict[str, float]) -> InstanceParams:
        unknown = set(thresholds) - set(THRESHOLD_CHANNELS)
        if unknown:
            raise ConfigError("postprocess.instance", f"unknown tuned threshold(s) {sorted(unknown)}")
        return dataclasses.replace(self, **thresholds)


# --------------------------------------------------------------------------- pipeline


def instance_postprocess(prediction: np.ndarray, channels: Sequence[str], params: InstanceParams | None = None,
                         voxel_size: Sequence[float] | None = None, basins: dict | None = None) -> np.ndarray:
    """(Z)YXC activated prediction with ``channels`` -> (Z)YX labels, uint16 or uint32, ids 1..N."""
    params = params or InstanceParams.defaults()
    check_channels(channels)
    prediction = np.asarray(prediction, dtype=np.float32)
    if prediction.shape[-1] != len(channels):
        raise ConfigError("targets.instance.channels", f"lists {len(channels)} channels but the prediction has "
                                                       f"{prediction.shape[-1]}")
    spatial = prediction.ndim - 1
    sampling = normalized_sampling(voxel_size, spatial)
    maps = split_channels(z_median(prediction, params.z_median), channels)
    thresholds = resolve_thresholds(maps, params)
    mask = growth_mask(maps, thresholds)
    seeds = seed_mask(maps, thresholds, sampling, mask, basins) & mask
    if thresholds.get("seed_contour_depth", 0.0) > 0:
        params = dataclasses.replace(params, min_seed_size=0)  # basin seeds are points, not blobs
    labels = grow(seeds, mask, flooding_surface(maps), params, sampling)
    if mask.any() and not labels.any():
        _warn_no_seeds(maps, thresholds, int(mask.sum()))
    return clean_labels(labels, params)


def object_mask(prediction: np.ndarray, channels: Sequence[str], params: InstanceParams) -> np.ndarray:
    """The growth mask of a (Z)YXC prediction: where objects are, whoever they belong to."""
    maps = split_channels(z_median(np.asarray(prediction, dtype=np.float32), params.z_median), channels)
    return growth_mask(maps, resolve_thresholds(maps, params))


def split_channels(prediction: np.ndarray, channels: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: prediction[..., c] for c, name in enumerate(channels)}


def z_median(prediction: np.ndarray, size: int) -> np.ndarray:
    """Median along z only: removes single-slice glitches without blurring YX detail."""
    if prediction.ndim != 4 or size <= 1:
        return prediction
    return ndimage.median_filter(prediction, size=(size, 1, 1, 1), mode="nearest")


def resolve_thresholds(maps: dict[str, np.ndarray], params: InstanceParams) -> dict[str, float]:
    """Numeric value of every threshold whose channel is present (``"otsu"`` computed per image)."""
    out: dict[str, float] = {}
    for key, channel in THRESHOLD_CHANNELS.items():
        source = maps.get(channel)
        if key == "mask_threshold" and source is None:
            source = maps.get("signed_distance")
        if key == "seed_distance" and source is None:
            source = maps.get("signed_distance")
        if source is not None:
            out[key] = _resolve(getattr(params, key), source, key)
    if "mask_threshold" in out and "foreground" not in maps and _is_number(params.mask_threshold):
        out["mask_threshold"] = 2.0 * out["mask_threshold"] - 1.0  # probability scale -> signed distance
    return out


def _is_number(value: Threshold) -> bool:
    return not isinstance(value, str)


def _resolve(value: Threshold, channel: np.ndarray, key: str) -> float:
    if _is_number(value):
        return float(value)
    if value != "otsu":
        raise ConfigError(f"postprocess.instance.{key}", f"'{value}' is neither a number nor 'otsu'")
    low, high = float(channel.min()), float(channel.max())
    if high - low < 1e-6:
        return 0.5 * (low + high)  # a constant map has no two classes to separate
    return float(threshold_otsu(channel))


def seed_mask(maps: dict[str, np.ndarray], thr: dict[str, float], sampling: np.ndarray | None = None,
              mask: np.ndarray | None = None, basins: dict | None = None) -> np.ndarray:
    """Pixels meeting the seed condition of every channel present (``mask``: the growth mask,
    which bounds the contour basins)."""
    shape = next(iter(maps.values())).shape
    seeds = np.ones(shape, dtype=bool)
    depth = thr.get("seed_contour_depth", 0.0)

    def contour(m: np.ndarray) -> np.ndarray:
        return contour_basins(m, depth, sampling, mask, thr, basins) if depth > 0 else m <= thr["seed_contour"]

    conditions: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "foreground": lambda m: m > thr["seed_foreground"],
        "contour": contour,
        "distance": lambda m: m > thr["seed_distance"],
        "signed_distance": lambda m: m > thr["seed_distance"],
        "centroid": lambda m: m > thr["seed_centroid"],
        "touching": lambda m: m <= thr["seed_touching"],
    }
    for name, channel in maps.items():
        seeds &= conditions[name](channel)
    return seeds


def growth_mask(maps: dict[str, np.ndarray], thr: dict[str, float]) -> np.ndarray:
    if "foreground" in maps:
        return maps["foreground"] > thr["mask_threshold"]
    if "signed_distance" in maps:
        return maps["signed_distance"] > thr["mask_threshold"]
    return maps["distance"] > thr["mask_distance"]


def flooding_surface(maps: dict[str, np.ndarray]) -> np.ndarray:
    for name in ("distance", "signed_distance"):
        if name in maps:
            return 1.0 - maps[name]
    if "contour" in maps:
        return maps["contour"]
    return 1.0 - maps["foreground"]


def _warn_no_seeds(maps: dict[str, np.ndarray], thr: dict[str, float], n_mask: int) -> None:
    keys = {"foreground": "seed_foreground", "contour": "seed_contour", "distance": "seed_distance",
            "signed_distance": "seed_distance", "centroid": "seed_centroid", "touching": "seed_touching"}
    used = ", ".join(f"postprocess.instance.{keys[c]}={thr[keys[c]]:.3g} (channel {c}: "
                     f"{float(maps[c].min()):.3g}..{float(maps[c].max()):.3g})" for c in maps)
    warnings.warn(f"no object seeds although {n_mask} pixels are in the growth mask; seed thresholds: {used}; "
                  "postprocess.instance.min_seed_size may also be too large. Loosen them or use 'otsu'.",
                  NoSeedsWarning, stacklevel=3)


# --------------------------------------------------------------------------- growing


def grow(seeds: np.ndarray, mask: np.ndarray, surface: np.ndarray, params: InstanceParams,
         sampling: np.ndarray) -> np.ndarray:
    """Number the seeds and grow them within the mask.

    With ``slice_by_slice`` (3D) seeds are still numbered in 3D, so an object keeps one
    id through z, but growth runs in each z-slice separately: with coarse z a flood in 3D
    leaks between nuclei stacked above each other through a single slice. Slices an
    object's seed does not reach (its top and bottom caps) are then filled by a 3D pass
    from the per-slice result, which only claims pixels no slice could label.
    """
    markers = label_seeds(seeds, params.min_seed_size, params.seed_opening, sampling)
    if not markers.any():
        return markers
    if seeds.ndim == 3 and params.slice_by_slice:
        labels = np.zeros_like(markers)
        for z in range(seeds.shape[0]):
            if markers[z].any():
                labels[z] = _grow_markers(markers[z], mask[z], surface[z], params, sampling[1:])
        markers = labels
    return _grow_markers(markers, mask, surface, params, sampling)


def _grow_markers(markers: np.ndarray, mask: np.ndarray, surface: np.ndarray, params: InstanceParams,
                  sampling: np.ndarray) -> np.ndarray:
    if params.method == "voronoi":
        return voronoi(markers, mask if params.voronoi_fill == "foreground" else None, sampling)
    return watershed(surface, markers, mask=mask)


def label_seeds(seeds: np.ndarray, min_seed_size: int, opening: int, sampling: np.ndarray) -> np.ndarray:
    """Connected seed blobs numbered 1..N after an optional opening and removal of small blobs."""
    if opening > 0:
        seeds = ndimage.binary_opening(seeds, structure=neighbourhood(sampling, float(opening)))
    markers, n = ndimage.label(seeds)
    if n and min_seed_size > 1:
        small = np.bincount(markers.ravel()) < min_seed_size
        small[0] = False
        if small.any():
            markers[small[markers]] = 0
            markers, _, _ = relabel_sequential(markers)
    return markers


def voronoi(markers: np.ndarray, region: np.ndarray | None, sampling: np.ndarray) -> np.ndarray:
    """Every pixel of ``region`` (all pixels when None) takes the label of its nearest seed pixel."""
    _, nearest = ndimage.distance_transform_edt(markers == 0, sampling=sampling, return_indices=True)
    labels = markers[tuple(nearest)]
    if region is not None:
        labels[~region] = 0
    return labels


# --------------------------------------------------------------------------- clean-up


def clean_labels(labels: np.ndarray, params: InstanceParams) -> np.ndarray:
    """Fill holes, drop objects outside [min_size, max_size] and border objects; relabel 1..N compactly."""
    labels = np.asarray(labels)
    if params.fill_holes:
        labels = fill_holes(labels)
    labels = filter_sizes(labels, params.min_size, params.max_size)
    if params.clear_border:
        labels = clear_border(labels)
    return relabel(labels)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Background enclosed by one object becomes part of it (other objects inside are kept)."""
    labels = labels.copy()
    for idx, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box]
        inside = crop == idx
        holes = ndimage.binary_fill_holes(inside) & ~inside & (crop == 0)
        crop[holes] = idx
    return labels


def filter_sizes(labels: np.ndarray, min_size: int = 0, max_size: int = 0) -> np.ndarray:
    """Objects smaller than ``min_size`` or larger than ``max_size`` pixels (0 = no limit) become background."""
    if min_size <= 0 and max_size <= 0:
        return labels
    sizes = np.bincount(labels.ravel())
    drop = sizes < min_size
    if max_size > 0:
        drop |= sizes > max_size
    drop[0] = False
    if not drop.any():
        return labels
    labels = labels.copy()
    labels[drop[labels]] = 0
    return labels


def clear_border(labels: np.ndarray) -> np.ndarray:
    """Remove objects touching the first/last row or column (YX border; z is left alone)."""
    edges = [labels[..., 0, :], labels[..., -1, :], labels[..., :, 0], labels[..., :, -1]]
    touching = np.unique(np.concatenate([e.ravel() for e in edges]))
    touching = touching[touching > 0]
    if touching.size == 0:
        return labels
    return np.where(np.isin(labels, touching), 0, labels)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N keeping the order of the old ids; uint16, or uint32 beyond 65,535 objects."""
    out, _, _ = relabel_sequential(np.asarray(labels).astype(np.int64, copy=False))
    return out.astype(label_dtype(int(out.max(initial=0))), copy=False)


def label_dtype(n_objects: int) -> np.dtype:
    return np.dtype(np.uint16) if n_objects < 2**16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------- object table


def object_table(labels: np.ndarray, image: np.ndarray | None = None,
                 voxel_size: Sequence[float] | None = None, score: np.ndarray | None = None) -> pd.DataFrame:
    """One row per object: label, area/volume (pixels; ``*_scaled`` in voxel_size units),
    centroid and half-open bounding box per axis, mean intensity per image channel, and
    the object's ``score``: the mean of the (Z)YX ``score`` map over it (what average
    precision ranks objects by).

    ``image`` is (Z)YX or (Z)YXC on the same grid as ``labels``.
    """
    labels = np.asarray(labels)
    axes = "zyx"[3 - labels.ndim:]
    boxes = ndimage.find_objects(labels)
    ids = np.array([i for i, b in enumerate(boxes, start=1) if b is not None], dtype=np.int64)
    size_name = "volume" if labels.ndim == 3 else "area"
    table: dict[str, Any] = {"label": ids}
    table[size_name] = np.bincount(labels.ravel().astype(np.intp, copy=False))[ids].astype(np.int64)
    if voxel_size is not None:
        table[f"{size_name}_scaled"] = table[size_name] * float(np.prod(voxel_size))
    centres = np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(len(ids), labels.ndim)
    for a, name in enumerate(axes):
        table[f"centroid_{name}"] = centres[:, a]
    for a, name in enumerate(axes):
        table[f"bbox_{name}0"] = [boxes[i - 1][a].start for i in ids]
        table[f"bbox_{name}1"] = [boxes[i - 1][a].stop for i in ids]
    if image is not None:
        table.update(_mean_intensities(labels, np.asarray(image), ids))
    if score is not None:
        table["score"] = _mean_intensities(labels, np.asarray(score, dtype=np.float64), ids)["mean_intensity"]
    return pd.DataFrame(table)


def _mean_intensities(labels: np.ndarray, image: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    if image.shape == labels.shape:
        image = image[..., np.newaxis]
    if image.shape[:-1] != labels.shape:
        raise ValueError(f"image of shape {image.shape} does not fit labels of shape {labels.shape}")
    n = image.shape[-1]
    out = {}
    for c in range(n):
        values = ndimage.mean(image[..., c].astype(np.float64), labels, ids) if ids.size else np.zeros(0)
        out["mean_intensity" if n == 1 else f"mean_intensity_{c}"] = np.asarray(values, dtype=float)
    return out
