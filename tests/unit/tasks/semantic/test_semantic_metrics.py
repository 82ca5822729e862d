"""IoU/Dice and friends on masks small enough to count by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biapipe.core.errors import InputError
from biapipe.tasks.semantic.metrics import confusion_matrix, semantic_metrics


def four_vs_six() -> tuple[np.ndarray, np.ndarray]:
    """Prediction covers 4 pixels, ground truth 6, 2 of them shared."""
    pred = np.zeros((4, 4), np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    pred[0, 0:4] = 1
    gt[0, 2:4] = 1
    gt[1, 0:4] = 1
    return pred, gt


def test_iou_and_dice_of_overlapping_masks() -> None:
    m = semantic_metrics(*four_vs_six(), n_classes=2)
    assert m["iou_1"] == pytest.approx(2 / 8)
    assert m["dice_1"] == pytest.approx(4 / 10)
    assert (m["inter_1"], m["union_1"], m["pred_1"], m["gt_1"]) == (2, 8, 4, 6)
    # background: 12 predicted, 10 true, 8 shared
    assert (m["inter_0"], m["union_0"]) == (8, 14)
    assert m["iou_0"] == pytest.approx(8 / 14)
    assert m["foreground_iou"] == pytest.approx(2 / 8)
    assert m["pixel_accuracy"] == pytest.approx(10 / 16)
    assert (m["n_correct"], m["n_pixels"]) == (10, 16)


def test_class_absent_from_both_is_nan() -> None:
    pred = np.array([[0, 1], [1, 0]])
    m = semantic_metrics(pred, pred.copy(), n_classes=3)
    assert math.isnan(m["iou_2"]) and math.isnan(m["dice_2"])
    assert m["union_2"] == 0 and m["inter_2"] == 0
    assert m["iou_1"] == 1.0


def test_class_absent_from_one_side_is_zero() -> None:
    pred = np.array([[0, 2], [1, 0]])
    gt = np.array([[0, 1], [1, 0]])
    m = semantic_metrics(pred, gt, n_classes=3)
    assert m["iou_2"] == 0.0 and m["dice_2"] == 0.0  # predicted, never true
    m = semantic_metrics(gt, pred, n_classes=3)
    assert m["iou_2"] == 0.0 and m["dice_2"] == 0.0  # true, never predicted


def test_empty_foreground_everywhere() -> None:
    zeros = np.zeros((3, 3), np.uint8)
    m = semantic_metrics(zeros, zeros, n_classes=2)
    assert math.isnan(m["foreground_iou"]) and math.isnan(m["iou_1"])
    assert m["iou_0"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_foreground_iou_merges_classes() -> None:
    pred = np.array([[1, 2, 0]])
    gt = np.array([[2, 2, 0]])
    m = semantic_metrics(pred, gt, n_classes=3)
    assert m["foreground_iou"] == 1.0
    assert m["iou_2"] == pytest.approx(1 / 2)


def test_ignore_mask_excludes_pixels() -> None:
    pred, gt = four_vs_six()
    ignore = np.zeros_like(gt, dtype=bool)
    ignore[1, :] = True  # the 4 ground-truth pixels the prediction misses
    m = semantic_metrics(pred, gt, n_classes=2, ignore_mask=ignore)
    assert (m["inter_1"], m["union_1"]) == (2, 4)
    assert m["n_pixels"] == 12


def test_3d_works_like_2d() -> None:
    pred, gt = four_vs_six()
    m = semantic_metrics(np.stack([pred, pred]), np.stack([gt, gt]), n_classes=2)
    assert m["iou_1"] == pytest.approx(2 / 8) and m["union_1"] == 16


def test_confusion_matrix_rows_are_truth() -> None:
    cm = confusion_matrix(np.array([1, 1, 0]), np.array([0, 1, 0]), 2)
    np.testing.assert_array_equal(cm, [[1, 1], [0, 1]])


def test_bad_input() -> None:
    with pytest.raises(InputError, match="does not match"):
        semantic_metrics(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(InputError, match=r"prediction has values \{5\}"):
        semantic_metrics(np.array([0, 5]), np.array([0, 1]), 2)
