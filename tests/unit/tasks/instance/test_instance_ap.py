"""Instance-segmentation AP in the COCO manner: object scores from post-processing, matches
per image, AP pooled over images, against a precision-recall curve worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from biapipe.core.config import validate_config
from biapipe.data.blocks import block_grid
from biapipe.tasks import get_task
from biapipe.tasks.instance.objects import object_table_blocks


def task():
    return get_task(validate_config({"experiment": "t", "workflow": "instance", "ndim": 2, "data": {"demo": {}},
                                     "evaluate": {"iou_thresholds": [0.5, 0.75]}}))


def boxes(shape, *items):
    """A label image with label k+1 on rows r0:r1, columns c0:c1 of the k-th item."""
    out = np.zeros(shape, np.uint16)
    for k, (r0, r1, c0, c1) in enumerate(items):
        out[r0:r1, c0:c1] = k + 1
    return out


def prediction_with_scores(labels, scores):
    """A (foreground, contour) prediction whose foreground is each object's score on it."""
    fg = np.zeros(labels.shape, np.float32)
    for label, score in scores.items():
        fg[labels == label] = score
    return np.stack([fg, np.zeros_like(fg)], axis=-1)


def test_object_score_is_the_mean_foreground_probability(tmp_path):
    t = task()
    labels = boxes((8, 8), (0, 2, 0, 2), (4, 8, 4, 8))
    fg = np.zeros((8, 8), np.float32)
    fg[0, :2], fg[1, :2] = 1.0, 0.5  # object 1: mean of 1, 1, .5, .5
    fg[4:8, 4:8] = 0.25
    t.write_side_outputs({"objects": str(tmp_path / "o.csv")}, labels, None, np.stack([fg, fg], -1))
    assert pd.read_csv(tmp_path / "o.csv")["score"].tolist() == pytest.approx([0.75, 0.25])
    # block by block (large images) the same
    blocks = block_grid((8, 8), (3, 5))
    table = object_table_blocks(labels, blocks, 2, score=lambda region: fg[region])
    assert table["score"].tolist() == pytest.approx([0.75, 0.25])


def test_coco_ap_against_a_hand_computed_curve(tmp_path):
    t = task()
    gt = {"a": boxes((20, 20), (0, 5, 0, 5), (10, 15, 0, 10)),  # 25 and 50 pixels
          "b": boxes((20, 20), (0, 10, 0, 10), (15, 20, 15, 20))}  # the second is never found
    pred = {"a": boxes((20, 20), (0, 5, 0, 5), (10, 15, 0, 6), (0, 5, 12, 17)),  # IoU 1, 30/50 = 0.6, none
            "b": boxes((20, 20), (0, 10, 0, 8))}  # IoU 0.8
    scores = {"a": {1: 0.9, 2: 0.6, 3: 0.7}, "b": {1: 0.8}}
    rows, details = [], {}
    for i in gt:
        side = {"objects": str(tmp_path / f"{i}.csv")}
        t.write_side_outputs(side, pred[i], None, prediction_with_scores(pred[i], scores[i]))
        rows.append({"image": i, **t.evaluate(pred[i], gt[i])})
        details[i] = t.details(pred[i], gt[i], side)
    assert details["a"]["iou"].tolist() == pytest.approx([1.0, 0.6, 0.0])
    summary = t.summarize(pd.DataFrame(rows), details).iloc[0]
    # ranked 0.9 (IoU 1), 0.8 (0.8), 0.7 (0), 0.6 (0.6) of 4 true objects:
    # IoU 0.5-0.6: matched T T F T -> precision 1 up to recall 1/2, 3/4 up to 3/4: (51 + 25 * 0.75) / 101
    # IoU 0.65-0.8: T T F F -> precision 1 up to recall 1/2: 51 / 101
    # IoU 0.85-0.95: T F F F -> precision 1 up to recall 1/4: 26 / 101
    low, mid, high = (51 + 25 * 0.75) / 101, 51 / 101, 26 / 101
    assert summary["ap@0.5"] == pytest.approx(low)
    assert summary["ap@0.75"] == pytest.approx(mid)
    assert summary["ap@0.5:0.95"] == pytest.approx((3 * low + 4 * mid + 3 * high) / 10)
    # beside the DSB "AP" (TP / (TP + FP + FN)), which ignores the scores: 3 / (3 + 1 + 1) at IoU 0.5
    assert summary["pooled_accuracy@0.5"] == pytest.approx(3 / 5)


def test_outputs_without_object_scores_have_no_ap(tmp_path):
    t = task()
    labels = boxes((8, 8), (0, 4, 0, 4))
    assert t.details(labels, labels, {}) is None
    summary = t.summarize(pd.DataFrame([{"image": "x", **t.evaluate(labels, labels)}]), {})
    assert "ap@0.5:0.95" not in summary.columns
