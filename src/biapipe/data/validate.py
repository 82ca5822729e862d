"""Checks of the whole dataset that run before any job, from file headers alone.

Pixel-level checks (NaN/Inf, label values) need the data and run in the per-image
normalize/targets jobs, which the workflow schedules ahead of training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.axes import canonical_image, canonical_label
from ..core.errors import InputError
from ..core.imageio import check_image_dtype, open_array
from .samples import Dataset, Sample


def probe(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an image file without reading its pixels."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        import tifffile

        if not path.exists():
            raise InputError(path, "file not found")
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(series.shape), np.dtype(series.dtype)
        except Exception as exc:
            raise InputError(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    arr = open_array(path)
    return tuple(arr.shape), np.dtype(arr.dtype)


class ProbeCache:
    """Remembers probe results by (path, size, mtime) so reparsing a big dataset stays cheap."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def get(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise InputError(path, "file not found") from exc
        key = [st.st_size, st.st_mtime_ns]
        hit = self.entries.get(path)
        if hit and hit[:2] == key:
            return tuple(hit[2]), np.dtype(hit[3])
        shape, dtype = probe(path)
        self.entries[path] = [*key, list(shape), dtype.str]
        self.dirty = True
        return shape, dtype

    def save(self) -> None:
        if self.path and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)


#: Canonical shapes already worked out, by (kind, header shape, dtype, ndim, axes): a dataset
#: has few distinct shapes and the check runs at every parse. Only successes are kept, so an
#: error is raised afresh and names its own file.
_CANONICAL: dict[tuple[Any, ...], tuple[int, ...]] = {}


def spatial_shape(shape: tuple[int, ...], dtype: np.dtype, ndim: int, path: str, axes: str | None) -> tuple[int, ...]:
    """Canonical (Z)YX shape of an image, using the one axes function on a zero-size view."""
    key = ("image", tuple(shape), np.dtype(dtype).str, ndim, axes)
    hit = _CANONICAL.get(key)
    if hit is None:
        view = np.broadcast_to(np.zeros((), dtype=dtype), shape)
        hit = _CANONICAL[key] = tuple(canonical_image(view, ndim, path, axes).shape[:-1])
    return hit


def label_shape(shape: tuple[int, ...], dtype: np.dtype, ndim: int, path: str) -> tuple[int, ...]:
    """Spatial shape of a label image (singleton axes dropped) from its header."""
    key = ("label", tuple(shape), np.dtype(dtype).str, ndim, None)
    hit = _CANONICAL.get(key)
    if hit is None:
        view = np.broadcast_to(np.zeros((), dtype=dtype), shape)
        hit = _CANONICAL[key] = tuple(canonical_label(view, ndim, path).shape)
    return hit


#: A task's header check of one label file: (label, header shape, dtype, image, image (Z)YXC shape).
LabelCheck = Callable[[str, tuple[int, ...], np.dtype, str, tuple[int, ...]], None]


def image_shape(shape: tuple[int, ...], dtype: np.dtype, ndim: int, path: str, axes: str | None) -> tuple[int, ...]:
    """Canonical (Z)YXC shape of an image, channels included, from its header."""
    key = ("image+c", tuple(shape), np.dtype(dtype).str, ndim, axes)
    hit = _CANONICAL.get(key)
    if hit is None:
        view = np.broadcast_to(np.zeros((), dtype=dtype), shape)
        hit = _CANONICAL[key] = tuple(canonical_image(view, ndim, path, axes).shape)
    return hit


def check_label_image(label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                      spatial: tuple[int, ...], ndim: int) -> None:
    """A label image must be integer-like and have its image's spatial shape."""
    if np.dtype(dtype).kind not in "uifb":
        raise InputError(label, f"unsupported label dtype {dtype}")
    lab_shape = label_shape(header_shape, dtype, ndim, label)
    if lab_shape != tuple(spatial):
        raise InputError(label, f"label shape {lab_shape} does not match image {image} of shape {tuple(spatial)}")


def check_sample(sample: Sample, cfg: dict[str, Any], cache: ProbeCache, label_kind: str,
                 check_label: LabelCheck | None = None) -> np.dtype:
    """Header checks of one sample; returns the image dtype (float images need a pixel scan).

    ``label_kind`` is the task's: ``image`` labels are checked against their image here (by
    ``check_label``, the task's own check, when given), ``table`` labels (points) when they are
    read, ``class`` labels (names) at discovery.
    """
    ndim = cfg["ndim"]
    shape, dtype = cache.get(sample.image)
    check_image_dtype(dtype, sample.image)
    img_shape = spatial_shape(shape, dtype, ndim, sample.image, cfg["data"]["axes"])
    if label_kind == "class":
        return dtype  # whole images are resized, never padded
    if sample.label is not None and label_kind == "image":
        lshape, ldtype = cache.get(sample.label)
        full = image_shape(shape, dtype, ndim, sample.image, cfg["data"]["axes"])
        if check_label is None:
            check_label_image(sample.label, lshape, ldtype, sample.image, img_shape, ndim)
        else:
            check_label(sample.label, lshape, ldtype, sample.image, full)
    if sample.split in ("train", "val") and not cfg["train"]["pad"]:
        patch = tuple(cfg["train"]["patch_size"])
        if any(s < p for s, p in zip(img_shape, patch)):
            raise InputError(
                sample.image,
                f"image of shape {img_shape} is smaller than train.patch_size {list(patch)}; set train.pad: true or use a smaller patch",
            )
    return dtype


def check_dataset(ds: Dataset, cfg: dict[str, Any], label_kind: str, cache_path: str | Path | None = None,
                  check_label: LabelCheck | None = None) -> list[str]:
    """Raise InputError for the first sample whose files are unusable; returns the ids of the
    float images, the only ones that can hold NaN/Inf (their pixels are scanned by a job)."""
    cache = ProbeCache(cache_path)
    floats = []
    try:
        for sample in ds.all():
            if check_sample(sample, cfg, cache, label_kind, check_label).kind in "fc":
                floats.append(sample.id)
    finally:
        cache.save()
    return floats
