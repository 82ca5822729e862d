"""A fingerprint of the training data: what automatic planning (``train.plan: auto``) decides from.

Image sizes, channels and dtypes, intensity statistics and (for workflows with objects) the
size, number and crowding of the objects, summarized over the training and validation images.
It is computed when the workflow is parsed, so it must stay cheap at any dataset size
(docs/architecture.md, "planning cost"): at most ``SAMPLE`` images are read, those whose
names hash lowest (adding an image changes the sample only if it hashes among them), each
through a lazy reader and cut to its central ``MAX_SIDE`` pixels per axis, and every
image's numbers are cached by file size and modification time.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, explain_os_error
from ..core.jsoncache import JsonCache
from .lazy import open_lazy, read_region
from .samples import Sample

#: Images read per fingerprint at most.
SAMPLE = 64
#: Largest extent read per spatial axis (a central crop): 2048 in YX, 64 along z.
MAX_SIDE = {2: (2048, 2048), 3: (64, 512, 512)}
#: Bump when the per-image numbers change meaning: cached entries of another version are recomputed.
VERSION = 1

ObjectStats = Callable[[np.ndarray, str], "dict[str, float] | None"]  # (label crop, its file for errors)


def sample_ids(ids: Sequence[str], n: int = SAMPLE) -> list[str]:
    """The ``n`` ids whose CRC32 is lowest: a sample that does not depend on the other images."""
    return sorted(ids, key=lambda i: (zlib.crc32(i.encode()), i))[:n]


def central_crop(shape: Sequence[int], limit: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, (s - m) // 2), max(0, (s - m) // 2) + min(s, m)) for s, m in zip(shape, limit))


def image_record(sample: Sample, ndim: int, axes: str | None, objects: ObjectStats | None) -> dict[str, Any]:
    """The numbers of one training image: full spatial shape, channels, dtype, intensity
    percentiles (1, 50, 99.8 of the crop, all channels) and its objects' statistics."""
    image = open_lazy(sample.image, ndim, axes)
    region = central_crop(image.shape[:-1], MAX_SIDE[ndim])
    pixels = read_region(image, region, sample.image).astype(np.float64)
    low, mid, high = (float(v) for v in np.percentile(pixels, [1.0, 50.0, 99.8]))
    record: dict[str, Any] = {"shape": [int(s) for s in image.shape[:-1]], "channels": int(image.shape[-1]),
                              "dtype": str(np.dtype(image.dtype)), "p1": low, "p50": mid, "p99_8": high,
                              "objects": None}
    if objects is not None and sample.label is not None:
        label = open_lazy(sample.label, ndim)
        record["objects"] = objects(read_region(label, region, sample.label)[..., 0], sample.label)
    return record


class FingerprintCache(JsonCache):
    """Per-image records by (image and label path, size, mtime): a re-parse reads no pixels."""

    @staticmethod
    def key(sample: Sample) -> tuple[str, list[Any]]:
        files = [sample.image] + ([sample.label] if sample.label else [])
        stamp: list[Any] = [VERSION]
        for path in files:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise InputError(path, explain_os_error(exc)) from exc
            stamp += [st.st_size, st.st_mtime_ns]
        return "|".join(files), stamp

    def get(self, sample: Sample, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        name, stamp = self.key(sample)
        hit = self.entries.get(name)
        if hit and hit["stamp"] == stamp:
            return hit["record"]
        record = compute()
        self.entries[name] = {"stamp": stamp, "record": record}
        self.dirty = True
        return record


def fingerprint(samples: Sequence[Sample], ndim: int, axes: str | None, voxel_size: Sequence[float] | None,
                objects: ObjectStats | None = None, cache_path: str | Path | None = None) -> dict[str, Any]:
    """The fingerprint of the training (and validation) ``samples``: medians over a sample of
    images, plus the spread of the object diameters (10th and 90th percentile over images)."""
    # labels are read only to measure objects (a classification sample's label is a class name)
    by_id = {s.id: s if objects else dataclasses.replace(s, label=None) for s in samples}
    cache = FingerprintCache(cache_path)
    chosen = sample_ids(list(by_id))
    records = [cache.get(by_id[i], lambda i=i: image_record(by_id[i], ndim, axes, objects)) for i in chosen]
    cache.save()
    shapes = np.array([r["shape"] for r in records], dtype=np.float64)
    out: dict[str, Any] = {
        "images": len(samples), "sampled": len(records), "ndim": ndim,
        "voxel_size": None if voxel_size is None else [float(v) for v in voxel_size],
        "channels": max(r["channels"] for r in records), "dtypes": sorted({r["dtype"] for r in records}),
        "shape_median": [int(v) for v in np.median(shapes, axis=0)],
        "shape_min": [int(v) for v in shapes.min(axis=0)],
        "intensity": {k: _round(float(np.median([r[k] for r in records]))) for k in ("p1", "p50", "p99_8")},
        "objects": None,
    }
    measured = [r["objects"] for r in records if r["objects"]]
    if measured:
        diameters = np.array([m["diameter"] for m in measured])
        out["objects"] = {
            "images_with_objects": len(measured),
            "diameter_median": _round(float(np.median(diameters))),
            "diameter_p10": _round(float(np.percentile(diameters, 10))),
            "diameter_p90": _round(float(np.percentile(diameters, 90))),
            "count_median": _round(float(np.median([m["count"] for m in measured]))),
            "foreground_median": _round(float(np.median([m["foreground"] for m in measured]))),
            "touching_median": _round(float(np.median([m["touching"] for m in measured]))),
        }
    return out


def _round(value: float) -> float:
    """Four significant digits: the fingerprint is read by people (plan.json) and compared by the planner."""
    return float(f"{value:.4g}")
