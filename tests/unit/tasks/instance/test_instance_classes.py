"""A class per object: majority votes, per-class scores counted by hand, targets, loss, bad class images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError, InputError
from biapipe.models.packaged import ActivatedNet
from biapipe.tasks import get_task
from biapipe.tasks.instance.classes import (
    class_matching,
    classes_from_map,
    object_classes,
    one_hot,
    summarize_classes,
    vote,
)
from biapipe.training.losses import ClassedLoss, PerChannelLoss


def _boxes(shape, boxes):
    lab = np.zeros(shape, dtype=np.uint16)
    for i, (y0, y1, x0, x1) in boxes.items():
        lab[y0:y1, x0:x1] = i
    return lab


def test_true_class_is_the_majority_of_the_class_pixels_inside_the_object():
    labels = _boxes((4, 8), {1: (0, 2, 0, 4), 3: (2, 4, 4, 8)})  # ids 1 and 3 (2 absent), 8 pixels each
    classes = np.zeros((4, 8), np.uint8)
    classes[0, 0:3] = 2  # object 1: three pixels of class 2, two of class 1, the rest none
    classes[1, 0:2] = 1
    classes[2:4, 4:8] = 1  # object 3: six of class 1, two of class 2
    classes[3, 6:8] = 2
    classes[0, 6] = 2  # background: ignored
    assert object_classes(labels, classes, 2).tolist() == [0, 2, 0, 1]
    classes[0, 2] = 0  # object 1 now 2:2, a tie goes to the lower class
    assert object_classes(labels, classes, 2).tolist() == [0, 1, 0, 1]


def test_an_object_without_class_pixels_names_the_class_file():
    labels = _boxes((4, 8), {1: (0, 2, 0, 4), 2: (2, 4, 4, 8)})
    classes = (labels == 1).astype(np.uint8)
    with pytest.raises(InputError, match=r"c\.tif.*object 2 .*no class pixel"):
        object_classes(labels, classes, 2, "c.tif")


def test_vote_takes_the_class_most_pixels_predict():
    labels = _boxes((2, 6), {1: (0, 2, 0, 3), 2: (0, 2, 3, 6)})
    prob = np.zeros((2, 6, 3), np.float32)
    prob[..., 0] = 0.6  # class 1 wins everywhere ...
    prob[0, 3:6, 2] = 0.9  # ... except three of object 2's six pixels say class 3
    prob[1, 3, 1] = 0.7  # and one says class 2: 3 x class 3, 2 x class 1, 1 x class 2
    assert vote(labels, prob).tolist() == [0, 1, 3]
    # a written class map gives the same classes back
    assert classes_from_map(labels, np.array([0, 1, 3])[labels]).tolist() == [0, 1, 3]


def test_class_targets_are_one_hot_on_objects():
    labels = _boxes((3, 4), {1: (0, 1, 0, 2), 2: (2, 3, 2, 4)})
    t = one_hot(np.array([0, 2, 1])[labels], 2)
    assert t.shape == (3, 4, 2) and t.dtype == np.float32
    assert t[0, 0].tolist() == [0, 1] and t[2, 3].tolist() == [1, 0] and t[1, 1].tolist() == [0, 0]
    assert t.sum() == 4


def test_per_class_scores_by_hand():
    # truth: A (class 1), B (class 2), C (class 2); prediction: A' matches A with class 1 (right),
    # B' matches B with class 1 (wrong), C is missed, D' is an extra object of class 2, E' overlaps
    # C with IoU 8/24 (< 0.5: unmatched) with class 2
    gt = _boxes((10, 20), {1: (0, 4, 0, 4), 2: (0, 4, 6, 10), 3: (6, 10, 0, 6)})
    pred = _boxes((10, 20), {5: (0, 4, 0, 4), 6: (0, 4, 6, 9), 7: (6, 10, 12, 16), 8: (6, 10, 0, 2)})
    gt_cls = np.array([0, 1, 2, 2])
    pred_cls = np.zeros(9, np.int64)
    pred_cls[[5, 6, 7, 8]] = [1, 1, 2, 2]
    m = class_matching(pred, pred_cls, gt, gt_cls, 2)
    # matched at 0.5: A-A' (IoU 1), B-B' (12/16 = 0.75); C-E' is 8/24 = 1/3
    assert m["class_matched"] == 2 and m["class_accuracy"] == 0.5
    # class 1: TP 1 (A); FP 1 (B' says 1, B is 2); FN 0
    assert (m["class1_tp"], m["class1_fp"], m["class1_fn"]) == (1, 1, 0)
    assert m["class1_f1"] == pytest.approx(2 / 3) and m["class1_precision"] == 0.5 and m["class1_recall"] == 1
    # class 2: TP 0; FP 2 (D', E'); FN 2 (B, C)
    assert (m["class2_tp"], m["class2_fp"], m["class2_fn"]) == (0, 2, 2)
    assert m["class2_f1"] == 0 and m["class2_precision"] == 0


def test_pooled_class_figures_sum_counts_over_images():
    metrics = pd.DataFrame([
        {"image": "a", "class_matched": 4, "class1_tp": 2, "class1_fp": 1, "class1_fn": 0,
         "class2_tp": 1, "class2_fp": 0, "class2_fn": 3},
        {"image": "b", "class_matched": 2, "class1_tp": 0, "class1_fp": 1, "class1_fn": 1,
         "class2_tp": 2, "class2_fp": 0, "class2_fn": 0},
        {"image": "c"},  # scored without class images: left out
    ])
    row = summarize_classes(metrics, 2)
    # class 1: TP 2, FP 2, FN 1 -> F1 4/7; class 2: TP 3, FP 0, FN 3 -> F1 6/9
    assert row["pooled_class1_f1"] == pytest.approx(4 / 7)
    assert row["pooled_class2_f1"] == pytest.approx(2 / 3)
    assert row["pooled_class2_recall"] == pytest.approx(0.5)
    assert row["pooled_class_f1_mean"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert row["pooled_class_accuracy"] == pytest.approx(5 / 6)


def test_classed_loss_adds_cross_entropy_on_objects_only():
    maps = PerChannelLoss(["bce"], [0.0])  # weight 0: only the class term counts
    loss = ClassedLoss(maps, 1, class_weight=2.0)
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, 0, 0] = math.log(3.0)  # pixel (0,0): p(class 1) = 3/4
    target = torch.zeros(1, 3, 2, 2)
    target[0, 1, 0, 0] = 1  # (0,0) is class 1
    target[0, 2, 0, 1] = 1  # (0,1) is class 2, p = 1/2; the other two pixels are background
    expected = 2.0 * (-math.log(0.75) - math.log(0.5)) / 2
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(logits, torch.zeros(1, 3, 2, 2))) == 0.0  # a patch without objects


def test_exported_activation_softmaxes_the_class_channels_only():
    net = ActivatedNet(torch.nn.Identity(), [["sigmoid"], ["softmax_group"], ["softmax_group"]])
    y = net(torch.tensor([[0.0, math.log(3.0), 0.0]]).reshape(1, 3, 1, 1)).flatten().tolist()
    assert y == pytest.approx([0.5, 0.75, 0.25])


# --------------------------------------------------------------------------- the task


def _data(tmp_path, classes_value=1, class_shape=None):
    labels = _boxes((16, 16), {1: (1, 6, 1, 6), 2: (8, 14, 8, 14)})
    for split in ("train", "test"):
        (tmp_path / split / "images").mkdir(parents=True)
        tifffile.imwrite(tmp_path / split / "images" / "a.tif", np.zeros((16, 16), np.uint8))
        (tmp_path / split / "labels").mkdir()
        (tmp_path / split / "classes").mkdir()
        tifffile.imwrite(tmp_path / split / "labels" / "a.tif", labels)
        cls = (labels > 0).astype(np.uint8) * classes_value
        if class_shape is not None:
            cls = np.zeros(class_shape, np.uint8)
        tifffile.imwrite(tmp_path / split / "classes" / "a.tif", cls)
    data = {s: {k: str(tmp_path / s / k) for k in ("images", "labels", "classes")} for s in ("train", "test")}
    cfg = validate_config({"experiment": "x", "workflow": "instance", "ndim": 2, "data": data,
                           "targets": {"instance": {"classes": 2}}})
    return get_task(cfg), data, str(tmp_path / "test" / "labels" / "a.tif")


def test_task_targets_have_the_class_channels(tmp_path):
    task, data, _ = _data(tmp_path, classes_value=2)
    sample = task.split_samples("train", data["train"])[0]
    target = task.make_targets(task.read_label(sample.label, (16, 16)), sample.label)
    assert target.shape == (16, 16, 4) and task.out_channels() == 4
    assert target[..., 3].sum() == 25 + 36 and target[..., 2].sum() == 0


def test_class_value_above_n_stops_naming_the_class_file(tmp_path):
    task, _, label = _data(tmp_path, classes_value=3)
    with pytest.raises(InputError, match=r"test/classes/a\.tif.*value 3; classes are 1\.\.2"):
        task.check_label(label, (16, 16))


def test_class_image_of_another_shape_stops_at_the_header_check(tmp_path):
    task, _, label = _data(tmp_path, class_shape=(16, 15))
    with pytest.raises(InputError, match=r"test/classes/a\.tif.*shape \(16, 15\) does not match"):
        task.check_label_header(label, (16, 16), np.dtype(np.uint16), "a.tif", (16, 16, 1))
    with pytest.raises(InputError, match=r"test/classes/a\.tif.*does not match"):
        task.check_label(label, (16, 16))


def test_training_split_without_class_folder_is_a_config_error(tmp_path):
    task, data, _ = _data(tmp_path)
    with pytest.raises(ConfigError, match="data.train.classes"):
        task.split_samples("train", {**data["train"], "classes": None})
    (tmp_path / "train" / "classes" / "a.tif").rename(tmp_path / "train" / "classes" / "b.tif")
    with pytest.raises(InputError, match="labels/a.tif.*no class image"):
        task.split_samples("train", data["train"])


def test_demo_data_comes_with_class_images_of_both_classes(tmp_path):
    cfg = validate_config({"experiment": "x", "workflow": "instance", "ndim": 2, "targets": {"instance": {"classes": 2}},
                           "data": {"demo": {"folder": str(tmp_path / "demo"), "n_train": 2, "n_val": 1, "n_test": 1,
                                             "size": 48}}})
    task = get_task(cfg)
    task.write_demo()
    found = []
    for sample in task.demo_samples():
        path = task.class_files.path_for(sample.label)
        labels, classes = tifffile.imread(sample.label), tifffile.imread(path)
        assert path.endswith(f"{sample.split}/classes/{sample.id}.tif") and classes.shape == labels.shape
        by_id = object_classes(labels, classes, 2, path)  # every object has a class
        found.extend(by_id[1:][by_id[1:] > 0].tolist())
    assert set(found) == {1, 2}
