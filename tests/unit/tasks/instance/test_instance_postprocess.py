"""Instance post-processing: splitting, Voronoi, clean-up, object table, tuning, and the task's prediction side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError, InputError
from biapipe.tasks import get_task
from biapipe.tasks.instance.metrics import matching_metrics
from biapipe.tasks.instance.postprocess import (
    InstanceParams,
    NoSeedsWarning,
    clean_labels,
    instance_postprocess,
    object_table,
    relabel,
)
from biapipe.tasks.instance.targets import TargetSpec, instance_targets
from biapipe.tasks.instance.task import tuned_thresholds_path
from biapipe.tasks.instance.tuning import tune_thresholds

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _two_disks(shape=(40, 60), centres=((20, 20), (20, 36)), radius=10):
    """Two overlapping disks; the overlap goes to the nearer centre."""
    yy, xx = np.indices(shape)
    d = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    lab = np.where(d.min(0) <= radius, d.argmin(0) + 1, 0).astype(np.uint16)
    return lab


def _stack(*maps):
    return np.stack(maps, axis=-1).astype(np.float32)


def test_watershed_splits_two_touching_disks_from_an_unsplit_mask():
    lab = _two_disks()
    fg = (lab > 0).astype(np.float32)
    dist = ndimage.distance_transform_edt(fg)                # of the union: two peaks, one saddle
    pred = _stack(fg, dist / dist.max())
    out = instance_postprocess(pred, ["foreground", "distance"], InstanceParams.defaults(seed_distance=0.7))
    assert out.dtype == np.uint16 and out.max() == 2
    assert np.array_equal(out > 0, lab > 0)
    assert matching_metrics(out, lab)["f1@0.9"] == 1.0


def test_foreground_and_contour_split_touching_disks_in_3d():
    lab = np.stack([np.zeros((40, 60), np.uint16)] + [_two_disks()] * 4 + [np.zeros((40, 60), np.uint16)])
    pred = instance_targets(lab, TargetSpec.defaults(channels=("foreground", "contour")))
    out = instance_postprocess(pred, ["foreground", "contour"])
    assert out.max() == 2 and matching_metrics(out, lab)["f1@0.9"] == 1.0
    per_slice = instance_postprocess(pred, ["foreground", "contour"], InstanceParams.defaults(slice_by_slice=True))
    assert np.array_equal(per_slice, out)                    # seeds numbered in 3D: ids consistent through z


def test_voronoi_fills_the_foreground_or_the_image():
    fg = np.zeros((30, 30), np.float32)
    fg[5:25, 3:27] = 1
    cen = np.zeros_like(fg)
    cen[14:17, 8:11] = cen[14:17, 20:23] = 1
    pred = _stack(fg, cen)
    params = InstanceParams.defaults(method="voronoi", min_seed_size=1)
    out = instance_postprocess(pred, ["foreground", "centroid"], params)
    assert np.array_equal(out > 0, fg > 0) and set(np.unique(out)) == {0, 1, 2}
    assert (out[:, :15][fg[:, :15] > 0] == out[15, 9]).all()  # left half belongs to the left seed
    full = instance_postprocess(pred, ["foreground", "centroid"],
                                InstanceParams.defaults(method="voronoi", voronoi_fill="image", min_seed_size=1))
    assert (full > 0).all()


def test_border_clearing_and_size_filters():
    lab = np.zeros((20, 20), np.int32)
    lab[0:4, 5:9] = 7            # touches the top border, 16 px
    lab[8:10, 8:10] = 3          # 4 px
    lab[12:19, 2:12] = 9         # 70 px
    keep = InstanceParams.defaults(clear_border=True)
    assert set(np.unique(clean_labels(lab, keep))) == {0, 1, 2}
    assert np.unique(lab[clean_labels(lab, keep) > 0]).tolist() == [3, 9]
    sized = clean_labels(lab, InstanceParams.defaults(min_size=5, max_size=50))
    assert np.unique(lab[sized > 0]).tolist() == [7]
    assert clean_labels(lab, InstanceParams.defaults()).max() == 3   # relabelled 1..N


def test_fill_holes_and_dtype():
    lab = np.zeros((10, 10), np.int32)
    lab[1:8, 1:8] = 4
    lab[3:5, 3:5] = 0
    assert (clean_labels(lab, InstanceParams.defaults(fill_holes=True))[1:8, 1:8] == 1).all()
    many = np.arange(70_000, dtype=np.int64).reshape(280, 250)
    assert relabel(many).dtype == np.uint32 and relabel(many).max() == 69_999


def test_no_seeds_warns_with_the_config_keys():
    pred = _stack(np.full((10, 10), 0.45, np.float32), np.zeros((10, 10), np.float32))
    with pytest.warns(NoSeedsWarning, match=r"postprocess\.instance\.seed_foreground=0\.5"):
        out = instance_postprocess(pred, ["foreground", "contour"], InstanceParams.defaults(mask_threshold=0.3))
    assert out.max() == 0


def test_otsu_thresholds_segment_noisy_maps():
    rng = np.random.default_rng(0)
    lab = _two_disks()
    target = instance_targets(lab, TargetSpec.defaults(channels=("foreground", "contour")))
    pred = np.clip(0.15 + 0.6 * target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    params = InstanceParams.defaults(seed_foreground="otsu", seed_contour="otsu", mask_threshold="otsu", fill_holes=True)
    out = instance_postprocess(pred, ["foreground", "contour"], params)
    assert matching_metrics(out, lab)["f1@0.7"] == 1.0


def _dim_pair():
    """Two touching disks as a network unsure of their interiors predicts them: the contour map is
    0.8 on their outline (foreground 0.45 there), 0.1 and 0.11 inside them (above a fixed seed threshold
    of 0.05) and 0.3 on the line where they meet."""
    lab = _two_disks()
    fg = (lab > 0).astype(np.float32)
    contour = np.choose(lab, [0.0, 0.1, 0.11]).astype(np.float32)
    contour[:, 27:29] = np.where(lab[:, 27:29] > 0, 0.3, 0.0)
    outline = (lab > 0) & ~ndimage.binary_erosion(lab > 0)
    contour[outline] = 0.8
    fg[outline] = 0.45                                    # less sure on the outline, as networks are
    return lab, _stack(fg, contour)


def test_contour_basins_seed_dim_objects_that_a_fixed_threshold_misses_or_merges():
    lab, pred = _dim_pair()
    channels = ["foreground", "contour"]
    with pytest.warns(NoSeedsWarning):
        assert instance_postprocess(pred, channels, InstanceParams.defaults(seed_contour=0.05, mask_threshold=0.4)).max() == 0
    assert instance_postprocess(pred, channels, InstanceParams.defaults(seed_contour=0.35, mask_threshold=0.4)).max() == 1  # merged
    out = instance_postprocess(pred, channels, InstanceParams.defaults(seed_contour=0.05, seed_contour_depth=0.05,
                                                                  mask_threshold=0.4))
    assert out.max() == 2 and matching_metrics(out, lab)["f1@0.8"] == 1.0


def test_contour_basins_shallower_than_the_depth_do_not_split_an_object():
    lab, pred = _dim_pair()
    ridge = (lab[:, 27:29] > 0) & (pred[:, 27:29, 1] < 0.8)
    pred[:, 27:29, 1][ridge] = 0.13                                    # a ridge 0.02 above the right interior
    params = InstanceParams.defaults(seed_contour_depth=0.05, mask_threshold=0.4)
    assert instance_postprocess(pred, ["foreground", "contour"], params).max() == 1
    assert instance_postprocess(pred, ["foreground", "contour"], params.with_thresholds({"seed_contour_depth": 0.01})).max() == 2


def test_tuning_keeps_the_planned_basin_depth_on_a_tie_and_leaves_it_when_validation_says_so():
    lab, pred = _dim_pair()
    pred[..., 0] *= 0.4                                   # a timid network: foreground never above 0.4
    params = InstanceParams.defaults(seed_contour_depth=0.05)
    res = tune_thresholds([pred], [lab], ["foreground", "contour"], params)
    assert res["f1_initial"] == 0.0 and res["f1"] == 1.0
    assert res["thresholds"]["seed_contour_depth"] == 0.05  # fixed thresholds do as well: basins stay
    lab, pred = _dim_pair()                               # a weak ridge inside what is truly one object
    ridge = (lab[:, 27:29] > 0) & (pred[:, 27:29, 1] < 0.8)
    pred[:, 27:29, 1][ridge] = 0.13
    one = (lab > 0).astype(np.uint16)
    res = tune_thresholds([pred], [one], ["foreground", "contour"], params.with_thresholds({"seed_contour_depth": 0.01}))
    assert res["f1_initial"] < 1.0 and res["f1"] == 1.0 and res["thresholds"]["seed_contour_depth"] != 0.01


def test_wrong_channel_count_is_a_config_error():
    with pytest.raises(ConfigError, match="targets.instance.channels"):
        instance_postprocess(np.zeros((4, 4, 3), np.float32), ["foreground", "contour"])


def test_object_table():
    lab = np.zeros((10, 12), np.uint16)
    lab[1:3, 1:5] = 1
    lab[5:9, 6:8] = 4
    image = np.zeros((10, 12), np.float32)
    image[lab == 4] = 2.0
    table = object_table(lab, image, voxel_size=(0.5, 0.5))
    assert table["label"].tolist() == [1, 4] and table["area"].tolist() == [8, 8]
    assert table["area_scaled"].tolist() == [2.0, 2.0]
    assert table[["centroid_y", "centroid_x"]].values.tolist() == [[1.5, 2.5], [6.5, 6.5]]
    assert table[["bbox_y0", "bbox_y1", "bbox_x0", "bbox_x1"]].values.tolist() == [[1, 3, 1, 5], [5, 9, 6, 8]]
    assert table["mean_intensity"].tolist() == [0.0, 2.0]
    assert "volume" in object_table(lab[None]).columns and len(object_table(np.zeros((3, 3), np.uint8))) == 0


def test_tuning_finds_thresholds_that_work():
    lab = _two_disks()
    target = instance_targets(lab, TargetSpec.defaults(channels=("foreground", "contour")))
    dim = target * 0.4                                       # a timid network: foreground never above 0.4
    res = tune_thresholds([dim], [lab], ["foreground", "contour"])
    assert res["f1_initial"] == 0.0 and res["f1"] == 1.0
    assert res["thresholds"]["seed_foreground"] < 0.4 and res["thresholds"]["mask_threshold"] < 0.4


def _task_cfg(tmp_path, **pp):
    return validate_config({"experiment": "t", "workflow": "instance", "ndim": 2, "results": str(tmp_path),
                            "data": {"demo": {}}, "postprocess": {"instance": pp},
                            "evaluate": {"iou_thresholds": [0.5, 0.75]}})


def test_task_prediction_side_with_tuned_thresholds(tmp_path):
    lab = _two_disks()
    task = get_task(_task_cfg(tmp_path))
    pred = task.make_targets(lab) * 0.4
    pred_path, lab_path = tmp_path / "p.zarr", tmp_path / "l.tif"
    imageio.write_zarr(pred_path, pred)
    tifffile.imwrite(lab_path, lab)
    tuned = get_task(_task_cfg(tmp_path, tuned=True))
    with pytest.raises(InputError, match="instance_thresholds.json.*tuning"):
        tuned.postprocess(pred)
    result = task.tune_files([pred_path], [lab_path], tuned_thresholds_path(task.cfg))
    assert tuned_thresholds_path(task.cfg).is_file() and result["f1"] == 1.0
    out = tuned.postprocess(pred)
    task.write_output(tmp_path / "o.tif", out)
    back = task.read_output(tmp_path / "o.tif")
    metrics = task.evaluate(back, lab)
    assert metrics["f1@0.5"] == 1.0 and "f1@0.75" in metrics and "f1@0.1" not in metrics
    summary = task.summarize(pd.DataFrame([metrics, metrics]))
    assert summary.loc[0, "pooled_f1@0.5"] == 1.0 and summary.loc[0, "tp@0.5"] == 4


def test_real_dsb_label_survives_targets_and_postprocess():
    folder = SHARED / "dsb2018_train_fluo" / "labels"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (needs ../shared/data beside the checkout)")
    path = sorted(folder.glob("*.tif"))[0]
    task = get_task(validate_config({"experiment": "t", "workflow": "instance", "ndim": 2, "data": {"demo": {}}}))
    label = imageio.read_label(path, 2)
    out = task.postprocess(task.make_targets(label, path))    # the targets as a perfect prediction
    assert task.evaluate(out, label, path)["f1@0.5"] >= 0.95
