"""Block plans of large volumes, from headers alone: which images go block by block, how the
blocks are cut. No torch: the workflow plans block jobs when it parses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..core.errors import ConfigError
from ..data.blocks import Block
from .predict import plan_blocks, prediction_chunks

#: float32-sized working arrays per voxel that block-wise post-processing budgets for.
WATERSHED_TEMPORARIES = 16


def is_large(shape: Sequence[int], image_id: str, pcfg: dict[str, Any]) -> bool:
    """Whether an image takes the block-wise path: listed by name, or over ``large_voxels``."""
    if image_id in pcfg["large_images"]:
        return True
    threshold = int(pcfg["large_voxels"])
    return threshold > 0 and math.prod(shape) >= threshold


def whole_image_bytes(shape: Sequence[int], dtype: Any, out_channels: int, postprocess_per_voxel: int) -> int:
    """About what predicting and post-processing an image of canonical (Z)YXC ``shape`` whole holds
    in memory: the raw and normalized image, the blended prediction and its written copy, and
    post-processing's temporaries."""
    voxels = math.prod(int(s) for s in shape[:-1])
    channels = int(shape[-1])
    per_voxel = channels * (np.dtype(dtype).itemsize + 4) + 8 * int(out_channels) + int(postprocess_per_voxel)
    return voxels * per_voxel


def memory_bytes(pcfg: dict[str, Any]) -> float:
    return float(pcfg["memory_gb"]) * 2**30


def halo(pcfg: dict[str, Any], ndim: int) -> tuple[int, ...]:
    value = pcfg["halo"]
    values = [value] * ndim if isinstance(value, int) else list(value)
    if len(values) != ndim:
        raise ConfigError("predict.halo", f"has {len(values)} entries for a {ndim}D image")
    return tuple(int(v) for v in values)


def plan_for_shape(shape: Sequence[int], out_channels: int, pcfg: dict[str, Any]) -> tuple[tuple[int, ...], list[Block]]:
    """Output shape (Z)YXC and the chunk-aligned blocks of an input of canonical (Z)YXC
    ``shape``; from a header alone, so the workflow knows the block jobs when it builds the DAG."""
    shape = tuple(int(s) for s in shape)
    out_shape = shape[:-1] + (int(out_channels),)
    chunks = prediction_chunks(out_shape, len(shape) - 1, pcfg["chunks"])
    tile = pcfg["tile_size"]
    blocks = plan_blocks(out_shape[:-1], chunks[:-1], shape[-1], out_shape[-1], memory_bytes(pcfg) / 2**30,
                         pcfg["split"], tile if len(tile) == len(shape) - 1 else None)
    return out_shape, blocks


def postprocess_plan(pred_shape: Sequence[int], pred_chunks: Sequence[int], pcfg: dict[str, Any]) -> list[Block]:
    """Blocks of block-wise segmentation: the watershed holds about a dozen float/int
    temporaries per voxel besides the prediction, so they are smaller than prediction blocks."""
    return plan_blocks(tuple(pred_shape[:-1]), tuple(pred_chunks[:-1]), int(pred_shape[-1]), WATERSHED_TEMPORARIES,
                       memory_bytes(pcfg) / 2**30)


def is_block_prediction(pred_zarr: str | Path) -> bool:
    """Whether a prediction store was written block by block (large image): its attrs say so."""
    return "blocks" in zarr.open_array(str(pred_zarr), mode="r").attrs
