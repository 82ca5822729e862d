"""Checks of the whole dataset that run before any job, from file headers alone.

Pixel-level checks (NaN/Inf, label values) need the data and run in the per-image
normalize/targets jobs, which the workflow schedules ahead of training.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..core.axes import canonical_image, canonical_label
from ..core.errors import InputError, explain_os_error
from ..core.imageio import check_image_dtype, open_array
from ..core.jsoncache import JsonCache
from ..core.raster import check_2d, is_raster, probe_raster
from .samples import Dataset, Sample


def probe(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an image file without reading its pixels."""
    path = Path(path)
    name = path.name.lower()
    if is_raster(path):
        return probe_raster(path)
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


#: Header reads of at least this many files per process go to parallel processes.
PARALLEL_PROBES_FROM = 2000


def _probe_or_none(path: str) -> tuple[tuple[int, ...], str] | None:
    """A probe for a worker process: None for a file :func:`probe` rejects (the parse then
    probes it again itself, raising the error that names it)."""
    try:
        shape, dtype = probe(path)
    except InputError:
        return None
    return shape, dtype.str


class ProbeCache(JsonCache):
    """Remembers probe results by (path, size, mtime) so reparsing a big dataset stays cheap."""

    def get(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InputError(path, explain_os_error(exc)) from exc
        key = [st.st_size, st.st_mtime_ns]
        hit = self.entries.get(path)
        if hit and hit[:2] == key:
            return tuple(hit[2]), np.dtype(hit[3])
        shape, dtype = probe(path)
        self.entries[path] = [*key, list(shape), dtype.str]
        self.dirty = True
        return shape, dtype

    def prefetch(self, paths: list[str]) -> None:
        """Probe every path not in the cache, in parallel processes when there are many: a first
        parse of 100,000 images reads 100,000 headers (about 0.5 ms each on one core)."""
        missing = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue  # get() raises for it, naming the file
            hit = self.entries.get(path)
            if not hit or hit[:2] != [st.st_size, st.st_mtime_ns]:
                missing.append((path, [st.st_size, st.st_mtime_ns]))
        workers = min(os.cpu_count() or 1, len(missing) // PARALLEL_PROBES_FROM)
        if workers < 2:
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            found = pool.map(_probe_or_none, [p for p, _ in missing], chunksize=256)
            for (path, key), result in zip(missing, found):
                if result is not None:
                    self.entries[path] = [*key, list(result[0]), result[1]]
                    self.dirty = True


#: Canonical shapes already worked out, by (kind, header shape, dtype, ndim, axes): a dataset
#: has few distinct shapes and the check runs at every parse. Only successes are kept, so an
#: error is raised afresh and names its own file.
_CANONICAL: dict[tuple[Any, ...], tuple[int, ...]] = {}


def canonical_shape(shape: tuple[int, ...], dtype: np.dtype, ndim: int, path: str, axes: str | None) -> tuple[int, ...]:
    """Canonical (Z)YXC shape of an image, using the one axes function on a zero-size view."""
    key = ("image", tuple(shape), np.dtype(dtype).str, ndim, axes)
    hit = _CANONICAL.get(key)
    if hit is None:
        view = np.broadcast_to(np.zeros((), dtype=dtype), shape)
        hit = _CANONICAL[key] = tuple(canonical_image(view, ndim, path, axes).shape)
    return hit


def spatial_shape(shape: tuple[int, ...], dtype: np.dtype, ndim: int, path: str, axes: str | None) -> tuple[int, ...]:
    """Canonical (Z)YX shape of an image."""
    return canonical_shape(shape, dtype, ndim, path, axes)[:-1]


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


def check_label_image(label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                      spatial: tuple[int, ...], ndim: int) -> None:
    """A label image must be integer-like and have its image's spatial shape."""
    if np.dtype(dtype).kind not in "uifb":
        raise InputError(label, f"unsupported label dtype {dtype}")
    lab_shape = label_shape(header_shape, dtype, ndim, label)
    if lab_shape != tuple(spatial):
        raise InputError(label, f"label shape {lab_shape} does not match image {image} of shape {tuple(spatial)}")


def check_sample(sample: Sample, cfg: dict[str, Any], cache: ProbeCache, label_kind: str,
                 check_label: LabelCheck | None = None) -> tuple[np.dtype, tuple[int, ...]]:
    """Header checks of one sample; returns the image dtype and its canonical (Z)YXC shape.

    ``label_kind`` is the task's: ``image`` labels are checked against their image here (by
    ``check_label``, the task's own check, when given), ``table`` labels (points) when they are
    read, ``class`` labels (names) at discovery.
    """
    ndim = cfg["ndim"]
    check_2d(sample.image, ndim)
    shape, dtype = cache.get(sample.image)
    check_image_dtype(dtype, sample.image)
    full = canonical_shape(shape, dtype, ndim, sample.image, cfg["data"]["axes"])
    img_shape = full[:-1]
    if label_kind == "class":
        return dtype, full  # whole images are resized, never padded
    if sample.label is not None and label_kind == "image":
        check_2d(sample.label, ndim)
        lshape, ldtype = cache.get(sample.label)
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
    return dtype, full


def check_dataset(ds: Dataset, cfg: dict[str, Any], label_kind: str, cache_path: str | Path | None = None,
                  check_label: LabelCheck | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Raise InputError for the first sample whose files are unusable (from headers: dtypes,
    shapes, channels; labels by the task's ``check_label`` when given); returns the canonical
    (Z)YXC shape and dtype of every test image."""
    cache = ProbeCache(cache_path)
    cache.prefetch([p for s in ds.all() for p in (s.image, s.label) if p and (p == s.image or label_kind == "image")])
    tests: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    first: tuple[Sample, int] | None = None
    try:
        for sample in ds.all():
            dtype, shape = check_sample(sample, cfg, cache, label_kind, check_label)
            channels = shape[-1]
            if first is None:
                first = (sample, channels)
            elif channels != first[1]:
                raise InputError(sample.image, f"has {channels} channel(s) but {first[0].image} has {first[1]}; every "
                                               "image needs the same channels (set data.axes if an axis is misread)")
            if sample.split == "test":
                tests[sample.id] = (shape, dtype)
    finally:
        cache.save()
    return tests
