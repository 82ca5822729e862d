"""Detection post-processing: per-class score maps -> a table of scored points.

Peaks are local maxima of each channel above a threshold: a fixed number, Otsu's
threshold of that channel, or a value tuned on validation images to maximise F1
(:func:`tune_detection_threshold`). They are found as ``skimage.feature.peak_local_max``
finds them, but one per plateau (:func:`find_peaks`). Then points closer than a
physical radius are suppressed, the strongest one surviving. The peak finder's
``min_distance`` works in pixels and as a square (cube) window; the suppression works
in physical units with a Euclidean ball, which is what an anisotropic volume needs.
By default suppression also acts across classes, so a cell whose score is split over
two class channels yields one point (the class with the higher score), not two.

Thresholding commutes with both peak finding and suppression (a point is only ever
removed by a stronger one, and a plateau has one value), so tuning finds the candidate
points once at the lowest threshold and re-scores them for every threshold instead of
re-running everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu

from ...core.config import defaults
from ...core.errors import ConfigError
from ...core.tables import ratio
from .metrics import match_points
from .points import PointSet

#: Thresholds tried by tune_detection_threshold.
TUNING_GRID: tuple[float, ...] = tuple(round(0.025 * k, 3) for k in range(2, 39))


@dataclass(frozen=True)
class DetectionParams:
    """The ``postprocess.detection`` section, ready to use."""

    threshold: float | str
    min_distance: int
    suppression_radius: float
    suppress_across_classes: bool

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> DetectionParams:
        threshold = section["threshold"]
        if isinstance(threshold, str) and threshold not in ("otsu", "tuned"):
            raise ConfigError("postprocess.detection.threshold", f"'{threshold}' is not a number, otsu or tuned")
        return cls(
            threshold=threshold if isinstance(threshold, str) else float(threshold),
            min_distance=int(section["min_distance"]),
            suppression_radius=float(section["suppression_radius"]),
            suppress_across_classes=bool(section["suppress_across_classes"]),
        )

    @classmethod
    def defaults(cls, **overrides: Any) -> DetectionParams:
        """The schema's ``postprocess.detection`` with ``overrides`` (for callers without a config)."""
        return cls.from_config(defaults("postprocess.detection", **overrides))


# --------------------------------------------------------------------------- peaks


def channel_threshold(channel: np.ndarray, threshold: float | str) -> float:
    """A number as is, or Otsu's threshold of the channel (inf when the channel is flat)."""
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ConfigError("postprocess.detection.threshold", f"'{threshold}' must be resolved before use")
        if not np.isfinite(channel).all() or float(channel.max()) <= float(channel.min()):
            return float("inf")
        return float(threshold_otsu(channel))
    return float(threshold)


def find_peaks(channel: np.ndarray, threshold: float, min_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima strictly above ``threshold``, more than ``min_distance`` pixels apart (Chebyshev).

    The same rule as ``skimage.feature.peak_local_max`` (a pixel equal to the maximum of its
    (2 min_distance + 1) window, the weaker of two close peaks dropped), except on plateaus:
    a saturated sigmoid gives flat tops, where peak_local_max returns several pixels of one
    top; here each connected plateau of local maxima gives one point, its centre of mass
    (sub-pixel). Peaks at the image border are kept: a cell cut by the border is a cell.
    Returns (N, ndim) float coordinates and their scores.
    """
    channel = np.asarray(channel, dtype=np.float32)
    empty = np.zeros((0, channel.ndim), dtype=np.float64), np.zeros(0, dtype=np.float64)
    if not np.isfinite(threshold) or channel.size == 0 or float(channel.max()) <= threshold:
        return empty
    window = 2 * max(1, int(min_distance)) + 1
    peaks = (channel == ndimage.maximum_filter(channel, size=window, mode="nearest")) & (channel > threshold)
    plateaus, n = ndimage.label(peaks, structure=np.ones((3,) * channel.ndim, dtype=bool))
    if n == 0:
        return empty
    coords, scores = _plateau_centres(channel, peaks, plateaus, n)
    keep = suppress_close_points(coords, scores, float(max(1, int(min_distance))), p=np.inf)
    return coords[keep], scores[keep]


def _plateau_centres(channel: np.ndarray, peaks: np.ndarray, plateaus: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass and value of each numbered plateau, from its pixels only (no image-wide sort)."""
    where = np.nonzero(peaks)
    ids = plateaus[where]
    size = np.bincount(ids, minlength=n + 1)[1:].astype(np.float64)
    coords = np.stack([np.bincount(ids, weights=w, minlength=n + 1)[1:] / size for w in where], axis=1)
    scores = np.zeros(n + 1, dtype=np.float64)
    scores[ids] = channel[where]  # every pixel of a plateau has the same value
    return coords, scores[1:]


def suppress_close_points(coords: np.ndarray, scores: np.ndarray, radius: float,
                          voxel_size: Sequence[float] | None = None, p: float = 2.0) -> np.ndarray:
    """Boolean mask of the points kept when, of any two closer than ``radius`` (physical
    units, pairs at exactly ``radius`` count as close; ``p`` is the Minkowski norm, 2 =
    Euclidean), only the stronger may stay.

    Greedy in descending score (ties: lower index first): a point is dropped only by a
    stronger point that is itself kept, as in non-maximum suppression. The candidate pairs
    come from a KD-tree, so the cost grows with the number of close pairs, not N².
    """
    n = len(coords)
    keep = np.ones(n, dtype=bool)
    if n < 2 or radius <= 0:
        return keep
    tree = cKDTree(physical(coords, voxel_size))
    pairs = tree.query_pairs(radius * (1 + 1e-9), p=p, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    graph = sparse.coo_matrix((np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    graph = (graph + graph.T).tocsr()
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64)))
    has_neighbour = np.diff(graph.indptr) > 0
    indptr, indices = graph.indptr, graph.indices
    for i in order[has_neighbour[order]]:
        if keep[i]:  # i survived, so its stronger neighbours are gone; drop the weaker ones
            keep[indices[indptr[i]:indptr[i + 1]]] = False
            keep[i] = True
    return keep


def physical(coords: np.ndarray, voxel_size: Sequence[float] | None) -> np.ndarray:
    """Pixel coordinates scaled to physical units (unchanged without a voxel size)."""
    coords = np.asarray(coords, dtype=np.float64)
    return coords if voxel_size is None else coords * np.asarray(voxel_size, dtype=np.float64)


def detect_points(prediction: np.ndarray, params: DetectionParams,
                  voxel_size: Sequence[float] | None = None) -> PointSet:
    """(Z)YXC score maps -> points with score and class (channel index), sorted by position.

    ``params.threshold`` must be a number or "otsu" ("tuned" is resolved by the task).
    """
    prediction = np.asarray(prediction)
    ndim = prediction.ndim - 1
    all_coords, all_scores, all_classes = [], [], []
    for k in range(prediction.shape[-1]):
        channel = prediction[..., k]
        coords, scores = find_peaks(channel, channel_threshold(channel, params.threshold), params.min_distance)
        all_coords.append(coords)
        all_scores.append(scores)
        all_classes.append(np.full(len(scores), k, dtype=np.int64))
    points = PointSet(np.concatenate(all_coords).reshape(-1, ndim), np.concatenate(all_classes),
                      tuple(prediction.shape[:-1]), np.concatenate(all_scores))
    return sort_points(suppress(points, params, voxel_size))


def suppress(points: PointSet, params: DetectionParams, voxel_size: Sequence[float] | None) -> PointSet:
    """Apply close-point suppression across classes or within each class."""
    if params.suppression_radius <= 0 or len(points) < 2:
        return points
    if params.suppress_across_classes:
        return points.subset(suppress_close_points(points.coords, points.scores, params.suppression_radius,
                                                   voxel_size))
    keep = np.zeros(len(points), dtype=bool)
    for k in np.unique(points.classes):
        idx = np.flatnonzero(points.classes == k)
        keep[idx] = suppress_close_points(points.coords[idx], points.scores[idx], params.suppression_radius,
                                          voxel_size)
    return points.subset(keep)


def sort_points(points: PointSet) -> PointSet:
    """Order by (Z)YX then class: outputs do not depend on channel or peak-finder order."""
    if len(points) == 0:
        return points
    keys = [points.classes] + [points.coords[:, a] for a in range(points.ndim - 1, -1, -1)]
    return points.subset(np.lexsort(keys))


# --------------------------------------------------------------------------- tuning


def tune_detection_threshold(pred_arrays: Sequence[np.ndarray], point_sets: Sequence[PointSet],
                             cfg: dict[str, Any], grid: Sequence[float] = TUNING_GRID) -> dict[str, Any]:
    """The peak threshold that maximises F1 (pooled over the images) on validation data.

    ``pred_arrays`` are activated (Z)YXC predictions, ``point_sets`` their true points;
    matching uses ``evaluate.detection.tolerance`` and ``data.voxel_size``, class-agnostic
    (the threshold decides *whether* there is a point). Of several thresholds with the
    best F1 the median is chosen: the middle of a plateau is the least fragile choice.
    Returns the threshold, its scores and the whole F1 curve (written to the tuning JSON).
    """
    if len(pred_arrays) != len(point_sets) or not pred_arrays:
        raise ValueError(f"need matching, non-empty lists ({len(pred_arrays)} predictions, {len(point_sets)} "
                         "point sets)")
    params = DetectionParams.from_config(cfg["postprocess"]["detection"])
    voxel_size = cfg["data"]["voxel_size"]
    tolerance = float(cfg["evaluate"]["detection"]["tolerance"])
    grid = sorted(float(t) for t in grid)
    low = replace(params, threshold=grid[0])
    candidates = [detect_points(pred, low, voxel_size) for pred in pred_arrays]
    curve = [_score_threshold(t, candidates, point_sets, tolerance, voxel_size) for t in grid]
    best_f1 = max((row["f1"] for row in curve if np.isfinite(row["f1"])), default=float("nan"))
    best = [row for row in curve if row["f1"] == best_f1] or curve
    chosen = best[(len(best) - 1) // 2]
    return {
        "threshold": chosen["threshold"], "f1": chosen["f1"], "precision": chosen["precision"],
        "recall": chosen["recall"], "tolerance": tolerance, "n_images": len(pred_arrays),
        "n_points": int(sum(len(p) for p in point_sets)), "curve": curve,
    }


def _score_threshold(threshold: float, candidates: Sequence[PointSet], truths: Sequence[PointSet],
                     tolerance: float, voxel_size: Sequence[float] | None) -> dict[str, float]:
    tp = fp = fn = 0
    for cand, truth in zip(candidates, truths):
        pred = cand.subset(cand.scores > threshold)
        match = match_points(pred.coords, truth.coords, tolerance, voxel_size)
        tp += match.tp
        fp += len(pred) - match.tp
        fn += len(truth) - match.tp
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}
