"""Seed and mask thresholds tuned on validation images: a coordinate search that maximises
pooled matching F1 at IoU 0.5."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import match_pairs, overlap
from .postprocess import (
    THRESHOLD_CHANNELS,
    InstanceParams,
    NoSeedsWarning,
    Threshold,
    instance_postprocess,
    z_median,
)

#: Values tried per key by ``tune_thresholds``.
TUNING_GRIDS: dict[str, tuple[float, ...]] = {
    "seed_foreground": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "seed_contour": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
    "seed_contour_depth": (0.0, 0.05, 0.1, 0.2),
    "seed_distance": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "seed_centroid": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "seed_touching": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "mask_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "mask_distance": (0.01, 0.02, 0.05, 0.1, 0.2),
}


def tuned_keys(channels: Sequence[str]) -> list[str]:
    """Threshold keys that matter for these channels, seeds first."""
    present = set(channels)
    keys = [k for k in ("seed_foreground", "seed_contour", "seed_contour_depth", "seed_centroid", "seed_touching")
            if THRESHOLD_CHANNELS[k] in present]
    if present & {"distance", "signed_distance"}:
        keys.insert(0, "seed_distance")
    if present & {"foreground", "signed_distance"}:
        keys.append("mask_threshold")
    else:
        keys.append("mask_distance")
    return keys


def tune_thresholds(predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray], channels: Sequence[str],
                    params: InstanceParams | None = None, voxel_size: Sequence[float] | None = None,
                    iou: float = 0.5, rounds: int = 2,
                    grids: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Seed and mask thresholds maximising pooled matching F1 at ``iou`` on validation images.

    A grid over the main seed threshold and the mask threshold together, then a
    coordinate search: each key in turn takes the best value of its grid with the
    others fixed, for ``rounds`` passes (stops early when nothing changes). Ties keep
    the current value, so a flat optimum does not wander. Returns the thresholds, the
    F1 before and after, and what was searched (written as JSON by the task).
    """
    if len(predictions) != len(labels) or not predictions:
        raise ValueError(f"need the same non-zero number of predictions and labels, got {len(predictions)} "
                         f"and {len(labels)}")
    params = params or InstanceParams.defaults()
    grids = {**TUNING_GRIDS, **(grids or {})}
    predictions = [z_median(np.asarray(p, dtype=np.float32), params.z_median) for p in predictions]
    base = dataclasses.replace(params, z_median=0)
    keys = tuned_keys(channels)
    current = {k: _start_value(getattr(params, k), grids[k]) for k in keys}

    basins: list[dict] = [{} for _ in predictions]  # basin seeds change only with depth and mask

    def score(values: dict[str, float]) -> float:
        return pooled_f1(predictions, labels, channels, base.with_thresholds(values), voxel_size, iou, basins)

    best = initial = score(current)
    evaluations = 1
    primary, mask_key = keys[0], keys[-1]
    for seed_value in grids[primary]:            # jointly first: with seeds outside the mask F1 is flat at 0
        for mask_value in grids[mask_key]:
            trial = {**current, primary: float(seed_value), mask_key: float(mask_value)}
            if trial == current:
                continue
            f1 = score(trial)
            evaluations += 1
            if f1 > best + 1e-12:
                best, current = f1, trial
    for _ in range(rounds):
        changed = False
        for key in keys:
            for value in grids[key]:
                if value == current[key]:
                    continue
                trial = {**current, key: float(value)}
                f1 = score(trial)
                evaluations += 1
                if f1 > best + 1e-12:
                    best, current, changed = f1, trial, True
        if not changed:
            break
    return {"thresholds": current, "channels": list(channels), "iou": iou, "f1": best, "f1_initial": initial,
            "n_images": len(predictions), "evaluations": evaluations}


def _start_value(value: Threshold, grid: Sequence[float]) -> float:
    """Numeric config values start the search; 'otsu' starts from the middle of the grid."""
    return float(value) if not isinstance(value, str) else float(grid[len(grid) // 2])


def pooled_f1(predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray], channels: Sequence[str],
              params: InstanceParams, voxel_size: Sequence[float] | None, iou: float,
              basins: Sequence[dict] | None = None) -> float:
    """Matching F1 at ``iou`` from TP/FP/FN summed over the images (``basins``: a cache per image)."""
    tp = fp = fn = 0
    for i, (pred, gt) in enumerate(zip(predictions, labels)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoSeedsWarning)
            out = instance_postprocess(pred, channels, params, voxel_size, None if basins is None else basins[i])
        ov = overlap(gt, out)
        matched = match_pairs(ov, iou)[0].size
        tp += matched
        fp += len(ov.pred_ids) - matched
        fn += len(ov.gt_ids) - matched
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
