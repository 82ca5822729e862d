"""Block-wise tiled prediction written straight into a Zarr store.

The tile grid, blend windows and weight sums are those of :func:`biapipe.inference.tiling.run_tiled`
over the *whole* volume; a block only selects the tiles that give weight to its voxels and
normalises with its slice of the global weight sums. So every voxel receives exactly the
same weighted tile predictions, in the same order, as whole-volume prediction: the result
is identical away from float rounding (batches may group tiles differently), not merely
"seamless". Tiles straddling a block face are computed once per block they feed; with
chunk-aligned blocks much larger than a tile that costs a few percent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..core.errors import ConfigError
from ..core.progress import Progress
from ..data.blocks import Block, block_grid, choose_block_shape
from ..inference.tiling import (
    DEFAULT_TRIM,
    BatchFn,
    TileGrid,
    TileWindows,
    accumulate,
    axis_windows,
    normalise,
    read_tile,
    tile_grid,
    weight_sums_1d,
)


class BlockPredictor:
    """The global tile plan of one volume, from which any block can be predicted alone."""

    def __init__(self, image: Any, fn: BatchFn, tile_shape: Sequence[int], overlap: float = 0.25,
                 blend: str = "gaussian", batch_size: int = 4, divisor: int | Sequence[int] = 1,
                 trim: float = DEFAULT_TRIM) -> None:
        self.image, self.fn, self.batch_size = image, fn, batch_size
        self.grid: TileGrid = tile_grid(image.shape[:-1], tile_shape, overlap, divisor)
        self.windows = axis_windows(self.grid, blend, trim)
        self.sums = weight_sums_1d(self.grid, self.windows)
        self.tile_window = TileWindows(self.windows)
        self.tiles_run = 0

    def tiles_for(self, block: Block) -> list[tuple[int, ...]]:
        """Tiles that give some voxel of ``block`` a non-zero weight, in the grid's own order."""
        per_axis = []
        for axis, (lo, hi) in enumerate(zip(block.start, block.stop, strict=True)):
            t = self.grid.tile[axis]
            starts = [s for s in self.grid.starts[axis]
                      if s < hi and s + t > lo and self.windows[axis][s][max(lo - s, 0):hi - s].any()]
            per_axis.append(starts)
        return list(itertools.product(*per_axis))

    def predict(self, block: Block) -> np.ndarray:
        """The blended (Z)YXC float32 prediction of the block's core region."""
        out: np.ndarray | None = None
        tiles = self.tiles_for(block)
        for i in range(0, len(tiles), self.batch_size):
            starts = tiles[i:i + self.batch_size]
            batch = np.stack([read_tile(self.image, s, self.grid.tile) for s in starts])
            pred = np.asarray(self.fn(batch), dtype=np.float32)
            if out is None:
                out = np.zeros(block.shape + pred.shape[-1:], dtype=np.float32)
            for s, p in zip(starts, pred, strict=True):
                local = tuple(a - b for a, b in zip(s, block.start, strict=True))
                accumulate(out, p, local, self.tile_window(s, p.shape[-1]))
            self.tiles_run += len(starts)
        assert out is not None, "every block has at least one tile with weight"
        normalise(out, [s[a:b] for s, a, b in zip(self.sums, block.start, block.stop, strict=True)])
        return out


def prediction_chunks(shape: Sequence[int], ndim: int, edge: Sequence[int] | None = None) -> tuple[int, ...]:
    """Output chunks of a (Z)YXC prediction: ~1 MiB spatial chunks (or ``edge``, the config's
    ``predict.chunks``), all channels together."""
    edge = tuple(edge) if edge else ((32, 128, 128) if ndim == 3 else (512, 512))
    if len(edge) != ndim:
        raise ConfigError("predict.chunks", f"has {len(edge)} entries for a {ndim}D image")
    return tuple(min(s, e) for s, e in zip(shape[:-1], edge, strict=True)) + (int(shape[-1]),)


def create_prediction_store(path: str | Path, shape: Sequence[int], chunks: Sequence[int],
                            attrs: dict[str, Any] | None = None) -> zarr.Array:
    """An empty float32 (Z)YXC Zarr (v3) that blocks are written into, chunk-aligned."""
    arr = zarr.create_array(store=str(path), shape=tuple(shape), dtype=np.float32, chunks=tuple(chunks),
                            fill_value=0.0, overwrite=True)
    arr.attrs.update({"axes": "ZYXC"[4 - len(shape):], **(attrs or {})})
    return arr


def plan_blocks(shape: Sequence[int], chunks: Sequence[int], in_channels: int, out_channels: int,
                memory_gb: float, split: int | str | None = None, tile: Sequence[int] | None = None) -> list[Block]:
    """Blocks of a (Z)YX volume: chunk-aligned, within ``memory_gb`` (or about ``split`` blocks),
    shaped like the prediction ``tile`` when one is given."""
    bytes_per_voxel = 4 * (in_channels + out_channels)
    n_blocks = None if split in (None, "auto") else int(split)
    block_shape = choose_block_shape(shape, chunks, memory_gb * 2**30, bytes_per_voxel, aspect=tile)
    if n_blocks is not None:  # an explicit split, unless its blocks would exceed the memory budget
        split_shape = choose_block_shape(shape, chunks, memory_gb * 2**30, bytes_per_voxel, n_blocks)
        if math.prod(split_shape) <= math.prod(block_shape):
            block_shape = split_shape
    return block_grid(shape, block_shape)


def predict_into(predictor: BlockPredictor, out: zarr.Array, blocks: Sequence[Block],
                 progress: Progress | None = None) -> None:
    """Predict ``blocks`` and write each into ``out``; memory is one block at a time. A
    ``progress`` logs a line per block (share done, time left)."""
    for block in blocks:
        out[block.slices] = predictor.predict(block)
        if progress is not None:
            progress.step(f"(block {block.index}, voxels {_extent(block)})")


def _extent(block: Block) -> str:
    return " x ".join(f"{a}:{b}" for a, b in zip(block.start, block.stop, strict=True))
