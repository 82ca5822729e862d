"""Blocks of a volume aligned to Zarr chunks, and merging of ids that meet across block faces.

Block edges are multiples of the output chunk edges, so every chunk belongs to exactly
one block: block jobs running in parallel never write the same chunk (Zarr writes whole
chunks, so two writers of one chunk would lose each other's pixels).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

#: Working copies of a block that block-wise prediction holds at once (input tile batch,
#: float32 accumulator, network activations are tile-sized): a conservative multiplier.
BLOCK_COPIES = 4


@dataclass(frozen=True)
class Block:
    """One block: its index in the block grid and its (Z)YX core region."""

    index: int
    position: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    def grown(self, halo: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
        """The core region grown by ``halo`` per axis, clipped to the volume ``shape``."""
        return tuple(
            slice(max(a - h, 0), min(b + h, n))
            for a, b, h, n in zip(self.start, self.stop, halo, shape, strict=True)
        )


def block_grid(shape: Sequence[int], block_shape: Sequence[int]) -> list[Block]:
    """Regular blocks covering ``shape`` (the last ones may be smaller), in C order."""
    shape, block_shape = tuple(int(s) for s in shape), tuple(int(b) for b in block_shape)
    if len(shape) != len(block_shape) or min(block_shape) < 1:
        raise ValueError(f"block shape {block_shape} does not fit a volume of shape {shape}")
    counts = [math.ceil(n / b) for n, b in zip(shape, block_shape, strict=True)]
    blocks = []
    for index, pos in enumerate(itertools.product(*(range(c) for c in counts))):
        start = tuple(p * b for p, b in zip(pos, block_shape, strict=True))
        stop = tuple(min(s + b, n) for s, b, n in zip(start, block_shape, shape, strict=True))
        blocks.append(Block(index, tuple(pos), start, stop))
    return blocks


def choose_block_shape(
    shape: Sequence[int],
    chunks: Sequence[int],
    memory_bytes: float,
    bytes_per_voxel: int,
    n_blocks: int | None = None,
    aspect: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """The largest chunk-aligned block within the memory budget (or splitting into about ``n_blocks``).

    Blocks grow by whole chunks, the shortest axis first, because a block that is a cube
    has the least halo per voxel and so the least recomputation. ``aspect`` (the prediction
    tile) measures "cube" in tiles rather than voxels: tiles straddling a block face are run
    once per block they feed, and with flat 3D tiles (32x128x128) a voxel cube cuts through
    four times as many tiles along y and x as a block shaped like the tile.
    """
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    per_axis = [math.ceil(n / c) for n, c in zip(shape, chunks, strict=True)]  # chunks per axis
    if n_blocks is not None:
        return _split_into(shape, chunks, per_axis, max(int(n_blocks), 1))
    budget = max(memory_bytes / (BLOCK_COPIES * bytes_per_voxel), 1)
    unit = tuple(aspect) if aspect else (1,) * len(shape)
    counts = [1] * len(shape)
    while True:
        candidates = [a for a in range(len(shape)) if counts[a] < per_axis[a]]
        candidates.sort(key=lambda a: counts[a] * chunks[a] / unit[a])
        grown = False
        for axis in candidates:
            trial = counts.copy()
            trial[axis] += 1
            if math.prod(min(t * c, n) for t, c, n in zip(trial, chunks, shape, strict=True)) <= budget:
                counts, grown = trial, True
                break
        if not grown:
            return tuple(min(k * c, n) for k, c, n in zip(counts, chunks, shape, strict=True))


def _split_into(shape: tuple[int, ...], chunks: tuple[int, ...], per_axis: list[int], n: int) -> tuple[int, ...]:
    """Chunk-aligned blocks, about ``n`` of them, cutting the longest axis (in chunks) first."""
    parts = [1] * len(shape)
    while math.prod(parts) < n:
        splittable = [a for a in range(len(shape)) if parts[a] < per_axis[a]]
        if not splittable:
            break
        axis = max(splittable, key=lambda a: per_axis[a] / parts[a])
        parts[axis] += 1
    return tuple(
        min(math.ceil(k / p) * c, s) for k, p, c, s in zip(per_axis, parts, chunks, shape, strict=True)
    )


def neighbours(blocks: Sequence[Block]) -> list[tuple[Block, Block, int]]:
    """Each pair of blocks sharing a face, as (lower, upper, axis)."""
    by_pos = {b.position: b for b in blocks}
    pairs = []
    for b in blocks:
        for axis in range(len(b.position)):
            pos = list(b.position)
            pos[axis] += 1
            if (upper := by_pos.get(tuple(pos))) is not None:
                pairs.append((b, upper, axis))
    return pairs


def merge_ids(ids: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Union-find over sparse ids: for each of the sorted ``ids``, the smallest id of its group.

    ``pairs`` (K, 2) are ids to be joined. Connected components of the pair graph give the
    groups in one call instead of a Python union-find loop over millions of ids.
    """
    ids = np.asarray(ids)
    if pairs.size == 0:
        return ids.copy()
    known = np.isin(pairs, ids).all(axis=1)  # halo-only ids never reach the output
    a = np.searchsorted(ids, pairs[known, 0])
    b = np.searchsorted(ids, pairs[known, 1])
    n = len(ids)
    graph = sparse.coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n))  # ids are sorted: the first index is the smallest id
    return ids[first[component]]
