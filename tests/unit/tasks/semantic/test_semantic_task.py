"""The semantic task: targets, post-processing and the dataset summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.tasks import get_task
from biapipe.tasks.semantic.postprocess import semantic_postprocess
from biapipe.tasks.semantic.task import SemanticTask


def make_task(ndim: int = 2, **targets) -> SemanticTask:
    cfg = validate_config(
        {"experiment": "t", "workflow": "semantic", "ndim": ndim, "data": {"demo": {}}, "targets": targets}
    )
    task = get_task(cfg)
    assert isinstance(task, SemanticTask)
    return task


# --------------------------------------------------------------------------- targets


def test_make_targets_classes() -> None:
    task = make_task(classes=3)
    label = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    target = task.make_targets(label, "a.tif")
    assert target.dtype == np.int16 and target.shape == (2, 2, 1)
    np.testing.assert_array_equal(target[..., 0], label)
    np.testing.assert_array_equal(task.foreground(target), label > 0)
    assert task.out_channels() == 3


def test_make_targets_rejects_values_outside_classes_naming_file_and_values() -> None:
    task = make_task()
    label = np.array([[0, 1, 7], [3, 3, 12]], dtype=np.uint16)
    with pytest.raises(InputError) as err:
        task.make_targets(label, "data/labels/img_04.tif")
    message = str(err.value)
    assert message.startswith("data/labels/img_04.tif: ")
    assert "label values {3, 7, 12} outside the class range 0..1" in message
    assert "targets.binarize" in message


def test_make_targets_lists_only_a_few_values() -> None:
    with pytest.raises(InputError, match=r"\{2, 3, 4, 5, 6, \.\.\.\}"):
        make_task().make_targets(np.arange(40).reshape(5, 8), "x.tif")


def test_binarize_maps_instances_to_foreground() -> None:
    task = make_task(binarize=True)
    target = task.make_targets(np.array([[0, 5], [300, 0]], dtype=np.uint16), "x.tif")
    np.testing.assert_array_equal(target[..., 0], [[0, 1], [1, 0]])


def test_ignore_value_becomes_minus_one() -> None:
    task = make_task(classes=3, ignore_value=255)
    target = task.make_targets(np.array([[0, 2, 255]], dtype=np.uint8), "x.tif")
    np.testing.assert_array_equal(target[..., 0], [[0, 2, -1]])
    assert not task.foreground(target)[0, 2]


def test_binarize_with_ignore_keeps_ignored_pixels_out() -> None:
    task = make_task(binarize=True, ignore_value=65535)
    target = task.make_targets(np.array([[0, 4, 65535]], dtype=np.uint16), "x.tif")
    np.testing.assert_array_equal(target[..., 0], [[0, 1, -1]])


def test_3d_targets() -> None:
    target = make_task(ndim=3).make_targets(np.zeros((2, 3, 4), np.uint8), "v.tif")
    assert target.shape == (2, 3, 4, 1)


# --------------------------------------------------------------------------- model side


def test_activate_is_softmax_over_channels() -> None:
    probs = make_task().activate(torch.randn(2, 3, 5, 5))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 5, 5))


def test_loss_comes_from_losses_module() -> None:
    pytest.importorskip("biapipe.training.losses")
    loss = make_task().loss()
    target = torch.tensor([[[[0, 1], [-1, 1]]]])
    value = loss(torch.randn(1, 2, 2, 2, requires_grad=True), target)
    assert value.ndim == 0 and torch.isfinite(value)


# --------------------------------------------------------------------------- post-processing


def test_threshold_two_classes() -> None:
    prob1 = np.array([[0.2, 0.5, 0.9]])
    prob = np.stack([1 - prob1, prob1], axis=-1)
    np.testing.assert_array_equal(semantic_postprocess(prob, 0.5), [[0, 1, 1]])
    np.testing.assert_array_equal(semantic_postprocess(prob, 0.6), [[0, 0, 1]])
    assert semantic_postprocess(prob).dtype == np.uint8


def test_argmax_for_more_classes() -> None:
    prob = np.array([[[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]]])
    np.testing.assert_array_equal(semantic_postprocess(prob), [[0, 2, 1]])


def test_min_size_removes_small_components_per_class() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:3] = 1  # 9 px: kept
    mask[6, 6] = 1  # 1 px: removed
    mask[5:7, 0:2] = 2  # 4 px of class 2: removed at min_size 5
    mask[4, 0] = 1  # 1 px of class 1 touching the class-2 block: a separate class-1 component
    prob = np.eye(3)[mask]
    out = semantic_postprocess(prob, min_size=5)
    expected = np.zeros_like(mask)
    expected[0:3, 0:3] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(semantic_postprocess(prob, min_size=0), mask)


def test_z_median_removes_single_slice_blip() -> None:
    fg = np.zeros((7, 6, 6), np.float32)
    fg[3, 1, 1] = 0.9  # single-slice blip
    fg[1:6, 3:5, 3:5] = 0.9  # a real object across five slices
    prob = np.stack([1 - fg, fg], axis=-1)
    assert semantic_postprocess(prob, z_median=0)[3, 1, 1] == 1
    out = semantic_postprocess(prob, z_median=3)
    assert out[3, 1, 1] == 0
    assert out[2:5, 3:5, 3:5].all()
    # 2D has no z: the setting is ignored rather than filtering along y
    np.testing.assert_array_equal(semantic_postprocess(prob[3], z_median=3), semantic_postprocess(prob[3]))


def test_task_postprocess_uses_config_and_roundtrips(tmp_path) -> None:
    task = make_task(ndim=3)
    task = type(task)(task.cfg.with_value("postprocess.threshold", 0.8))
    fg = np.full((2, 3, 3), 0.7, np.float32)
    fg[0, 0, 0] = 0.9
    mask = task.postprocess(np.stack([1 - fg, fg], axis=-1))
    assert mask.sum() == 1
    path = tmp_path / "m.tif"
    task.write_output(path, mask)
    back = task.read_output(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)


# --------------------------------------------------------------------------- evaluation


def test_evaluate_applies_binarize_and_ignore() -> None:
    task = make_task(binarize=True, ignore_value=9)
    label = np.array([[0, 4, 4, 9]], dtype=np.uint16)
    pred = np.array([[0, 1, 0, 1]], dtype=np.uint8)
    m = task.evaluate(pred, label)
    assert (m["inter_1"], m["union_1"]) == (1, 2)
    assert m["n_pixels"] == 3


def test_evaluate_shape_mismatch_names_file() -> None:
    with pytest.raises(InputError, match="gt.tif: prediction of shape"):
        make_task().evaluate(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), "gt.tif")


def test_summarize_mean_versus_pooled() -> None:
    task = make_task()
    small = task.evaluate(np.array([[1, 0]]), np.array([[1, 1]]))  # IoU 1/2
    big = task.evaluate(np.ones((1, 8), np.uint8), np.ones((1, 8), np.uint8))  # IoU 1, no background
    table = pd.DataFrame([{"image": "a", **small}, {"image": "b", **big}])
    s = task.summarize(table).iloc[0]
    assert s["n_images"] == 2
    assert s["mean_iou_1"] == pytest.approx(0.75)
    assert s["pooled_iou_1"] == pytest.approx(9 / 10)
    assert s["mean_dice_1"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["pooled_dice_1"] == pytest.approx(18 / 19)
    assert s["pooled_foreground_iou"] == pytest.approx(9 / 10)
    # background is absent from image b: NaN there, so the mean is image a's alone
    assert s["mean_iou_0"] == 0.0 and s["pooled_iou_0"] == 0.0
    assert s["pooled_pixel_accuracy"] == pytest.approx(9 / 10)
    assert s["mean_miou"] == pytest.approx((0.0 + 0.75) / 2)


def test_summarize_survives_csv_roundtrip(tmp_path) -> None:
    task = make_task(classes=3)
    row = task.evaluate(np.array([[0, 1]]), np.array([[0, 1]]))
    path = tmp_path / "m.csv"
    pd.DataFrame([{"image": "a", **row}]).to_csv(path, index=False)
    s = task.summarize(pd.read_csv(path)).iloc[0]
    assert math.isnan(s["mean_iou_2"]) and math.isnan(s["pooled_iou_2"])
    assert s["pooled_miou"] == 1.0
