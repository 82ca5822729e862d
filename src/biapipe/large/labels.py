"""Block-wise post-processing of a prediction Zarr: semantic masks and instance labels.

Semantic masks are per-voxel decisions, except two steps with reach: the z median (read
with a z halo of half its size, so each block sees what the whole volume would) and the
removal of small components (components are labelled per block and joined where they
touch across a face; the same class on both sides of a face is exactly the adjacency that
whole-volume labelling uses, so the result is identical).

Instance labels come from the usual watershed run on each block grown by a halo, so
objects near a face are segmented with context. Each block's ids are offset into a range
of their own (``block index * stride``), so block jobs never need to know each other. An
object cut by a face is then recognised from the halo: the labels a block gave to the
voxels just beyond its face are compared with the labels its neighbour gave the same
voxels; two ids covering mostly the same voxels there are one object and are joined by
union-find. Size filters and border clearing run after the merge, on whole objects; a
final pass relabels to 1..N.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from ..errors import ConfigError
from ..postprocess.instance import InstanceParams, THRESHOLD_CHANNELS, instance_postprocess, label_dtype
from ..postprocess.semantic import semantic_postprocess
from .blocks import Block, merge_ids, neighbours

#: Planes beyond a face compared between neighbouring blocks to decide which ids are one object.
SEAM_DEPTH = 4

#: IoU within the seam strip above which two ids are called one object. IoU rather than
#: "share of the smaller" because a sliver one labelling gives to a neighbouring object
#: would otherwise glue two objects together.
SEAM_IOU = 0.5


def _scratch(path: str | Path, shape: Sequence[int], chunks: Sequence[int]) -> zarr.Array:
    """Block-local ids before merging (uint64: every block owns its own id range)."""
    return zarr.create_array(store=str(path), shape=tuple(shape), dtype=np.uint64, chunks=tuple(chunks),
                             fill_value=0, overwrite=True)


def _crop(core: Block, grown: tuple[slice, ...]) -> tuple[slice, ...]:
    """The core of a block inside an array read over its ``grown`` region."""
    return tuple(slice(a - g.start, b - g.start) for a, b, g in zip(core.start, core.stop, grown, strict=True))


# --------------------------------------------------------------------------- semantic


def semantic_blocks(pred: Any, out: Any, blocks: Sequence[Block], scratch_path: str | Path,
                    threshold: float = 0.5, z_median: int = 0, min_size: int = 0) -> None:
    """Threshold/argmax ``pred`` ((Z)YXC) into ``out`` ((Z)YX) block by block, as
    :func:`semantic_postprocess` on the whole volume would."""
    shape = tuple(out.shape)
    halo = (z_median // 2, 0, 0) if len(shape) == 3 else (0, 0)
    comp = _scratch(scratch_path, shape, out.chunks) if min_size > 0 else None
    sizes = []
    for block in blocks:
        grown = block.grown(halo, shape)
        mask = semantic_postprocess(np.asarray(pred[grown]), threshold, z_median, 0)[_crop(block, grown)]
        out[block.slices] = mask
        if comp is not None:
            ids = _components(mask, block.index * (math.prod(block.shape) + 1))
            comp[block.slices] = ids
            sizes.append(_id_counts(ids))
    if comp is None:
        return
    ids, counts = _merge_counts(sizes)
    pairs = _face_pairs(comp, out, blocks)
    roots = merge_ids(ids, pairs)
    small = _root_sizes(roots, counts) < min_size
    doomed = ids[small]
    for block in blocks:
        mask = np.asarray(out[block.slices])
        mask[np.isin(np.asarray(comp[block.slices]), doomed)] = 0
        out[block.slices] = mask


def _components(mask: np.ndarray, offset: int) -> np.ndarray:
    """Face-connected components of every class > 0, numbered from ``offset + 1``."""
    ids = np.zeros(mask.shape, dtype=np.uint64)
    next_id = offset
    for k in np.unique(mask):
        if k == 0:
            continue
        comp, n = ndimage.label(mask == k)
        ids[comp > 0] = comp[comp > 0].astype(np.uint64) + np.uint64(next_id)
        next_id += n
    return ids


def _face_pairs(comp: Any, classes: Any, blocks: Sequence[Block]) -> np.ndarray:
    """Ids of components of the same class touching across each block face."""
    found = [np.zeros((0, 2), dtype=np.uint64)]
    for lower, upper, axis in neighbours(blocks):
        face = upper.start[axis]
        below, above = list(upper.slices), list(upper.slices)
        below[axis], above[axis] = slice(face - 1, face), slice(face, face + 1)
        below, above = tuple(below), tuple(above)
        a, b = np.asarray(comp[below]), np.asarray(comp[above])
        same = (a > 0) & (b > 0) & (np.asarray(classes[below]) == np.asarray(classes[above]))
        found.append(np.unique(np.stack([a[same], b[same]], axis=1), axis=0))
    return np.concatenate(found)


# --------------------------------------------------------------------------- instance


def block_params(params: InstanceParams) -> InstanceParams:
    """Per-block watershed settings: whole-object steps (sizes, border) wait for the merge."""
    for key in THRESHOLD_CHANNELS:
        if isinstance(getattr(params, key), str):
            raise ConfigError(f"postprocess.instance.{key}",
                              "'otsu' is computed per image and would differ from block to block in a large "
                              "volume; give a number (or tune thresholds on validation images)")
    return dataclasses.replace(params, min_size=0, max_size=0, clear_border=False)


def id_stride(blocks: Sequence[Block], halo: Sequence[int]) -> int:
    """Ids one block may use: more than the voxels of its grown region, so ranges never collide."""
    return max(math.prod(s + 2 * h for s, h in zip(b.shape, halo, strict=True)) for b in blocks) + 1


def instance_block(pred: Any, raw: Any, block: Block, halo: Sequence[int], stride: int, channels: Sequence[str],
                   params: InstanceParams, voxel_size: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Segment one block with its halo; write its core ids into ``raw`` and return what the merge
    needs: id sizes in the core, ids on the YX border and the labels of the seam strips."""
    shape = tuple(raw.shape)
    grown = block.grown(halo, shape)
    labels = instance_postprocess(np.asarray(pred[grown]), channels, block_params(params), voxel_size)
    offset = np.uint64(block.index * stride)
    ids = np.where(labels > 0, labels.astype(np.uint64) + offset, np.uint64(0))
    core = ids[_crop(block, grown)]
    raw[block.slices] = core
    record = {"ids_counts": _id_counts(core), "border": _yx_border_ids(core, block, shape)}
    for axis in range(len(shape)):
        for side in ("lo", "hi"):
            region = _seam_region(block, axis, side, halo, shape)
            if region is not None:
                local = tuple(slice(r.start - g.start, r.stop - g.start) for r, g in zip(region, grown, strict=True))
                record[f"seam_{axis}_{side}"] = ids[local]
                record[f"seam_{axis}_{side}_start"] = np.array([r.start for r in region])
    return record


def _seam_region(block: Block, axis: int, side: str, halo: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...] | None:
    """The voxels just beyond one face of the core (inside the neighbour), up to SEAM_DEPTH deep."""
    depth = min(int(halo[axis]), SEAM_DEPTH)
    if depth == 0:
        return None
    region = list(block.slices)
    if side == "lo" and block.start[axis] > 0:
        region[axis] = slice(max(block.start[axis] - depth, 0), block.start[axis])
    elif side == "hi" and block.stop[axis] < shape[axis]:
        region[axis] = slice(block.stop[axis], min(block.stop[axis] + depth, shape[axis]))
    else:
        return None
    return tuple(region)


def _yx_border_ids(core: np.ndarray, block: Block, shape: Sequence[int]) -> np.ndarray:
    """Ids touching the volume's Y or X border (clear_border ignores z, as the in-memory path does)."""
    found = [np.zeros(0, dtype=np.uint64)]
    for axis in range(len(shape) - 2, len(shape)):
        if block.start[axis] == 0:
            found.append(np.take(core, 0, axis=axis).ravel())
        if block.stop[axis] == shape[axis]:
            found.append(np.take(core, -1, axis=axis).ravel())
    ids = np.unique(np.concatenate(found))
    return ids[ids > 0]


def seam_pairs(raw: Any, records: dict[int, dict[str, np.ndarray]]) -> np.ndarray:
    """Id pairs that are one object: a block's halo labels against its neighbour's core labels."""
    found = [np.zeros((0, 2), dtype=np.uint64)]
    for rec in records.values():
        for key in [k for k in rec if k.startswith("seam_") and not k.endswith("_start")]:
            strip, start = rec[key], rec[f"{key}_start"]
            region = tuple(slice(int(s), int(s) + n) for s, n in zip(start, strip.shape, strict=True))
            found.append(_overlapping(strip, np.asarray(raw[region])))
    return np.concatenate(found)


def _overlapping(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs (a id, b id) whose voxels in the strip overlap with IoU above SEAM_IOU."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), dtype=np.uint64)
    pairs, shared = np.unique(np.stack([a[both], b[both]], axis=1), axis=0, return_counts=True)
    ida, na = np.unique(a[a > 0], return_counts=True)
    idb, nb = np.unique(b[b > 0], return_counts=True)
    union = na[np.searchsorted(ida, pairs[:, 0])] + nb[np.searchsorted(idb, pairs[:, 1])] - shared
    return pairs[shared > SEAM_IOU * union]


def instance_merge(raw: Any, out: Any, blocks: Sequence[Block], records: dict[int, dict[str, np.ndarray]],
                   params: InstanceParams) -> int:
    """Join ids across seams, apply size filters and border clearing to whole objects, and
    write consecutive labels 1..N into ``out``; returns N."""
    ids, counts = _merge_counts([rec["ids_counts"] for rec in records.values()])
    roots = merge_ids(ids, seam_pairs(raw, records))
    unique_roots, inverse = np.unique(roots, return_inverse=True)
    size = np.bincount(inverse, weights=counts).astype(np.int64)
    keep = np.ones(len(unique_roots), dtype=bool)
    if params.min_size > 0:
        keep &= size >= params.min_size
    if params.max_size > 0:
        keep &= size <= params.max_size
    if params.clear_border:
        border = np.concatenate([rec["border"] for rec in records.values()] + [np.zeros(0, np.uint64)])
        if border.size:
            keep[np.unique(inverse[np.searchsorted(ids, border)])] = False
    final = np.zeros(len(unique_roots), dtype=np.int64)
    final[keep] = np.arange(1, int(keep.sum()) + 1)
    lut = final[inverse]  # per sorted id
    for block in blocks:
        core = np.asarray(raw[block.slices])
        labels = np.zeros(core.shape, dtype=out.dtype)
        nz = core > 0
        labels[nz] = lut[np.searchsorted(ids, core[nz])]
        out[block.slices] = labels
    return int(keep.sum())


# --------------------------------------------------------------------------- counting


def _id_counts(ids: np.ndarray) -> np.ndarray:
    """(2, K) array: the ids > 0 present in ``ids`` and their voxel counts."""
    values, counts = np.unique(ids[ids > 0], return_counts=True)
    return np.stack([values.astype(np.uint64), counts.astype(np.uint64)])


def _merge_counts(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids and summed counts from per-block (2, K) tables (an id may span blocks)."""
    table = np.concatenate([np.zeros((2, 0), np.uint64), *parts], axis=1)
    ids, inverse = np.unique(table[0], return_inverse=True)
    return ids, np.bincount(inverse, weights=table[1].astype(np.float64)).astype(np.int64)


def _root_sizes(roots: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per id, the size of the whole object (the group) it belongs to."""
    unique_roots, inverse = np.unique(roots, return_inverse=True)
    return np.bincount(inverse, weights=counts).astype(np.int64)[inverse]


def final_label_dtype(n_objects: int) -> np.dtype:
    return label_dtype(n_objects)
