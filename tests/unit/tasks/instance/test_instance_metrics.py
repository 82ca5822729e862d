"""Object matching: hand-computed cases, sparse vs dense reference, pooled summaries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from biapipe.core.errors import InputError
from biapipe.tasks.instance.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    matching_metrics,
    overlap,
    summarize_matching,
    threshold_key,
)


def _squares(shape=(20, 30), boxes=((2, 8, 2, 8), (10, 16, 12, 20), (3, 9, 22, 28)), ids=(1, 2, 3),
             dtype=np.uint16):
    lab = np.zeros(shape, dtype=dtype)
    for (y0, y1, x0, x1), i in zip(boxes, ids):
        lab[y0:y1, x0:x1] = i
    return lab


def test_threshold_keys():
    assert [threshold_key(t) for t in DEFAULT_IOU_THRESHOLDS][:3] == ["0.1", "0.2", "0.3"]
    assert threshold_key(0.75) == "0.75"


def test_perfect_match_with_permuted_non_consecutive_ids():
    gt = _squares()
    pred = _squares(ids=(700, 5, 65000))
    m = matching_metrics(pred, gt)
    assert m["n_gt"] == m["n_pred"] == 3
    for t in DEFAULT_IOU_THRESHOLDS:
        k = threshold_key(t)
        assert (m[f"tp@{k}"], m[f"fp@{k}"], m[f"fn@{k}"]) == (3, 0, 0)
        assert m[f"f1@{k}"] == m[f"accuracy@{k}"] == m[f"pq@{k}"] == m[f"mean_iou@{k}"] == 1.0


def test_split_one_truth_into_two_predictions():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :] = 1                      # one object of 100 pixels
    pred = np.zeros((10, 10), np.uint8)
    pred[:, :5], pred[:, 5:] = 3, 9   # two halves, IoU 0.5 each
    m = matching_metrics(pred, gt)
    assert (m["tp@0.5"], m["fp@0.5"], m["fn@0.5"]) == (1, 1, 0)
    assert m["precision@0.5"] == 0.5 and m["recall@0.5"] == 1.0
    assert m["f1@0.5"] == pytest.approx(2 / 3)
    assert m["accuracy@0.5"] == pytest.approx(0.5)
    assert m["mean_iou@0.5"] == pytest.approx(0.5)
    assert m["pq@0.5"] == pytest.approx(0.5 / 1.5)
    assert (m["tp@0.6"], m["fp@0.6"], m["fn@0.6"]) == (0, 2, 1)
    assert m["f1@0.6"] == 0.0 and math.isnan(m["mean_iou@0.6"])


def test_merge_two_truths_into_one_prediction():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :5], gt[:, 5:] = 1, 2
    pred = np.ones((10, 10), np.uint8)
    m = matching_metrics(pred, gt)
    assert (m["tp@0.5"], m["fp@0.5"], m["fn@0.5"]) == (1, 0, 1)
    assert m["recall@0.5"] == 0.5 and m["precision@0.5"] == 1.0


def test_partial_overlap_has_known_iou():
    gt = np.zeros((10, 20), np.uint8)
    gt[:, 0:10] = 1
    pred = np.zeros((10, 20), np.uint8)
    pred[:, 5:15] = 1                 # intersection 50, union 150 -> IoU 1/3
    m = matching_metrics(pred, gt)
    assert m["tp@0.3"] == 1 and m["mean_iou@0.3"] == pytest.approx(1 / 3)
    assert m["tp@0.4"] == 0 and m["fp@0.4"] == 1 and m["fn@0.4"] == 1
    ov = overlap(gt, pred)
    assert ov.intersection.tolist() == [50] and ov.iou.tolist() == pytest.approx([1 / 3])


def test_empty_prediction_and_empty_truth():
    gt = _squares()
    empty = np.zeros_like(gt)
    m = matching_metrics(empty, gt)
    assert (m["tp@0.5"], m["fp@0.5"], m["fn@0.5"]) == (0, 0, 3)
    assert math.isnan(m["precision@0.5"]) and m["recall@0.5"] == 0 and m["f1@0.5"] == 0 and m["pq@0.5"] == 0
    m = matching_metrics(gt, empty)
    assert (m["tp@0.5"], m["fp@0.5"], m["fn@0.5"]) == (0, 3, 0)
    assert m["precision@0.5"] == 0 and math.isnan(m["recall@0.5"]) and m["f1@0.5"] == 0
    m = matching_metrics(empty, empty)
    assert m["n_gt"] == m["n_pred"] == 0 and math.isnan(m["f1@0.5"])


def test_huge_ids_take_the_sorting_path():
    gt = _squares(ids=(4_000_000_000, 7, 2_500_000_000), dtype=np.uint32)
    pred = _squares(ids=(1, 2, 3))
    m = matching_metrics(pred, gt)
    assert m["tp@0.9"] == 3 and m["n_gt"] == 3


def test_hungarian_beats_greedy():
    """Greedy by largest IoU matches A-P and leaves B alone; the optimum matches A-Q and B-P."""
    gt = np.zeros((1, 40), np.uint8)
    gt[0, 0:20], gt[0, 20:40] = 1, 2          # A, B
    pred = np.zeros((1, 40), np.uint8)
    pred[0, 0:7], pred[0, 7:27] = 1, 2        # Q (IoU 0.35 with A), P (0.48 with A, 0.21 with B)
    m = matching_metrics(pred, gt, thresholds=[0.2, 0.3])
    assert m["tp@0.2"] == 2
    assert m["mean_iou@0.2"] == pytest.approx((7 / 20 + 7 / 33) / 2)
    assert m["tp@0.3"] == 1 and m["mean_iou@0.3"] == pytest.approx(13 / 27)


def test_3d_cubes():
    gt = np.zeros((6, 8, 8), np.uint16)
    gt[1:5, 0:4, 0:4] = 1
    gt[1:5, 4:8, 4:8] = 2
    pred = np.zeros_like(gt)
    pred[1:3, 0:4, 0:4] = 5                   # half of cube 1: IoU 0.5
    pred[1:5, 4:8, 4:8] = 6
    m = matching_metrics(pred, gt)
    assert m["tp@0.5"] == 2 and m["tp@0.6"] == 1
    assert m["mean_iou@0.5"] == pytest.approx(0.75)


def _dense_reference(pred, gt, t):
    """Straightforward matching: full IoU matrix from masks, Hungarian maximising matches then IoU."""
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(g_ids), len(p_ids)))
    for a, i in enumerate(g_ids):
        for b, j in enumerate(p_ids):
            gm, pm = gt == i, pred == j
            iou[a, b] = (gm & pm).sum() / (gm | pm).sum()
    if not iou.size:
        return 0
    ok = iou >= t
    r, c = linear_sum_assignment(-(ok * (1 + iou / (min(iou.shape) + 1))))
    return int(ok[r, c].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_matches_dense_reference_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    from skimage.segmentation import expand_labels

    def random_labels(n):
        lab = np.zeros((40, 40), np.int32)
        pts = rng.integers(0, 40, size=(n, 2))
        lab[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1) * 3
        return expand_labels(lab, int(rng.integers(2, 5)))

    gt, pred = random_labels(12), random_labels(15)
    m = matching_metrics(pred, gt, thresholds=[0.1, 0.3, 0.5, 0.7])
    for t in (0.1, 0.3, 0.5, 0.7):
        assert m[f"tp@{threshold_key(t)}"] == _dense_reference(pred, gt, t)


def test_bad_inputs_are_clear_errors():
    gt = _squares()
    with pytest.raises(InputError, match="does not match"):
        matching_metrics(gt[:-1], gt)
    with pytest.raises(InputError, match="integers"):
        matching_metrics(gt.astype(np.float32), gt)
    with pytest.raises(InputError, match="negative"):
        matching_metrics(-gt.astype(np.int32), gt)


def test_summarize_pools_counts_and_averages_images():
    rows = []
    gt = np.ones((10, 10), np.uint8)
    split = np.zeros((10, 10), np.uint8)
    split[:, :5], split[:, 5:] = 1, 2
    rows.append(matching_metrics(split, gt, [0.5]))             # tp 1, fp 1, fn 0, f1 2/3
    rows.append(matching_metrics(_squares(), _squares(), [0.5]))  # tp 3, f1 1
    s = summarize_matching(pd.DataFrame(rows), [0.5])
    assert s["n_images"] == 2 and (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (4, 1, 0)
    assert s["pooled_f1@0.5"] == pytest.approx(8 / 9)
    assert s["mean_f1@0.5"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["pooled_precision@0.5"] == pytest.approx(0.8)
    assert s["pooled_mean_iou@0.5"] == pytest.approx((0.5 + 3) / 4)
    assert s["pooled_accuracy@mean"] == pytest.approx(4 / 5)
