"""Point-detection scores: predicted points matched one-to-one to true points.

A predicted and a true point may be matched when their Euclidean distance in physical
units (pixel coordinates times ``data.voxel_size``) is at most the tolerance. A pair at
*exactly* the tolerance counts as a match (a relative slack of 1e-9 absorbs rounding,
e.g. 30 pixels of 0.1 being 3.0000000000000004). Among all one-to-one assignments the
matching maximises the number of matches, then minimises their total distance.

All pairs within the tolerance come from a KD-tree (``cKDTree.sparse_distance_matrix``),
so only real candidates are considered. The bipartite graph they form splits into
connected groups that do not interact; a group with a single prediction or a single
truth can hold one match only and takes its shortest pair (nearly all groups at
sensible tolerances), the others are solved by the Hungarian algorithm
(``linear_sum_assignment``) on their own small dense matrix. 100k points therefore cost
about a second, not a 10^10-entry matrix.

Per image: TP, FP, FN, precision, recall, F1 and mean localization error (mean distance
of the matched pairs, physical units), class-agnostic; with classes, the same per class
where a match needs the same class on both sides, plus ``class_accuracy``, the share of
the class-agnostic matches whose classes agree. Ratios with a zero denominator are NaN
(nothing to measure), as in the other metrics; counts are kept so that ``summarize``
can pool them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ...core.tables import column_sum as _sum
from ...core.tables import nanmean as _nanmean
from ...core.tables import ratio

#: Relative slack on the tolerance so that a distance equal to it on paper is a match in floats.
TOLERANCE_SLACK = 1e-9
#: Per-image ratio columns (besides the counts tp, fp, fn, n_pred, n_gt).
RATIOS = ("precision", "recall", "f1", "loc_error")

__all__ = ["Matching", "match_points", "detection_metrics", "summarize_detection", "assignments_table", "ratio"]


@dataclass(frozen=True)
class Matching:
    """Matched pairs: indices into the predicted and the true points, and their distances."""

    pred: np.ndarray
    gt: np.ndarray
    distance: np.ndarray

    @property
    def tp(self) -> int:
        return int(len(self.pred))

    @classmethod
    def empty(cls) -> Matching:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))


def _physical(coords: np.ndarray, voxel_size: Sequence[float] | None) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    return coords if voxel_size is None else coords * np.asarray(voxel_size, dtype=np.float64)


def candidate_pairs(pred: np.ndarray, gt: np.ndarray, tolerance: float,
                    voxel_size: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (pred, gt) pair at most ``tolerance`` apart (physical units), with its distance."""
    tree_p = cKDTree(_physical(pred, voxel_size))
    tree_g = cKDTree(_physical(gt, voxel_size))
    found = tree_p.sparse_distance_matrix(tree_g, tolerance * (1 + TOLERANCE_SLACK), output_type="ndarray")
    return found["i"].astype(np.int64), found["j"].astype(np.int64), found["v"].astype(np.float64)


def match_points(pred: np.ndarray, gt: np.ndarray, tolerance: float,
                 voxel_size: Sequence[float] | None = None) -> Matching:
    """Optimal one-to-one matching of (N, ndim) predicted and (M, ndim) true pixel coordinates."""
    if len(pred) == 0 or len(gt) == 0:
        return Matching.empty()
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    gt = np.asarray(gt, dtype=np.float64).reshape(len(gt), -1)
    i, j, d = candidate_pairs(pred, gt, tolerance, voxel_size)
    if len(i) == 0:
        return Matching.empty()
    n_pred = len(pred)
    graph = sparse.coo_matrix((np.ones(len(i)), (i, n_pred + j)), shape=(n_pred + len(gt),) * 2)
    _, component = connected_components(graph, directed=False)
    group = component[i]
    star = _is_star(component, n_pred, group, i, j)
    parts = [_closest_per_group(group[star], i[star], j[star], d[star])]
    rest = np.flatnonzero(~star)
    if rest.size:
        parts.append(_assign_groups(group[rest], i[rest], j[rest], d[rest], tolerance))
    pi, gj, dist = (np.concatenate(x) for x in zip(*parts))
    order = np.argsort(pi, kind="stable")
    return Matching(pi[order], gj[order], dist[order])


def _is_star(component: np.ndarray, n_pred: int, group: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per edge: does its group have a single prediction or a single truth?

    Such a group (a lone pair included) can hold one match only, so the optimal matching
    is simply its shortest pair; no assignment problem needs solving.
    """
    n_groups = int(component.max()) + 1
    preds = np.bincount(component[np.unique(i)], minlength=n_groups)
    truths = np.bincount(component[n_pred + np.unique(j)], minlength=n_groups)
    return (preds[group] == 1) | (truths[group] == 1)


def _closest_per_group(group: np.ndarray, i: np.ndarray, j: np.ndarray,
                       d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shortest edge of each group (ties: first found), vectorized."""
    if len(group) == 0:
        return i, j, d
    order = np.lexsort((np.arange(len(d)), d, group))
    first = order[np.r_[True, np.diff(group[order]) != 0]]
    return i[first], j[first], d[first]


def _assign_groups(group: np.ndarray, i: np.ndarray, j: np.ndarray, d: np.ndarray,
                   tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian assignment of each group: most matches first, then least total distance.

    Costs: a candidate pair costs its distance / tolerance (at most ~1); a non-pair costs
    more than all pairs of the group together, so trading one match for any set of
    shorter ones never pays. Rows and columns are numbered within their group once, for
    all groups together, so the loop only fills and solves each small matrix.
    """
    order = np.argsort(group, kind="stable")
    group, i, j, d = group[order], i[order], j[order], d[order]
    row, col = _local_index(group, i), _local_index(group, j)
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    out_i, out_j, out_d = [], [], []
    for lo, hi in zip(starts, np.r_[starts[1:], len(group)]):
        r_loc, c_loc = row[lo:hi], col[lo:hi]
        shape = (int(r_loc.max()) + 1, int(c_loc.max()) + 1)
        forbidden = float(min(shape) + 2)
        cost = np.full(shape, forbidden)
        cost[r_loc, c_loc] = d[lo:hi] / max(tolerance, 1e-300)
        r, c = linear_sum_assignment(cost)
        real = cost[r, c] < forbidden
        r, c = r[real], c[real]
        owner_i, owner_j, distance = np.empty(shape[0], np.int64), np.empty(shape[1], np.int64), np.zeros(shape)
        owner_i[r_loc], owner_j[c_loc], distance[r_loc, c_loc] = i[lo:hi], j[lo:hi], d[lo:hi]
        out_i.append(owner_i[r])
        out_j.append(owner_j[c])
        out_d.append(distance[r, c])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _local_index(group: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Per edge: the rank of its point among the distinct points of its group, from 0."""
    order = np.lexsort((point, group))
    g, p = group[order], point[order]
    new_group = np.r_[True, np.diff(g) != 0]
    new_point = new_group | np.r_[True, np.diff(p) != 0]
    rank = np.cumsum(new_point) - 1
    base = np.maximum.accumulate(np.where(new_group, rank, 0))
    local = np.empty(len(order), dtype=np.int64)
    local[order] = rank - base
    return local


# --------------------------------------------------------------------------- per image


def counts(n_pred: int, n_gt: int, match: Matching) -> dict[str, float]:
    """TP/FP/FN with their ratios and the mean localization error of one matching."""
    tp = match.tp
    fp, fn = n_pred - tp, n_gt - tp
    return {
        "n_pred": n_pred, "n_gt": n_gt, "tp": tp, "fp": fp, "fn": fn,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "loc_error": float(match.distance.mean()) if tp else float("nan"),
    }


def detection_metrics(pred_coords: np.ndarray, pred_classes: np.ndarray, gt_coords: np.ndarray,
                      gt_classes: np.ndarray, tolerance: float, voxel_size: Sequence[float] | None = None,
                      class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Scores of one image; with ``class_names`` (one per class index) also per class.

    Per-class columns are ``{tp,fp,fn,precision,recall,f1,loc_error}_class_{name}``.
    """
    pred_classes = np.asarray(pred_classes, dtype=np.int64)
    gt_classes = np.asarray(gt_classes, dtype=np.int64)
    overall = match_points(pred_coords, gt_coords, tolerance, voxel_size)
    row = counts(len(pred_classes), len(gt_classes), overall)
    if not class_names:
        return row
    agree = pred_classes[overall.pred] == gt_classes[overall.gt]
    row["class_accuracy"] = ratio(int(agree.sum()), overall.tp)
    for k, name in enumerate(class_names):
        p, g = pred_classes == k, gt_classes == k
        match = match_points(np.asarray(pred_coords)[p], np.asarray(gt_coords)[g], tolerance, voxel_size)
        per_class = counts(int(p.sum()), int(g.sum()), match)
        row.update({f"{key}_class_{name}": per_class[key] for key in ("tp", "fp", "fn", *RATIOS)})
    return row


def assignments_table(pred_coords: np.ndarray, pred_classes: np.ndarray, pred_scores: np.ndarray | None,
                      gt_coords: np.ndarray, gt_classes: np.ndarray, match: Matching,
                      axes: Sequence[str]) -> pd.DataFrame:
    """One row per TP pair, FP prediction and FN truth (``status``), for inspecting errors.

    Rows hold the CSV row of each side (``pred_row``, ``gt_row``; -1 when absent), both
    positions, classes, the prediction's score and the pair distance (physical units).
    """
    pred_coords = np.asarray(pred_coords, dtype=np.float64).reshape(len(pred_classes), len(axes))
    gt_coords = np.asarray(gt_coords, dtype=np.float64).reshape(len(gt_classes), len(axes))
    fp = np.setdiff1d(np.arange(len(pred_coords)), match.pred)
    fn = np.setdiff1d(np.arange(len(gt_coords)), match.gt)
    pred_rows = np.concatenate([match.pred, fp, np.full(len(fn), -1)])
    gt_rows = np.concatenate([match.gt, np.full(len(fp), -1), fn])
    table = {"status": ["tp"] * match.tp + ["fp"] * len(fp) + ["fn"] * len(fn),
             "pred_row": pred_rows, "gt_row": gt_rows}
    for a, name in enumerate(axes):
        table[f"pred_{name}"] = _pick(pred_coords[:, a], pred_rows)
    for a, name in enumerate(axes):
        table[f"gt_{name}"] = _pick(gt_coords[:, a], gt_rows)
    table["pred_class"] = _pick(np.asarray(pred_classes, dtype=np.float64), pred_rows)
    table["gt_class"] = _pick(np.asarray(gt_classes, dtype=np.float64), gt_rows)
    scores = np.full(len(pred_coords), np.nan) if pred_scores is None else np.asarray(pred_scores, np.float64)
    table["score"] = _pick(scores, pred_rows)
    table["distance"] = np.concatenate([match.distance, np.full(len(fp) + len(fn), np.nan)])
    return pd.DataFrame(table)


def _pick(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows] with NaN where the row is -1 (no point on that side)."""
    out = np.full(len(rows), np.nan)
    present = rows >= 0
    out[present] = values[rows[present]]
    return out


# --------------------------------------------------------------------------- dataset


def summarize_detection(metrics: pd.DataFrame, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Dataset figures: ``pooled_*`` from summed TP/FP/FN (every point weighs the same) and
    ``mean_*`` averaging the per-image values (every image weighs the same; NaN skipped).

    The pooled localization error weights each image's mean error by its TP count.
    """
    row: dict[str, float] = {"n_images": int(len(metrics))}
    suffixes = [""] + [f"_class_{name}" for name in class_names or []]
    for suffix in suffixes:
        row.update(_pooled(metrics, suffix))
    if class_names:
        row["mean_class_accuracy"] = _nanmean(metrics.get("class_accuracy", pd.Series(dtype=float)))
    return row


def _pooled(metrics: pd.DataFrame, suffix: str) -> dict[str, float]:
    tp, fp, fn = (int(_sum(metrics, f"{c}{suffix}")) for c in ("tp", "fp", "fn"))
    out = {f"n_pred{suffix}": tp + fp, f"n_gt{suffix}": tp + fn, f"tp{suffix}": tp, f"fp{suffix}": fp,
           f"fn{suffix}": fn, f"pooled_precision{suffix}": ratio(tp, tp + fp),
           f"pooled_recall{suffix}": ratio(tp, tp + fn), f"pooled_f1{suffix}": ratio(2 * tp, 2 * tp + fp + fn)}
    err, weight = metrics.get(f"loc_error{suffix}"), metrics.get(f"tp{suffix}")
    if err is not None and weight is not None:
        valid = np.isfinite(err.to_numpy(float)) & (weight.to_numpy(float) > 0)
        total = float((err.to_numpy(float)[valid] * weight.to_numpy(float)[valid]).sum())
        out[f"pooled_loc_error{suffix}"] = ratio(total, float(weight.to_numpy(float)[valid].sum()))
    else:
        out[f"pooled_loc_error{suffix}"] = float("nan")
    for name in RATIOS:
        out[f"mean_{name}{suffix}"] = _nanmean(metrics.get(f"{name}{suffix}", pd.Series(dtype=float)))
    return out
