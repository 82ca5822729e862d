"""A class per object in volumes larger than memory: the majorities of :mod:`.classes`, counted
block by block.

A vote is a count of (object id, class) pixels. Counts over disjoint blocks add up, so the
majority taken from the sums is the whole volume's, while one block is in memory. Ids stay
sparse (a label volume's ids need not be consecutive, nor small) and the tables are reduced
as they grow, as :class:`.large.OverlapAccumulator` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...core import imageio
from ...core.errors import InputError
from ...data.blocks import Block
from ...large.volumes import label_volume
from .classes import check_class_values, check_classed, class_matching_overlap
from .large import REDUCE_ROWS, OverlapAccumulator, check_shapes, reduce_counts, value_counts
from .metrics import matching_from_overlap


class ClassVotes:
    """(object id, class) pixel counts summed over blocks; ``majority()`` gives each object's class."""

    def __init__(self, n_classes: int) -> None:
        self.n = np.uint64(n_classes)
        self.votes: list[np.ndarray] = []
        self.present: list[np.ndarray] = []
        self.rows = 0

    def add(self, labels: np.ndarray, classes: np.ndarray) -> None:
        """One block: its labels and, on the same grid, a class 1..N per pixel (0: none)."""
        labels, classes = np.asarray(labels).astype(np.uint64), np.asarray(classes)
        self.present.append(value_counts(labels[labels > 0]))
        inside = (labels > 0) & (classes > 0)
        self.votes.append(value_counts(labels[inside] * self.n + (classes[inside].astype(np.uint64) - np.uint64(1))))
        self.rows += self.present[-1].shape[1] + self.votes[-1].shape[1]
        if self.rows > REDUCE_ROWS:
            self.present, self.votes = [reduce_counts(self.present)], [reduce_counts(self.votes)]
            self.rows = self.present[0].shape[1] + self.votes[0].shape[1]

    def majority(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids of every object seen, sorted; the class most of its pixels have, ties to the lower
        class, 0 for an object without any class pixel)."""
        ids = reduce_counts(self.present)[0]
        keys, counts = reduce_counts(self.votes)
        obj, cls = keys // self.n, (keys % self.n).astype(np.int64) + 1
        order = np.lexsort((cls, -counts.astype(np.int64), obj))
        obj, cls = obj[order], cls[order]
        first = np.r_[True, obj[1:] != obj[:-1]] if obj.size else np.zeros(0, bool)
        out = np.zeros(len(ids), dtype=np.int64)
        out[np.searchsorted(ids, obj[first])] = cls[first]
        return ids, out


def lookup(ids: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each pixel's class from a sparse table (sorted ``ids`` -> ``classes``); 0 where the label
    is 0 or an id the table does not hold."""
    labels = np.asarray(labels).astype(np.uint64)
    if ids.size == 0:
        return np.zeros(labels.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ids, labels), len(ids) - 1)
    return np.where((ids[pos] == labels) & (labels > 0), classes[pos], 0)


def true_class_table(labels: Any, classes: Any, blocks: Sequence[Block], n_classes: int,
                     label_path: str | Path, class_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Each true object's class (sorted ids, classes) from a label volume and its class image,
    both read block by block; a value that is no label or no class, or an object without a
    class pixel, stops naming the file (as :func:`.classes.object_classes` does for a whole image)."""
    votes = ClassVotes(n_classes)
    for block in blocks:
        votes.add(_labels(labels[block.slices], label_path), _classes(classes[block.slices], n_classes, class_path))
    ids, found = votes.majority()
    check_classed(ids[found == 0], n_classes, class_path)
    return ids, found


def _labels(block: Any, path: str | Path) -> np.ndarray:
    """A block of a label file as non-negative integer ids, or an error naming it."""
    ids = imageio.label_values(np.asarray(block), path)
    if ids.size and ids.dtype.kind == "i" and int(ids.min()) < 0:
        raise InputError(path, f"label image has negative values (min {int(ids.min())})")
    return ids


def _classes(block: Any, n_classes: int, path: str | Path) -> np.ndarray:
    """A block of a class image (or class map) checked like a whole one."""
    return check_class_values(imageio.label_values(np.asarray(block), path), n_classes, path)


def vote_blocks(labels: Any, prediction: Any, blocks: Sequence[Block], first: int,
                n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each predicted object's class: the majority of its pixels' most probable class, from the
    (Z)YXC ``prediction`` whose channels ``first``.. are the class probabilities."""
    votes = ClassVotes(n_classes)
    for block in blocks:
        probs = np.asarray(prediction[block.slices])[..., first:first + n_classes]
        votes.add(labels[block.slices], np.argmax(probs, axis=-1) + 1)
    return votes.majority()


def write_class_volume(path: str | Path, labels: Any, blocks: Sequence[Block], table: tuple[np.ndarray, np.ndarray],
                       voxel_size: Sequence[float] | None) -> None:
    """The class map of a label volume (each object's pixels hold its class), block by block."""
    dtype = np.uint8 if int(table[1].max(initial=0)) < 256 else np.uint16
    with label_volume(path, labels.shape, dtype, labels.chunks, voxel_size) as (out, _):
        for block in blocks:
            out[block.slices] = lookup(*table, labels[block.slices]).astype(dtype)


def classed_metrics_blocks(pred: Any, gt: Any, pred_classes: Any, true_classes: Any, blocks: Sequence[Block],
                           thresholds: Sequence[float], n_classes: int,
                           paths: tuple[str | Path, str | Path, str | Path]) -> dict[str, float]:
    """Matching figures and per-class figures of a block-wise output in one pass over the blocks:
    the figures :meth:`InstanceTask.evaluate` gives a whole image. ``pred_classes`` is the
    output's class map, ``true_classes`` the class image of ``gt``; ``paths`` = (ground truth,
    class map, class image), named by errors."""
    check_shapes(pred, gt)
    label_path, map_path, class_path = paths
    overlap = OverlapAccumulator()
    predicted, truth = ClassVotes(n_classes), ClassVotes(n_classes)
    for block in blocks:
        p = np.asarray(pred[block.slices])
        g = _labels(gt[block.slices], label_path).astype(np.uint32, copy=False)
        overlap.add(g, p)
        predicted.add(p, _classes(pred_classes[block.slices], n_classes, map_path))
        truth.add(g, _classes(true_classes[block.slices], n_classes, class_path))
    ov = overlap.result()
    gt_ids, gt_cls = truth.majority()
    check_classed(gt_ids[gt_cls == 0], n_classes, class_path)
    row = matching_from_overlap(ov, thresholds)
    row.update(class_matching_overlap(ov, lookup(*predicted.majority(), ov.pred_ids),
                                      lookup(gt_ids, gt_cls, ov.gt_ids), n_classes))
    return row
