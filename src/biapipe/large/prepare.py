"""Training images larger than memory: normalization statistics and the prepared image and
targets written block by block, so preparing a volume holds one block (plus its halo) at a time.

A block's targets are computed from its label with ``task.target_halo()`` voxels of context
on each side, then cropped, so targets that look beyond a voxel (contours, distance maps,
point stencils) match the whole-image computation inside a halo at least an object wide.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr

from ..core import imageio
from ..data.blocks import block_grid, choose_block_shape
from ..data.lazy import NormalizedImage, lazy_stats, open_lazy
from ..data.normalize import check_finite, dataset_stats, fixed_stats

#: float32-sized arrays per voxel that preparing a block holds (label, targets and their
#: temporaries: distance transforms work in float64), beyond the raw and normalized image.
PREPARE_TEMPORARIES = 12


class BlockTargets(Protocol):
    """What block-wise preparation needs from a task."""

    ndim: int

    def target_halo(self) -> tuple[int, ...]: ...

    def read_label_region(self, path: str | Path, region: tuple[slice, ...],
                          image_shape: tuple[int, ...]) -> Any: ...

    def make_targets(self, label: Any, path: str | Path | None = None) -> np.ndarray: ...


def prepare_bytes(shape: Sequence[int], dtype: Any) -> int:
    """About what preparing an image of canonical (Z)YXC ``shape`` whole holds in memory."""
    voxels = math.prod(int(s) for s in shape[:-1])
    return voxels * (int(shape[-1]) * (np.dtype(dtype).itemsize + 4) + 4 * PREPARE_TEMPORARIES)


def fits(path: str | Path, ndim: int, axes: str | None, memory_gb: float) -> bool:
    """Whether an image can be prepared (or read for statistics) whole within ``memory_gb``."""
    image = open_lazy(path, ndim, axes)
    return prepare_bytes(image.shape, image.dtype) <= memory_gb * 2**30


def blocks_of(shape: Sequence[int], chunks: Sequence[int], memory_gb: float, per_voxel: int) -> list[Any]:
    """Blocks of whole ``chunks`` over the (Z)YX ``shape``, each within the budget."""
    return block_grid(shape, choose_block_shape(shape, chunks, memory_gb * 2**30, per_voxel))


def image_regions(path: str | Path, ndim: int, axes: str | None, memory_gb: float) -> Iterator[np.ndarray]:
    """An image read whole when it fits ``memory_gb``, else block by block (for dataset statistics)."""
    if fits(path, ndim, axes, memory_gb):
        image = imageio.read_image(path, ndim, axes)
        check_finite(image, path)
        yield image
        return
    lazy = open_lazy(path, ndim, axes)
    for block in blocks_of(lazy.shape[:-1], lazy.chunks[:-1], memory_gb, 4 * lazy.shape[-1]):
        region = lazy[block.slices]
        check_finite(region, path)
        yield region


def dataset_stats_bounded(paths: Sequence[str], ndim: int, axes: str | None, cfg_normalize: dict[str, Any],
                          memory_gb: float) -> dict[str, Any]:
    """Dataset normalization statistics over all training images, each read within the budget."""
    return dataset_stats((r for p in paths for r in image_regions(p, ndim, axes, memory_gb)), cfg_normalize)


def prepare_blockwise(image: str, label: str, image_out: str, targets_out: str, task: BlockTargets,
                      axes: str | None, cfg_normalize: dict[str, Any], stats: dict[str, Any] | None,
                      memory_gb: float, chunks: Any) -> None:
    """Write the normalized image and its targets as Zarr stores, one block at a time.

    ``chunks(shape)`` gives the store chunks; blocks are whole chunks, so no chunk is written twice.
    """
    raw = open_lazy(image, task.ndim, axes)
    spatial = tuple(raw.shape[:-1])
    if stats is None:
        stats = fixed_stats(cfg_normalize) or lazy_stats(raw, cfg_normalize, memory_gb * 2**30)
    normalized = NormalizedImage(raw, cfg_normalize, stats)
    halo = task.target_halo()
    per_voxel = prepare_bytes((1,) * task.ndim + (raw.shape[-1],), raw.dtype)
    store_chunks = tuple(chunks(raw.shape))[:-1]
    # the halo grows each block: budget for the grown block
    blocks = blocks_of(spatial, store_chunks, memory_gb / _growth(store_chunks, halo), per_voxel)
    with imageio.atomic_path(image_out) as img_tmp, imageio.atomic_path(targets_out) as tgt_tmp:
        image_store = zarr.create_array(store=str(img_tmp), shape=raw.shape, dtype=np.float32,
                                        chunks=chunks(raw.shape), overwrite=True)
        image_store.attrs.update({"source": str(image)})
        target_store = None
        for block in blocks:
            image_store[block.slices] = normalized[block.slices]
            grown = block.grown(halo, spatial)
            truth = task.read_label_region(label, grown, spatial)
            target = task.make_targets(truth, label)
            core = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(block.slices, grown))
            target = target[core]
            if target_store is None:
                shape = spatial + target.shape[-1:]
                target_store = zarr.create_array(store=str(tgt_tmp), shape=shape, dtype=target.dtype,
                                                 chunks=chunks(shape), overwrite=True)
                target_store.attrs.update({"source": str(label)})
            target_store[block.slices] = target


def _growth(chunks: Sequence[int], halo: Sequence[int]) -> float:
    """How much larger a chunk-sized block is with its halo (the budget is divided by this)."""
    return math.prod((c + 2 * h) / c for c, h in zip(chunks, halo))
