"""Instance labels of a volume larger than memory: watershed per block, objects merged at the seams.

Labels come from the usual watershed run on each block grown by a halo, so objects near a
face are segmented with context. Each block's ids are offset into a range of their own
(``block index * stride``), so block jobs never need to know each other. An object cut by a
face is then recognised from the halo: the labels a block gave to the voxels just beyond its
face are compared with the labels its neighbour gave the same voxels; two ids covering
mostly the same voxels there are one object and are joined by union-find. Size filters and
border clearing run after the merge, on whole objects; a final pass relabels to 1..N.
Scores come from the object overlap table summed block by block.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ...core import imageio
from ...core.errors import ConfigError, InputError
from ...data.blocks import Block, merge_ids
from ...large.plan import halo, plan_for_shape, postprocess_plan
from ...large.predict import prediction_chunks
from ...large.volumes import core_of, id_counts, merge_counts
from .metrics import DEFAULT_IOU_THRESHOLDS, Overlap, matching_from_overlap
from .postprocess import THRESHOLD_CHANNELS, InstanceParams, instance_postprocess

#: Planes beyond a face compared between neighbouring blocks to decide which ids are one object.
SEAM_DEPTH = 4

#: IoU within the seam strip above which two ids are called one object. IoU rather than
#: "share of the smaller" because a sliver one labelling gives to a neighbouring object
#: would otherwise glue two objects together.
SEAM_IOU = 0.5

#: Partial pair tables are reduced once they hold this many rows, bounding memory.
REDUCE_ROWS = 1 << 22


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
    maps = np.asarray(pred[grown])[..., :len(channels)]  # class channels (if any) are voted on after the merge
    labels = instance_postprocess(maps, channels, block_params(params), voxel_size)
    offset = np.uint64(block.index * stride)
    ids = np.where(labels > 0, labels.astype(np.uint64) + offset, np.uint64(0))
    core = ids[core_of(block, grown)]
    raw[block.slices] = core
    record = {"ids_counts": id_counts(core), "border": _yx_border_ids(core, block, shape)}
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
    ids, counts = merge_counts([rec["ids_counts"] for rec in records.values()])
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


# --------------------------------------------------------------------------- scores


def check_shapes(pred: Any, gt: Any) -> None:
    """A block-wise output and its ground truth cover the same grid (else blocks would crop one)."""
    if tuple(pred.shape) != tuple(gt.shape):
        raise InputError(None, f"prediction of shape {tuple(pred.shape)} does not match ground truth of shape "
                               f"{tuple(gt.shape)}")


class OverlapAccumulator:
    """Object sizes and pair intersections summed over blocks; ``result()`` is the Overlap of the whole."""

    def __init__(self) -> None:
        self.gt: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []
        self.rows = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        gt, pred = np.asarray(gt).astype(np.uint64), np.asarray(pred).astype(np.uint64)
        self.gt.append(value_counts(gt[gt > 0]))
        self.pred.append(value_counts(pred[pred > 0]))
        both = (gt > 0) & (pred > 0)
        self.pairs.append(value_counts((gt[both] << np.uint64(32)) | pred[both]))
        self.rows += sum(p.shape[1] for p in (self.gt[-1], self.pred[-1], self.pairs[-1]))
        if self.rows > REDUCE_ROWS:
            self.gt, self.pred, self.pairs = [reduce_counts(self.gt)], [reduce_counts(self.pred)], [reduce_counts(self.pairs)]
            self.rows = sum(p.shape[1] for p in (*self.gt, *self.pred, *self.pairs))

    def result(self) -> Overlap:
        gt_ids, gt_areas = reduce_counts(self.gt)
        pred_ids, pred_areas = reduce_counts(self.pred)
        keys, inter = reduce_counts(self.pairs)
        g, p = keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)
        return Overlap(gt_ids, pred_ids, gt_areas.astype(np.int64), pred_areas.astype(np.int64),
                       np.searchsorted(gt_ids, g).astype(np.int64), np.searchsorted(pred_ids, p).astype(np.int64),
                       inter.astype(np.int64))


def value_counts(values: np.ndarray) -> np.ndarray:
    """2×K table of the distinct values (uint64) and how often each occurs."""
    ids, n = np.unique(values, return_counts=True)
    return np.stack([ids, n.astype(np.uint64)])


def reduce_counts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The tables of :func:`value_counts` summed into one (a value's counts add up)."""
    table = np.concatenate([np.zeros((2, 0), np.uint64), *parts], axis=1)
    ids, inverse = np.unique(table[0], return_inverse=True)
    sums = np.bincount(inverse, weights=table[1].astype(np.float64)).astype(np.uint64)
    return np.stack([ids, sums])


def instance_metrics_blocks(pred: Any, gt: Any, blocks: Sequence[Block],
                            thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
                            gt_map: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """The figures of :func:`biapipe.tasks.instance.metrics.matching_metrics`, accumulated block by block
    (ids must be below 2**32, which uint32 label images guarantee)."""
    check_shapes(pred, gt)
    acc = OverlapAccumulator()
    for block in blocks:
        g = np.asarray(gt[block.slices])
        acc.add(gt_map(g) if gt_map else g, np.asarray(pred[block.slices]))
    return matching_from_overlap(acc.result(), thresholds)


# --------------------------------------------------------------------------- jobs


def segment_all_blocks(pred: Any, out: Any, blocks: Sequence[Block], work: Path, pcfg: dict[str, Any],
                       channels: Sequence[str], params: InstanceParams, voxel_size: Sequence[float] | None) -> int:
    """One job: every block's watershed into a scratch id store, then the seam merge into ``out``."""
    h = halo(pcfg, len(out.shape))
    raw = zarr.create_array(store=str(work / "raw.zarr"), shape=out.shape, dtype=np.uint64, chunks=out.chunks,
                            fill_value=0)
    stride = id_stride(blocks, h)
    records = {b.index: instance_block(pred, raw, b, h, stride, channels, params, voxel_size) for b in blocks}
    return instance_merge(raw, out, blocks, records, params)


def merge_segmented(out: Any, blocks: Sequence[Block], segmented: tuple[str, list[str]],
                    params: InstanceParams) -> int:
    """The seam merge of blocks segmented by separate jobs: (raw-id store, per-block records in block order)."""
    raw_store, record_files = segmented
    records = {i: dict(np.load(f)) for i, f in enumerate(record_files)}
    return instance_merge(zarr.open_array(str(raw_store), mode="r"), out, blocks, records, params)


def segment_block_ids(image_shape: Sequence[int], out_channels: int, pcfg: dict[str, Any]) -> list[int]:
    """The segmentation blocks of a large image, from its (Z)YXC shape (one job each)."""
    out_shape, _ = plan_for_shape(image_shape, out_channels, pcfg)
    chunks = prediction_chunks(out_shape, len(out_shape) - 1, pcfg["chunks"])
    return [b.index for b in postprocess_plan(out_shape, chunks, pcfg)]


def create_raw_labels(pred_zarr: str | Path, raw_store: str | Path) -> None:
    """The empty store of block-local instance ids that segmentation block jobs fill."""
    pred = zarr.open_array(str(pred_zarr), mode="r")
    with imageio.atomic_path(raw_store) as tmp:
        zarr.create_array(store=str(tmp), shape=pred.shape[:-1], dtype=np.uint64, chunks=pred.chunks[:-1], fill_value=0)


def segment_block_job(pred_zarr: str | Path, raw_store: str | Path, block_id: int, record_npz: str | Path,
                      pcfg: dict[str, Any], channels: Sequence[str], params: InstanceParams,
                      voxel_size: Sequence[float] | None) -> None:
    """Segment one block (with its halo) into the shared raw-id store; what the seam merge needs
    of it (id sizes, border ids, seam strips) goes to ``record_npz``."""
    pred = zarr.open_array(str(pred_zarr), mode="r")
    raw = zarr.open_array(str(raw_store), mode="r+")
    blocks = postprocess_plan(pred.shape, pred.chunks, pcfg)
    h = halo(pcfg, len(raw.shape))
    record = instance_block(pred, raw, blocks[int(block_id)], h, id_stride(blocks, h), channels, params, voxel_size)
    with imageio.atomic_path(record_npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **record)
