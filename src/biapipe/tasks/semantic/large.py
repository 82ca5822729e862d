"""Semantic masks of a volume larger than memory, block by block, identical to the whole-volume result.

Masks are per-voxel decisions, except two steps with reach: the z median (read with a z halo
of half its size, so each block sees what the whole volume would) and the removal of small
components (components are labelled per block and joined where they touch across a face;
the same class on both sides of a face is exactly the adjacency that whole-volume labelling
uses). Scores are summed per-block confusion matrices, equal to the whole-volume figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ...core.errors import InputError
from ...data.blocks import Block, merge_ids, neighbours
from ...large.volumes import core_of, id_counts, id_scratch, merge_counts, root_sizes
from .metrics import confusion_matrix, metrics_from_confusion
from .postprocess import semantic_postprocess


def semantic_blocks(pred: Any, out: Any, blocks: Sequence[Block], scratch_path: str | Path,
                    threshold: float = 0.5, z_median: int = 0, min_size: int = 0) -> None:
    """Threshold/argmax ``pred`` ((Z)YXC) into ``out`` ((Z)YX) block by block, as
    :func:`semantic_postprocess` on the whole volume would."""
    shape = tuple(out.shape)
    halo = (z_median // 2, 0, 0) if len(shape) == 3 else (0, 0)
    comp = id_scratch(scratch_path, shape, out.chunks) if min_size > 0 else None
    sizes = []
    for block in blocks:
        grown = block.grown(halo, shape)
        mask = semantic_postprocess(np.asarray(pred[grown]), threshold, z_median, 0)[core_of(block, grown)]
        out[block.slices] = mask
        if comp is not None:
            ids = _components(mask, block.index * (math.prod(block.shape) + 1))
            comp[block.slices] = ids
            sizes.append(id_counts(ids))
    if comp is None:
        return
    ids, counts = merge_counts(sizes)
    pairs = _face_pairs(comp, out, blocks)
    roots = merge_ids(ids, pairs)
    small = root_sizes(roots, counts) < min_size
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


def _check_shapes(pred: Any, gt: Any) -> None:
    if tuple(pred.shape) != tuple(gt.shape):
        raise InputError(None, f"prediction of shape {tuple(pred.shape)} does not match ground truth of shape "
                               f"{tuple(gt.shape)}")


def semantic_metrics_blocks(pred: Any, gt: Any, n_classes: int, blocks: Sequence[Block],
                            gt_map: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None = None,
                            ) -> dict[str, float]:
    """The figures of :func:`biapipe.tasks.semantic.metrics.semantic_metrics` from summed per-block
    confusion matrices. ``gt_map`` turns a raw ground-truth block into (classes, ignore mask)."""
    _check_shapes(pred, gt)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for block in blocks:
        g = np.asarray(gt[block.slices])
        g, ignore = gt_map(g) if gt_map else (g, None)
        cm += confusion_matrix(np.asarray(pred[block.slices]), g, n_classes, ignore)
    return metrics_from_confusion(cm)
