"""A class per object in volumes processed block by block: targets, votes, class maps and
per-class scores equal the whole-volume ones, also for objects whose pixels disagree from
block to block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from skimage.segmentation import find_boundaries

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.large.plan import postprocess_plan
from biapipe.tasks import get_task
from biapipe.tasks.instance.classes import object_classes
from biapipe.tasks.instance import class_files
from biapipe.tasks.instance.class_files import TABLE_BYTES
from biapipe.tasks.instance.classes_large import ClassVotes, lookup, true_class_table
from biapipe.tasks.instance.metrics import matching_metrics

from .test_large_volumes import SHAPE, ellipsoids
from .test_prepare import both_ways, write_inputs

#: pixels at x >= FLIP take the other class: the last 16 columns, a block of their own with 32-wide chunks
FLIP = 64


def class_image(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class per pixel, each object's nominal class): odd ids class 1, even ids class 2, the
    other class at x >= FLIP, so an object mostly left of FLIP keeps its class but loses the
    vote of the block right of it."""
    by_id = 1 + (np.arange(int(lab.max()) + 1) + 1) % 2
    by_id[0] = 0
    cls = by_id[lab]
    flip = (lab > 0) & (np.indices(lab.shape)[-1] >= FLIP)
    cls[flip] = 3 - cls[flip]
    return cls.astype(np.uint8), by_id


def cut_objects_whose_right_part_disagrees(lab: np.ndarray, cls: np.ndarray) -> list[int]:
    """Objects across x = FLIP whose majority differs between the whole and the part right of FLIP."""
    whole = object_classes(lab, cls, 2)
    right = object_classes(lab[..., FLIP:], cls[..., FLIP:], 2)
    return [i for i in range(1, len(right)) if right[i] and whole[i] != right[i]]


def classed_task(tmp_path, lab: np.ndarray, cls: np.ndarray, test_classes: bool = True, **predict):
    """An instance task with 2 classes whose class tables are read in blocks of 4 planes."""
    for kind, data in (("labels", lab), ("classes", cls)):
        (tmp_path / kind).mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / kind / "lab.tif", data)
    split = {"images": str(tmp_path), "labels": str(tmp_path / "labels"), "classes": str(tmp_path / "classes")}
    test = split
    if not test_classes:  # a test split of its own, without class images
        (tmp_path / "bare").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "bare" / "lab.tif", lab)
        test = {"images": str(tmp_path), "labels": str(tmp_path / "bare")}
    cfg = validate_config({"experiment": "t", "workflow": "instance", "ndim": 3, "data": {"train": split, "test": test},
                           "targets": {"instance": {"channels": ["foreground", "contour"], "classes": 2}},
                           "postprocess": {"instance": {"min_size": 4}}, "predict": predict,
                           "train": {"memory_gb": 4 * 80 * 80 * TABLE_BYTES / 2**30}})
    return get_task(cfg), str(tmp_path / ("labels" if test_classes else "bare") / "lab.tif")


@pytest.fixture
def table_blocks(monkeypatch):
    """How many blocks each class table was counted over."""
    seen: list[int] = []

    def spy(labels, classes, blocks, *args):
        seen.append(len(blocks))
        return true_class_table(labels, classes, blocks, *args)

    monkeypatch.setattr(class_files, "true_class_table", spy)
    return seen


def test_votes_add_over_blocks_and_keep_sparse_ids():
    votes = ClassVotes(3)
    labels = np.array([0, 7, 7, 7, 2**40, 2**40, 5])
    votes.add(labels[:4], np.array([0, 2, 2, 1, 0, 0, 0])[:4])
    votes.add(labels[4:], np.array([3, 1, 0]))
    ids, classes = votes.majority()
    assert ids.tolist() == [5, 7, 2**40] and classes.tolist() == [0, 2, 1]  # tie 3/1 goes to the lower class
    assert lookup(ids, classes, np.array([[0, 7], [2**40, 9]])).tolist() == [[0, 2], [1, 0]]


def test_block_targets_take_the_class_of_the_whole_object(tmp_path, table_blocks):
    image, lab = write_inputs(tmp_path)
    cls, _ = class_image(lab)
    assert len(cut_objects_whose_right_part_disagrees(lab, cls)) >= 2  # a per-block vote would get these wrong
    task, label = classed_task(tmp_path, lab, cls)
    (_, _), (whole, blocks) = both_ways(tmp_path, task, image, label)
    assert whole.shape == SHAPE + (4,)
    truth = object_classes(lab, cls, 2)[lab]
    np.testing.assert_array_equal(whole[..., 2:].argmax(-1)[lab > 0] + 1, truth[lab > 0])
    np.testing.assert_array_equal(blocks, whole)
    assert table_blocks and min(table_blocks) >= 6  # the table itself was counted block by block


def test_bad_values_in_a_later_block_name_the_file(tmp_path, table_blocks):
    _, lab = write_inputs(tmp_path)
    cls, _ = class_image(lab)
    cls[-1, -1, -1] = 5
    task, label = classed_task(tmp_path, lab, cls)
    with pytest.raises(InputError, match=r"classes/lab\.tif.*value 5"):
        task.class_table(label, str(tmp_path / "classes" / "lab.tif"))
    assert table_blocks[0] > 1  # the bad value sits in the last of several blocks
    cls, _ = class_image(lab)
    cls[lab == lab[-1].max()] = 0  # an object of the last planes loses its class pixels
    task, label = classed_task(tmp_path, lab, cls)
    with pytest.raises(InputError, match=r"classes/lab\.tif.*no class pixel"):
        task.class_table(label, str(tmp_path / "classes" / "lab.tif"))


def prediction(lab: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Perfect maps, and class probabilities of 0.8 for the pixel's class of ``cls``."""
    fg = (lab > 0).astype(np.float32)
    contour = find_boundaries(lab, mode="inner").astype(np.float32)
    p1 = np.where(cls == 1, 0.8, 0.2).astype(np.float32)
    return np.stack([fg, contour, p1, 1 - p1], axis=-1)


def test_large_classes_equal_the_whole_volume(tmp_path):
    lab = ellipsoids(seed=3)
    truth, _ = class_image(lab)
    assert len(cut_objects_whose_right_part_disagrees(lab, truth)) >= 2  # a per-block vote would get these wrong
    pred = prediction(lab, truth)
    # the prediction's class vote of some objects differs from their true class: class scores mean something
    wrong = np.isin(lab, [3, 8, 13])
    pred[..., 2:][wrong] = pred[..., 2:][wrong][..., ::-1]
    task, label = classed_task(tmp_path, lab, truth, memory_gb=0.0005, halo=6)
    zarr.create_array(store=str(tmp_path / "pred.zarr"), data=pred, chunks=(8, 32, 32, 4))
    store = zarr.open_array(str(tmp_path / "pred.zarr"), mode="r")
    assert len(postprocess_plan(store.shape, store.chunks, task.cfg["predict"])) >= 4
    out = tmp_path / "out"
    side = {"objects": str(out / "objects" / "lab.csv"), "classes": str(out / "classes" / "lab.tif")}
    task.postprocess_large(tmp_path / "pred.zarr", out / "labels" / "lab.ome.zarr", side, None, None)

    whole = task.postprocess(pred)
    big = np.asarray(zarr.open_group(str(out / "labels" / "lab.ome.zarr"), mode="r")["0"])
    assert matching_metrics(big, whole.labels, [0.5])["f1@0.5"] == 1.0  # the same objects (seams move some pixels)
    class_map = tifffile.imread(side["classes"])
    table = pd.read_csv(side["objects"])
    assert len(table) == len(np.unique(big)) - 1
    for obj, cls in zip(table["label"], table["class"]):
        inside = big == obj
        twin = np.bincount(whole.labels[inside]).argmax()  # the whole-volume object it is
        assert cls == whole.classes[twin] and set(np.unique(class_map[inside])) == {cls}
    assert not class_map[big == 0].any()

    scores = task.evaluate_large(out / "labels" / "lab.ome.zarr", label)
    expected = task.evaluate(whole, imageio.read_label(label, 3), label)
    counted = [k for k in expected if k.startswith(("class", "tp@", "fp@", "fn@", "f1@", "n_"))]
    assert len(counted) > 20 and {k: scores[k] for k in counted} == {k: expected[k] for k in counted}
    assert scores["mean_iou@0.5"] == pytest.approx(expected["mean_iou@0.5"], abs=1e-3)  # seams move a few pixels
    untyped, bare = classed_task(tmp_path, lab, truth, test_classes=False, memory_gb=0.0005, halo=6)
    plain = untyped.evaluate_large(out / "labels" / "lab.ome.zarr", bare)  # a test split without class images
    assert not [k for k in plain if k.startswith("class")] and plain["f1@0.5"] == expected["f1@0.5"]
    matched = expected["class_matched"]  # of 40 true objects; the 3 flipped ones have the wrong class
    assert matched >= 38 and expected["class_accuracy"] == pytest.approx((matched - 3) / matched)
