"""Instance segmentation speed: sparse matching vs a dense IoU matrix, and watershed time.

Two synthetic cases: a 2048x2048 image with ~5,000 objects and a 256^3 volume. The
ground truth is a set of touching blobs; the "prediction" is the same blobs from
jittered centres with another radius, 5% of them dropped and 5% false ones added,
under shuffled non-consecutive ids.

The dense baseline is the straightforward implementation: one full-image mask per
object and an IoU per (truth, prediction) pair, then the Hungarian assignment on the
full N x M matrix. Its pair loop is timed on a subset and extrapolated to N x M (it
would take hours); the Hungarian step on the full matrix is timed for real.

Run: .venv/bin/python benchmarks/bench_instance.py   (prints one markdown table)
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import expand_labels

from biapipe.tasks.instance.metrics import matching_metrics, overlap
from biapipe.tasks.instance.postprocess import InstanceParams, instance_postprocess
from biapipe.tasks.instance.targets import TargetSpec, instance_targets

SUBSET = 6  # truth x prediction objects timed by the dense pair loop


def blobs(shape: tuple[int, ...], centres: np.ndarray, radius: int, ids: np.ndarray) -> np.ndarray:
    seeds = np.zeros(shape, dtype=np.int32)
    seeds[tuple(centres.T)] = ids
    return expand_labels(seeds, radius)


def make_case(shape: tuple[int, ...], n: int, radius: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.stack([rng.integers(0, s, n) for s in shape], axis=1)
    centres = np.unique(centres, axis=0)
    gt = blobs(shape, centres, radius, np.arange(1, len(centres) + 1))
    kept = centres[rng.random(len(centres)) > 0.05]
    jitter = np.clip(kept + rng.integers(-1, 2, kept.shape), 0, np.array(shape) - 1)
    extra = np.stack([rng.integers(0, s, len(centres) // 20) for s in shape], axis=1)
    pred_centres = np.unique(np.concatenate([jitter, extra]), axis=0)
    ids = rng.permutation(10 * len(pred_centres))[: len(pred_centres)] + 1
    pred = blobs(shape, pred_centres, radius - 1, ids)
    return gt, pred


def sparse_time(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    start = time.perf_counter()
    f1 = matching_metrics(pred, gt)["f1@0.5"]
    return time.perf_counter() - start, f1


def dense_time(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Extrapolated pair loop + real Hungarian on the full matrix; returns (seconds, hungarian seconds)."""
    g_ids = np.unique(gt)[1:]
    p_ids = np.unique(pred)[1:]
    start = time.perf_counter()
    for i in g_ids[:SUBSET]:
        gm = gt == i
        for j in p_ids[:SUBSET]:
            pm = pred == j
            _ = np.logical_and(gm, pm).sum() / np.logical_or(gm, pm).sum()
    per_pair = (time.perf_counter() - start) / (SUBSET * SUBSET)
    ov = overlap(gt, pred)
    iou = np.zeros((len(g_ids), len(p_ids)))
    iou[ov.pair_gt, ov.pair_pred] = ov.iou
    start = time.perf_counter()
    ok = iou >= 0.5
    linear_sum_assignment(-(ok * (1.0 + iou / (min(iou.shape) + 1))))
    hungarian = time.perf_counter() - start
    return per_pair * len(g_ids) * len(p_ids) + hungarian, hungarian


def watershed_time(gt: np.ndarray) -> tuple[float, float, float]:
    """(target seconds, postprocess seconds, F1@0.5) with F+C targets taken as a perfect prediction."""
    start = time.perf_counter()
    target = instance_targets(gt, TargetSpec.defaults(channels=("foreground", "contour")))
    t_targets = time.perf_counter() - start
    start = time.perf_counter()
    out = instance_postprocess(target, ["foreground", "contour"], InstanceParams.defaults(min_seed_size=1))
    t_post = time.perf_counter() - start
    return t_targets, t_post, matching_metrics(out, gt)["f1@0.5"]


def fmt(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h (est.)"
    return f"{seconds:.2f} s"


def main() -> None:
    cases = [("2D 2048x2048", (2048, 2048), 5200, 11), ("3D 256^3", (256, 256, 256), 6000, 7)]
    rows = []
    for name, shape, n, radius in cases:
        gt, pred = make_case(shape, n, radius)
        n_gt, n_pred = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
        t_sparse, f1 = sparse_time(gt, pred)
        t_dense, t_hung = dense_time(gt, pred)
        t_targets, t_post, f1_ws = watershed_time(gt)
        rows.append((name, n_gt, n_pred, t_sparse, t_dense, t_hung, f1, t_targets, t_post, f1_ws))
    print("| case | objects (gt / pred) | sparse matching, 9 thresholds | dense IoU matrix + Hungarian | "
          "of which Hungarian | dense / sparse | F1@0.5 | F+C targets | watershed post-processing | "
          "F1@0.5 of perfect F+C |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, n_gt, n_pred, t_s, t_d, t_h, f1, t_t, t_p, f1_ws in rows:
        print(f"| {name} | {n_gt} / {n_pred} | {fmt(t_s)} | {fmt(t_d)} | {fmt(t_h)} | {t_d / t_s:,.0f}x | "
              f"{f1:.3f} | {fmt(t_t)} | {fmt(t_p)} | {f1_ws:.3f} |")
    print(f"\nDense pair loop timed on {SUBSET}x{SUBSET} pairs and extrapolated to all pairs; "
          "its Hungarian step timed on the full matrix (at IoU 0.5).")


if __name__ == "__main__":
    main()
