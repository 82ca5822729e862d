"""Label volumes larger than memory: written block by block, published as OME-Zarr or BigTIFF,
and read back for scoring. Generic: what goes into the blocks is the task's business."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..core import imageio
from ..core.errors import ConfigError
from ..core.omezarr import create_ome_zarr
from ..data.blocks import Block, block_grid, choose_block_shape
from ..data.lazy import LazyImage, check_chunk_budget, open_lazy
from .plan import memory_bytes


@contextlib.contextmanager
def label_volume(out_path: str | Path, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                 voxel_size: Sequence[float] | None) -> Iterator[tuple[Any, Path]]:
    """An empty OME-Zarr label volume to fill block by block, and a scratch folder beside it.

    On success the volume is published at ``out_path`` (``*.ome.zarr`` moved into place, or a
    BigTIFF streamed one z-plane at a time); the scratch folder is removed either way.
    """
    work = Path(out_path).with_name(f".{Path(out_path).name}.work")
    work.mkdir(parents=True, exist_ok=True)
    try:
        omez = work / "labels.ome.zarr"
        out = create_ome_zarr(omez, shape, dtype, chunks, "zyx"[3 - len(shape):], voxel_size, name=Path(out_path).name)
        yield out, work
        _publish(omez, out, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(omez: Path, out: Any, out_path: str | Path) -> None:
    out_path = Path(out_path)
    if out_path.name.lower().endswith(".zarr"):
        with imageio.atomic_path(out_path) as tmp:
            shutil.move(str(omez), tmp)
        return
    import tifffile

    def planes() -> Any:
        if out.ndim == 2:
            yield np.asarray(out[...])
            return
        for z in range(out.shape[0]):
            yield np.asarray(out[z])

    with imageio.atomic_path(out_path) as tmp:
        tifffile.imwrite(tmp, planes(), shape=tuple(out.shape), dtype=out.dtype, bigtiff=True,
                         compression="zlib")


def open_raw(image_path: str | Path, ndim: int, axes: str | None, pcfg: dict[str, Any]) -> LazyImage:
    """A raw input image in the order ``data.axes`` gives, checked against the memory budget."""
    image = open_lazy(image_path, ndim, axes)
    check_chunk_budget(image, memory_bytes(pcfg))
    return image


class SpatialView:
    """A single-channel lazy image seen without its channel axis (label volumes)."""

    def __init__(self, image: LazyImage) -> None:
        if image.shape[-1] != 1:
            raise ConfigError("data", f"{image.path}: a label volume must have one channel, found {image.shape[-1]}")
        self.image, self.shape, self.chunks = image, image.shape[:-1], image.chunks[:-1]

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return self.image[tuple(key) + (slice(None),)][..., 0]


def scoring_pair(output_path: str | Path, label_path: str | Path, ndim: int, pcfg: dict[str, Any],
                 bytes_per_voxel: int = 8) -> tuple[SpatialView, SpatialView, list[Block]]:
    """A block-wise output and its ground truth (which may exceed memory too), with the blocks
    to count them by (``bytes_per_voxel``: what scoring holds per voxel of a block)."""
    pred = SpatialView(open_lazy(output_path, ndim))
    gt = SpatialView(open_lazy(label_path, ndim))
    blocks = block_grid(pred.shape, choose_block_shape(pred.shape, pred.chunks, memory_bytes(pcfg), bytes_per_voxel))
    return pred, gt, blocks


# --------------------------------------------------------------------------- ids across blocks


def id_scratch(path: str | Path, shape: Sequence[int], chunks: Sequence[int]) -> zarr.Array:
    """Block-local ids before merging (uint64: every block owns its own id range)."""
    return zarr.create_array(store=str(path), shape=tuple(shape), dtype=np.uint64, chunks=tuple(chunks),
                             fill_value=0, overwrite=True)


def core_of(core: Block, grown: tuple[slice, ...]) -> tuple[slice, ...]:
    """The core of a block inside an array read over its ``grown`` region."""
    return tuple(slice(a - g.start, b - g.start) for a, b, g in zip(core.start, core.stop, grown, strict=True))


def id_counts(ids: np.ndarray) -> np.ndarray:
    """(2, K) array: the ids > 0 present in ``ids`` and their voxel counts."""
    values, counts = np.unique(ids[ids > 0], return_counts=True)
    return np.stack([values.astype(np.uint64), counts.astype(np.uint64)])


def merge_counts(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids and summed counts from per-block (2, K) tables (an id may span blocks)."""
    table = np.concatenate([np.zeros((2, 0), np.uint64), *parts], axis=1)
    ids, inverse = np.unique(table[0], return_inverse=True)
    return ids, np.bincount(inverse, weights=table[1].astype(np.float64)).astype(np.int64)


def root_sizes(roots: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per id, the size of the whole object (the group) it belongs to."""
    unique_roots, inverse = np.unique(roots, return_inverse=True)
    return np.bincount(inverse, weights=counts).astype(np.int64)[inverse]
