"""Training images larger than memory: block-wise preparation equals whole-image preparation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.large.prepare import dataset_stats_bounded, prepare_blockwise
from biapipe.tasks import get_task
from biapipe.workflow import stages

from .test_large_volumes import ellipsoids

SHAPE = (24, 80, 80)


def small_chunks(shape):
    return (8, 32, 32, shape[-1])


def task_for(workflow: str, **targets):
    cfg = {"experiment": "t", "workflow": workflow, "ndim": 3, "data": {"train": {"images": "x"}}}
    if targets:
        cfg["targets"] = targets
    return get_task(validate_config(cfg))


def write_inputs(tmp_path):
    lab = ellipsoids(SHAPE, n=40, radius=7)
    rng = np.random.default_rng(1)
    image = (1000 * (lab > 0) + rng.integers(0, 400, SHAPE)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)
    return str(tmp_path / "img.tif"), lab


def both_ways(tmp_path, task, image, label):
    """The whole-image stage and block-wise preparation with 8x32x32 chunks, same dataset statistics."""
    whole = tmp_path / "whole"
    norm = task.cfg["normalize"].replace(method="minmax")
    stats_path = tmp_path / "stats.json"
    imageio.write_json(stats_path, dataset_stats_bounded([image], 3, None, norm, memory_gb=4))
    stages.prepare(image=image, label=label, image_out=str(whole / "i.zarr"), targets_out=str(whole / "t.zarr"),
                   task=task, axes=None, normalize=norm, memory_gb=4, patch_size=[8, 16, 16],
                   stats=str(stats_path))
    prepare_blockwise(image, label, str(tmp_path / "b_i.zarr"), str(tmp_path / "b_t.zarr"), task, None, norm,
                      imageio.read_json(stats_path), 2e-4, small_chunks)
    return [(imageio.read_array(whole / n), imageio.read_array(tmp_path / f"b_{n}")) for n in ("i.zarr", "t.zarr")]


@pytest.mark.parametrize("workflow", ["semantic", "instance"])
def test_label_image_targets_by_block_equal_the_whole_image(tmp_path, workflow) -> None:
    image, lab = write_inputs(tmp_path)
    label = tmp_path / "lab.tif"
    tifffile.imwrite(label, lab if workflow == "instance" else (lab > 0).astype(np.uint8))
    task = task_for(workflow)
    (img_w, img_b), (tgt_w, tgt_b) = both_ways(tmp_path, task, image, str(label))
    np.testing.assert_array_equal(img_w, img_b)
    assert tgt_w.dtype == tgt_b.dtype and tgt_w.shape == tgt_b.shape
    np.testing.assert_allclose(tgt_b, tgt_w, atol=1e-6)
    assert tgt_w[..., 0].sum() > 1000  # objects were drawn


def test_point_targets_by_block_equal_the_whole_image(tmp_path) -> None:
    image, _ = write_inputs(tmp_path)
    rng = np.random.default_rng(5)
    points = pd.DataFrame({"axis-0": rng.uniform(0, SHAPE[0] - 1, 60), "axis-1": rng.uniform(0, SHAPE[1] - 1, 60),
                           "axis-2": rng.uniform(0, SHAPE[2] - 1, 60)})
    points.loc[0] = [7.6, 31.5, 63.7]  # on a block face
    points.to_csv(tmp_path / "img.csv", index=False)
    task = task_for("detection", detection={"kind": "gaussian", "sigma": 2.0})
    (_, _), (tgt_w, tgt_b) = both_ways(tmp_path, task, image, str(tmp_path / "img.csv"))
    np.testing.assert_allclose(tgt_b, tgt_w, atol=1e-6)
    assert np.isclose(tgt_w.max(), 1.0)


def test_statistics_read_block_by_block_equal_whole_reads(tmp_path) -> None:
    image, _ = write_inputs(tmp_path)
    for method in ("minmax", "zscore"):
        cfg = task_for("semantic").cfg["normalize"].replace(method=method)
        whole = dataset_stats_bounded([image, image], 3, None, cfg, memory_gb=4)
        blocks = dataset_stats_bounded([image, image], 3, None, cfg, memory_gb=1e-4)
        assert blocks.keys() == whole.keys()
        for key, value in whole.items():
            if isinstance(value, list):
                np.testing.assert_allclose(blocks[key], value, rtol=1e-6)
            else:
                assert blocks[key] == value


def test_a_training_image_over_train_memory_gb_is_prepared_by_block(tmp_path) -> None:
    image, lab = write_inputs(tmp_path)
    label = tmp_path / "lab.tif"
    tifffile.imwrite(label, lab)
    task = task_for("instance")
    kwargs = dict(image=image, label=str(label), task=task, axes=None, normalize=task.cfg["normalize"],
                  patch_size=[8, 16, 16])
    stages.prepare(image_out=str(tmp_path / "a.zarr"), targets_out=str(tmp_path / "at.zarr"), memory_gb=4, **kwargs)
    stages.prepare(image_out=str(tmp_path / "b.zarr"), targets_out=str(tmp_path / "bt.zarr"), memory_gb=0.01, **kwargs)
    # per-image percentiles come from a bounded sample when read by block: close, not identical
    np.testing.assert_allclose(imageio.read_array(tmp_path / "b.zarr"), imageio.read_array(tmp_path / "a.zarr"),
                               atol=0.02)
    np.testing.assert_allclose(imageio.read_array(tmp_path / "bt.zarr"), imageio.read_array(tmp_path / "at.zarr"),
                               atol=1e-6)


def test_a_bad_label_region_is_named(tmp_path) -> None:
    image, lab = write_inputs(tmp_path)
    label = tmp_path / "lab.tif"
    tifffile.imwrite(label, lab[:, :40])
    with pytest.raises(InputError, match="lab.tif.*does not match"):
        prepare_blockwise(image, str(label), str(tmp_path / "i.zarr"), str(tmp_path / "t.zarr"), task_for("instance"),
                          None, task_for("instance").cfg["normalize"], None, 2e-4, small_chunks)
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob(".*tmp*"))
