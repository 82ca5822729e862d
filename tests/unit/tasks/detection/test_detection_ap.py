"""Detection AP and mAP: score-ranked matching within the tolerance, pooled over images,
against precision-recall curves worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from biapipe.core.config import validate_config
from biapipe.tasks import get_task
from biapipe.tasks.detection.metrics import match_points
from biapipe.tasks.detection.points import PointSet
from biapipe.tasks.detection.ranking import greedy_match


def task_with_classes():
    return get_task(validate_config({"experiment": "d", "workflow": "detection", "ndim": 2, "data": {"demo": {}},
                                     "targets": {"detection": {"classes": [1, 3]}},
                                     "evaluate": {"detection": {"tolerance": 3.0}}}))


def points(coords, classes, scores=None) -> PointSet:
    return PointSet(np.asarray(coords, float).reshape(len(coords), 2), classes, (80, 80),
                    None if scores is None else np.asarray(scores, float))


def test_ranked_matching_lets_the_higher_score_choose_first():
    # p0 (0.9) is nearest g0; p1 (0.5) reaches only g0. The F1 matching pairs p0-g1 and p1-g0 (two
    # matches); ranked by score, p0 takes its nearest, g0, and p1 is left without one.
    pred, gt = np.array([[0, 0], [0, 2.5]]), np.array([[0, 1], [0, -1.9]])
    assert match_points(pred, gt, 2.0).tp == 2
    assert greedy_match(pred, np.array([0.9, 0.5]), gt, 2.0).tolist() == [True, False]
    assert greedy_match(pred, np.array([0.4, 0.5]), gt, 2.0).tolist() == [True, True]  # p1 first: g0, p0: g1


def test_ap_per_class_and_map_against_a_hand_computed_curve():
    task = task_with_classes()
    truth = {"a": points([[10, 10], [30, 30], [50, 50]], [0, 0, 1]),  # classes 1, 1, 3
             "b": points([[10, 10]], [1])}
    preds = {"a": points([[10, 11], [30, 30], [70, 70]], [0, 1, 0], [0.9, 0.4, 0.8]),
             "b": points([[10, 10], [11, 10]], [1, 1], [0.7, 0.6])}
    rows = [{"image": i, **task.evaluate(preds[i], truth[i])} for i in truth]
    details = {i: task.details(preds[i], truth[i]) for i in truth}
    summary = task.summarize(pd.DataFrame(rows), details).iloc[0]
    # class-agnostic, ranked 0.9 0.8 0.7 0.6 0.4: matched T F T F T of 4 true points
    # precision 1 1/2 2/3 1/2 3/5, recall 1/4 1/4 1/2 1/2 3/4, envelope 1 2/3 2/3 3/5 3/5
    # COCO: 26 recalls read 1, 25 read 2/3, 25 read 3/5, 25 are never reached
    assert summary["ap"] == pytest.approx((26 + 25 * 2 / 3 + 25 * 3 / 5) / 101)
    # class 1: 0.9 matched, 0.8 not, of 2 true points: precision 1 up to recall 1/2 -> 51 of 101 recalls
    assert summary["ap_class_1"] == pytest.approx(51 / 101)
    # class 3: 0.7 matched, 0.6 (a duplicate) and 0.4 (on a class-1 point) not, of 2: the same curve
    assert summary["ap_class_3"] == pytest.approx(51 / 101)
    assert summary["map"] == pytest.approx(51 / 101)
    # the thresholded figures are unchanged beside them
    assert summary["tp"] == 3 and summary["fp"] == 2 and summary["fn"] == 1


def test_points_without_scores_have_no_ap():
    task = task_with_classes()
    pred, gt = points([[10, 10]], [0]), points([[10, 10]], [0])
    summary = task.summarize(pd.DataFrame([{"image": "x", **task.evaluate(pred, gt)}]),
                             {"x": task.details(pred, gt)}).iloc[0]
    assert np.isnan(summary["ap"]) and summary["pooled_f1"] == 1.0
