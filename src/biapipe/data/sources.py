"""Training images for patch sampling: held in memory, or read patch by patch from their Zarr
stores when the training set is larger than ``train.memory_gb``.

Either way a patch is the same: patches are drawn by position, and a foreground-centred patch
picks its centre through a :class:`ForegroundIndex` that counts foreground voxels per chunk
(:func:`index_chunks`) and finds the k-th one in chunk-major order. That
needs one pass over the target to count, never a list of every foreground voxel, and gives the
same voxel whether the target is in memory or on disk: same seed, same patches.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.axes import to_torch_layout
from ..core.errors import InputError
from ..core.imageio import image_id, open_array, read_array
from .blocks import block_grid

#: Value of padded target pixels for class maps: excluded from the loss like any ignored pixel.
IGNORE_INDEX = -1

#: Chunks of the foreground index whose foreground voxels are kept, per image read from disk.
CACHED_CHUNKS = 256

PathPair = tuple[str | Path, str | Path]


def index_chunks(spatial: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """The (Z)YX chunk of the foreground index, twice the patch: a function of the shapes only, so
    images in memory and on disk are indexed alike. Images prepared block by block are stored in
    these chunks too, so finding a foreground voxel or reading a patch decodes a few small chunks."""
    return tuple(min(int(s), 2 * int(p)) for s, p in zip(spatial, patch_size))


class ChannelsFirst:
    """A (Z)YXC array on disk seen as C(Z)YX; slicing reads only the region asked for."""

    def __init__(self, array: Any) -> None:
        self.array = array
        shape = tuple(int(s) for s in array.shape)
        self.shape = (shape[-1], *shape[:-1])
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, window: tuple[slice, ...]) -> np.ndarray:
        region = np.asarray(self.array[tuple(window[1:]) + (window[0],)])
        return np.ascontiguousarray(np.moveaxis(region, -1, 0))


class ForegroundIndex:
    """Foreground voxels of one C(Z)YX target, counted per chunk; the k-th in chunk-major order on demand."""

    def __init__(self, target: Any, foreground: Callable[[np.ndarray], np.ndarray], patch_size: Sequence[int],
                 keep_all: bool) -> None:
        self.target, self.foreground = target, foreground
        spatial = tuple(target.shape[1:])
        self.blocks = block_grid(spatial, index_chunks(spatial, patch_size))
        self.counts = np.array([int(np.count_nonzero(self._mask(b))) for b in self.blocks], dtype=np.int64)
        self.cumulative = np.cumsum(self.counts)
        self.size = int(self.cumulative[-1]) if len(self.cumulative) else 0
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = len(self.blocks) if keep_all else CACHED_CHUNKS

    def _mask(self, block: Any) -> np.ndarray:
        region = self.target[(slice(None),) + block.slices]
        return np.asarray(self.foreground(np.moveaxis(np.asarray(region), 0, -1)), dtype=bool)

    def voxel(self, k: int) -> tuple[int, ...]:
        """(Z)YX position of the k-th foreground voxel (0 <= k < size)."""
        c = int(np.searchsorted(self.cumulative, k, side="right"))
        local = k - (int(self.cumulative[c - 1]) if c else 0)
        flat = self.cache.get(c)
        if flat is None:
            flat = np.flatnonzero(self._mask(self.blocks[c]))
            self.cache[c] = flat
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(c)
        block = self.blocks[c]
        offset = np.unravel_index(int(flat[local]), block.shape)
        return tuple(int(s + o) for s, o in zip(block.start, offset))


@dataclass
class Sample:
    """One training image and its target, C(Z)YX, in memory (numpy) or on disk (ChannelsFirst)."""

    name: str
    image: Any
    target: Any
    index: ForegroundIndex

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.image.shape[1:])


# --------------------------------------------------------------------------- loading


def _check_pair(image: Any, target: Any, image_path: Any, target_path: Any, ndim: int) -> None:
    if len(image.shape) != ndim + 1:
        raise InputError(image_path, f"normalized image of shape {tuple(image.shape)} does not have {ndim} spatial "
                                     "axes and a channel axis ((Z)YXC)")
    if len(target.shape) != ndim + 1:
        raise InputError(target_path, f"target of shape {tuple(target.shape)} does not have {ndim} spatial axes "
                                      "and a channel axis ((Z)YXC)")
    if tuple(image.shape[:-1]) != tuple(target.shape[:-1]):
        raise InputError(target_path, f"target of spatial shape {tuple(target.shape[:-1])} does not match its "
                                      f"image {image_path} of spatial shape {tuple(image.shape[:-1])}")
    if np.dtype(target.dtype).kind not in "iuf":
        raise InputError(target_path, f"unsupported target dtype {target.dtype} (expected integers or floats)")
    if np.dtype(image.dtype).kind not in "iuf":
        raise InputError(image_path, f"unsupported image dtype {image.dtype}")


def read_pair(image_path: str | Path, target_path: str | Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and target as (Z)YXC arrays and check they belong together."""
    image, target = read_array(image_path), read_array(target_path)
    _check_pair(image, target, image_path, target_path, ndim)
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InputError(image_path, "normalized image contains NaN or Inf")
    return image, target


def pad_widths(shape: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric padding that brings each spatial axis up to the patch size (zero where already big)."""
    widths = []
    for size, patch in zip(shape, patch_size):
        missing = max(0, patch - size)
        widths.append((missing // 2, missing - missing // 2))
    return widths


def pad_pair(image: np.ndarray, target: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad (Z)YXC image (reflect) and target (ignore value for class maps, 0 for float maps)."""
    widths = pad_widths(image.shape[:-1], patch_size) + [(0, 0)]
    if not any(before or after for before, after in widths):
        return image, target
    target_fill = IGNORE_INDEX if target.dtype.kind in "iu" else 0
    if target.dtype.kind == "u":
        target = target.astype(np.int32)  # unsigned maps cannot hold the ignore value
    return np.pad(image, widths, mode="reflect"), np.pad(target, widths, constant_values=target_fill)


def load_sample(image_path: str | Path, target_path: str | Path, foreground: Callable[[np.ndarray], np.ndarray],
                patch_size: Sequence[int], pad: bool) -> Sample:
    """Read, check, pad and index one training pair in memory; errors name the file at fault."""
    image, target = read_pair(image_path, target_path, len(patch_size))
    if any(s < p for s, p in zip(image.shape[:-1], patch_size)):
        if not pad:
            raise InputError(image_path, f"image of shape {image.shape[:-1]} is smaller than train.patch_size "
                                         f"{list(patch_size)}; set train.pad: true or use a smaller patch")
        image, target = pad_pair(image, target, patch_size)
    target = to_torch_layout(target)
    return Sample(image_id(image_path), to_torch_layout(image), target,
                  ForegroundIndex(target, foreground, patch_size, True))


def open_sample(image_path: str | Path, target_path: str | Path, foreground: Callable[[np.ndarray], np.ndarray],
                patch_size: Sequence[int]) -> Sample:
    """Open one training pair on disk, read patch by patch (it is at least as large as a patch:
    the pairs kept on disk are the large ones)."""
    image, target = open_array(image_path), open_array(target_path)
    _check_pair(image, target, image_path, target_path, len(patch_size))
    if any(s < p for s, p in zip(image.shape[:-1], patch_size)):
        raise InputError(image_path, f"image of shape {tuple(image.shape[:-1])} is smaller than train.patch_size")
    lazy_target = ChannelsFirst(target)
    return Sample(image_id(image_path), ChannelsFirst(image), lazy_target,
                  ForegroundIndex(lazy_target, foreground, patch_size, False))


def pair_bytes(image_path: str | Path, target_path: str | Path) -> int:
    """What a pair takes in memory (float32 image, target as stored), from the Zarr headers."""
    image, target = open_array(image_path), open_array(target_path)
    return 4 * math.prod(image.shape) + np.dtype(target.dtype).itemsize * math.prod(target.shape)


def load_samples(pairs: Sequence[PathPair], foreground: Callable[[np.ndarray], np.ndarray],
                 patch_size: Sequence[int], pad: bool, memory_gb: float | None = None) -> list[Sample]:
    """All pairs, in memory while they fit ``memory_gb`` together (None: all), the rest read patch
    by patch from disk. In-memory pairs are read up front, so a bad file fails the job before any
    training time is spent."""
    budget = math.inf if memory_gb is None else memory_gb * 2**30
    samples, used = [], 0
    for img, tgt in pairs:
        size = pair_bytes(img, tgt)
        if used + size <= budget:
            samples.append(load_sample(img, tgt, foreground, patch_size, pad))
            used += size
        else:
            samples.append(open_sample(img, tgt, foreground, patch_size))
    check_consistent(samples, pairs)
    return samples


def check_consistent(samples: list[Sample], pairs: Sequence[PathPair]) -> None:
    """All samples must agree on channel counts and target kind, or batches cannot be stacked."""
    if not samples:
        return
    first = samples[0]
    for sample, (img_path, tgt_path) in zip(samples[1:], pairs[1:]):
        if sample.image.shape[0] != first.image.shape[0]:
            raise InputError(img_path, f"has {sample.image.shape[0]} channels but {pairs[0][0]} has "
                                       f"{first.image.shape[0]}")
        if sample.target.shape[0] != first.target.shape[0] or (
            (sample.target.dtype.kind == "f") != (first.target.dtype.kind == "f")
        ):
            raise InputError(tgt_path, f"target ({sample.target.shape[0]} channels, {sample.target.dtype}) "
                                       f"differs from {pairs[0][1]} ({first.target.shape[0]} channels, "
                                       f"{first.target.dtype})")
