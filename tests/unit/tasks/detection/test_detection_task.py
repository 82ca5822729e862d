"""Point detection: reading point tables, targets, peak finding, suppression, matching, tuning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.tasks import get_task
from biapipe.tasks.detection.metrics import (
    assignments_table,
    detection_metrics,
    match_points,
    summarize_detection,
)
from biapipe.tasks.detection.points import (
    PointSet,
    ball_stencil,
    class_key,
    point_targets,
    read_points,
)
from biapipe.tasks.detection.postprocess import (
    DetectionParams,
    detect_points,
    find_peaks,
    suppress_close_points,
    tune_detection_threshold,
)


def make_cfg(ndim: int = 2, tmp: Path | None = None, **sections) -> dict:
    cfg = {"experiment": "det", "workflow": "detection", "ndim": ndim, "data": {"demo": {}}}
    if tmp is not None:
        cfg["results"] = str(tmp / "results")
    for key, value in sections.items():
        cfg[key] = value
    return validate_config(cfg)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pts(coords) -> np.ndarray:
    return np.asarray(coords, dtype=float).reshape(len(coords), -1)


# --------------------------------------------------------------------------- metrics


def test_point_exactly_at_tolerance_matches():
    m = detection_metrics(pts([[0, 0]]), [0], pts([[0, 3]]), [0], tolerance=3.0)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["loc_error"] == 3.0
    m = detection_metrics(pts([[0, 0]]), [0], pts([[0, 3.001]]), [0], tolerance=3.0)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)


def test_tolerance_in_physical_units_survives_rounding():
    # 30 pixels of 0.1 is 3.0000000000000004 in floats: still "exactly" the tolerance
    match = match_points(pts([[0, 0]]), pts([[0, 30]]), 3.0, voxel_size=[0.1, 0.1])
    assert match.tp == 1


def test_two_predictions_near_one_truth_give_one_tp_one_fp():
    m = detection_metrics(pts([[10, 10], [10, 12]]), [0, 0], pts([[10, 11.2]]), [0], tolerance=3.0)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["f1"] == pytest.approx(2 / 3)
    match = match_points(pts([[10, 10], [10, 12]]), pts([[10, 11.2]]), 3.0)
    assert match.pred.tolist() == [1]  # the closer one


def test_matching_maximises_the_number_of_matches():
    # greedy nearest-first would pair p0 with g1 (0.8) and leave p1 alone; optimal pairs both
    pred, gt = pts([[0, 1.2], [0, 3.0]]), pts([[0, 0.0], [0, 2.0]])
    match = match_points(pred, gt, tolerance=1.5)
    assert match.tp == 2
    assert sorted(zip(match.pred.tolist(), match.gt.tolist())) == [(0, 0), (1, 1)]


def test_matching_minimises_distance_among_maximal_matchings():
    pred, gt = pts([[0, 0], [0, 4]]), pts([[0, 1], [0, 3]])
    match = match_points(pred, gt, tolerance=5.0)
    assert sorted(zip(match.pred.tolist(), match.gt.tolist())) == [(0, 0), (1, 1)]
    assert match.distance.sum() == pytest.approx(2.0)


def test_empty_prediction():
    m = detection_metrics(np.zeros((0, 2)), [], pts([[1, 1], [5, 5], [9, 9]]), [0, 0, 0], tolerance=2)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 3)
    assert math.isnan(m["precision"]) and m["recall"] == 0 and m["f1"] == 0 and math.isnan(m["loc_error"])


def test_empty_ground_truth():
    m = detection_metrics(pts([[1, 1], [5, 5]]), [0, 0], np.zeros((0, 2)), [], tolerance=2)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 0)
    assert m["precision"] == 0 and math.isnan(m["recall"]) and m["f1"] == 0


def test_both_empty_is_nothing_to_measure():
    m = detection_metrics(np.zeros((0, 2)), [], np.zeros((0, 2)), [], tolerance=2)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1", "loc_error"))


def test_per_class_matching_needs_the_same_class():
    pred, gt = pts([[10, 10], [30, 30]]), pts([[10, 11], [30, 30]])
    m = detection_metrics(pred, [1, 0], gt, [0, 0], tolerance=3, class_names=["a", "b"])
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)  # class-agnostic
    assert (m["tp_class_a"], m["fp_class_a"], m["fn_class_a"]) == (1, 0, 1)
    assert (m["tp_class_b"], m["fp_class_b"], m["fn_class_b"]) == (0, 1, 0)
    assert m["class_accuracy"] == 0.5
    assert m["f1_class_a"] == pytest.approx(2 / 3) and m["f1_class_b"] == 0


def test_anisotropic_voxel_size_changes_a_match():
    pred, gt = pts([[0, 0, 0]]), pts([[1, 0, 0]])  # one slice apart
    assert match_points(pred, gt, 1.5).tp == 1
    assert match_points(pred, gt, 1.5, voxel_size=[2.0, 0.5, 0.5]).tp == 0
    # and the other way round: 2 pixels in x with 0.5 pixels is 1.0 physical
    assert match_points(pts([[0, 0, 0]]), pts([[0, 0, 2]]), 1.5).tp == 0
    assert match_points(pts([[0, 0, 0]]), pts([[0, 0, 2]]), 1.5, voxel_size=[2.0, 0.5, 0.5]).tp == 1


def test_localization_error_is_physical():
    m = detection_metrics(pts([[0, 0], [10, 10]]), [0, 0], pts([[0, 2], [10, 13]]), [0, 0], 5.0,
                          voxel_size=[1.0, 0.5])
    assert m["loc_error"] == pytest.approx((1.0 + 1.5) / 2)


@pytest.mark.parametrize(("seed", "side", "tol"), [(0, 60, 3.0), (1, 40, 4.0), (2, 30, 5.0), (3, 25, 6.0)])
def test_matching_many_points_agrees_with_dense_hungarian(seed, side, tol):
    """Dense points (many groups with several predictions and truths) against one big solve."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, side, size=(80, 2))
    pred = np.concatenate([gt[:60] + rng.normal(0, 1.5, size=(60, 2)), rng.uniform(0, side, size=(30, 2))])
    match = match_points(pred, gt, tol)
    assert len(set(match.pred.tolist())) == len(set(match.gt.tolist())) == match.tp  # one-to-one
    d = cdist(pred, gt)
    assert np.allclose(d[match.pred, match.gt], match.distance) and (match.distance <= tol).all()
    cost = np.where(d <= tol, d / tol, 1e6)
    r, c = linear_sum_assignment(cost)
    ok = d[r, c] <= tol
    assert match.tp == int(ok.sum())
    assert match.distance.sum() == pytest.approx(d[r, c][ok].sum())


def test_summarize_pools_counts_and_averages_images():
    table = pd.DataFrame([
        {"image": "a", "tp": 9, "fp": 1, "fn": 0, "precision": 0.9, "recall": 1.0, "f1": 18 / 19, "loc_error": 1.0},
        {"image": "b", "tp": 1, "fp": 0, "fn": 9, "precision": 1.0, "recall": 0.1, "f1": 2 / 11, "loc_error": 2.0},
    ])
    row = summarize_detection(table)
    assert (row["tp"], row["fp"], row["fn"]) == (10, 1, 9)
    assert row["pooled_precision"] == pytest.approx(10 / 11) and row["pooled_recall"] == pytest.approx(10 / 19)
    assert row["pooled_f1"] == pytest.approx(20 / 30)
    assert row["mean_recall"] == pytest.approx(0.55)
    assert row["pooled_loc_error"] == pytest.approx((9 * 1.0 + 1 * 2.0) / 10)


def test_assignments_table_lists_tp_fp_fn():
    pred, gt = pts([[0, 0], [20, 20]]), pts([[0, 1], [40, 40]])
    match = match_points(pred, gt, 2.0)
    table = assignments_table(pred, [0, 0], np.array([0.9, 0.4]), gt, [0, 0], match, ("y", "x"))
    assert table["status"].tolist() == ["tp", "fp", "fn"]
    assert table["pred_row"].tolist() == [0, 1, -1] and table["gt_row"].tolist() == [0, -1, 1]
    assert table.loc[0, "distance"] == 1.0 and math.isnan(table.loc[2, "score"])


# --------------------------------------------------------------------------- suppression and peaks


def test_suppression_keeps_the_strongest():
    coords = pts([[0, 0], [0, 2], [0, 1]])
    keep = suppress_close_points(coords, np.array([0.5, 0.7, 0.9]), radius=3.0)
    assert keep.tolist() == [False, False, True]


def test_suppression_is_non_maximum_suppression_not_clustering():
    # A-B and B-C are close, A-C are not: B goes (A is stronger), so C survives
    coords = pts([[0, 0], [0, 2], [0, 4]])
    keep = suppress_close_points(coords, np.array([0.9, 0.8, 0.7]), radius=2.5)
    assert keep.tolist() == [True, False, True]


def test_suppression_radius_is_physical():
    coords, scores = pts([[0, 0, 0], [2, 0, 0]]), np.array([0.9, 0.8])
    assert suppress_close_points(coords, scores, 3.0).tolist() == [True, False]
    assert suppress_close_points(coords, scores, 3.0, voxel_size=[2.0, 1.0, 1.0]).tolist() == [True, True]


def gaussian_map(shape, centres, sigma=2.0, amplitude=None):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    out = np.zeros(shape, np.float32)
    for k, c in enumerate(centres):
        a = 1.0 if amplitude is None else amplitude[k]
        d2 = sum((g - x) ** 2 for g, x in zip(grids, c))
        out = np.maximum(out, a * np.exp(-0.5 * d2 / sigma**2))
    return out


def test_peak_finding_recovers_planted_points():
    rng = np.random.default_rng(1)
    centres = [(10, 12), (30, 40), (50, 8), (52, 55), (5, 60)]
    heat = gaussian_map((64, 64), centres) + rng.uniform(0, 0.05, size=(64, 64)).astype(np.float32)
    coords, scores = find_peaks(heat, 0.5, min_distance=3)
    assert len(coords) == len(centres)
    match = match_points(coords, pts(centres), 1.0)
    assert match.tp == len(centres)
    assert scores.min() > 0.9


def test_peak_finding_gives_one_point_per_plateau():
    plateau = np.zeros((20, 20), np.float32)
    plateau[5:10, 6:13] = 1.0  # a saturated sigmoid: flat top
    coords, scores = find_peaks(plateau, 0.5, min_distance=1)
    assert coords.tolist() == [[7.0, 9.0]] and scores.tolist() == [1.0]


def test_peaks_at_the_border_are_kept_and_threshold_is_strict():
    heat = gaussian_map((32, 32), [(0, 0), (16, 31)], amplitude=[0.8, 0.5])
    coords, _ = find_peaks(heat, 0.5, min_distance=2)
    assert coords.tolist() == [[0.0, 0.0]]  # 0.5 is not > 0.5


def test_detect_points_per_class_and_suppression_across_classes():
    heat = np.stack([gaussian_map((40, 40), [(10, 10), (30, 30)]),
                     gaussian_map((40, 40), [(10, 11), (20, 5)], amplitude=[0.7, 0.9])], axis=-1)
    across = detect_points(heat, DetectionParams.defaults(threshold=0.5, min_distance=2, suppression_radius=3))
    assert len(across) == 3 and sorted(across.classes.tolist()) == [0, 0, 1]
    within = detect_points(heat, DetectionParams.defaults(threshold=0.5, min_distance=2, suppression_radius=3,
                                                 suppress_across_classes=False))
    assert len(within) == 4


def test_otsu_threshold_separates_peaks_from_background():
    heat = gaussian_map((48, 48), [(10, 10), (30, 30), (40, 12)])
    found = detect_points(heat[..., None], DetectionParams.defaults(threshold="otsu", min_distance=3))
    assert len(found) == 3


# --------------------------------------------------------------------------- targets


def test_ball_target_radius():
    assert int(ball_stencil([2.0, 2.0]).sum()) == 13  # pixels within distance 2 of the centre
    points = PointSet(pts([[10, 10]]), [0])
    target = point_targets(points, (21, 21), 1, "ball", 2.0)
    assert target.shape == (21, 21, 1) and target.dtype == np.float32
    assert target.sum() == 13 and target[10, 12, 0] == 1 and target[10, 13, 0] == 0 and target[12, 10, 0] == 1


def test_ball_target_respects_anisotropy():
    target = point_targets(PointSet(pts([[5, 10, 10]]), [0]), (11, 21, 21), 1, "ball", 2.0, voxel_size=[2.0, 1, 1])
    zs = np.flatnonzero(target[..., 0].any(axis=(1, 2)))
    assert zs.tolist() == [4, 5, 6]  # radius 2 physical = 1 slice of 2


def test_gaussian_target_is_one_at_the_point():
    points = PointSet(pts([[10.2, 9.7], [3, 30]]), [0, 1])
    target = point_targets(points, (20, 40), 2, "gaussian", 2.0)
    assert target.shape == (20, 40, 2)
    assert target[10, 10, 0] == 1.0 and target[3, 30, 1] == 1.0 and target[3, 30, 0] == 0.0
    assert target[10, 12, 0] == pytest.approx(math.exp(-0.5))  # one sigma away
    assert target.max() == 1.0


def test_targets_clip_at_the_border():
    target = point_targets(PointSet(pts([[0, 0]]), [0]), (8, 8), 1, "ball", 3.0)
    assert target[0, 0, 0] == 1 and target[0, 3, 0] == 1 and target[0, 4, 0] == 0


def test_task_targets_foreground_and_channels(tmp_path):
    task = get_task(make_cfg(targets={"detection": {"classes": [1, 3], "radius": 2}}))
    csv = write(tmp_path / "a.csv", "y,x,class\n5,5,1\n10,12,3\n")
    label = task.read_label(csv, (16, 16))
    target = task.make_targets(label, csv)
    assert task.out_channels() == 2 and target.shape == (16, 16, 2)
    assert target[5, 5].tolist() == [1, 0] and target[10, 12].tolist() == [0, 1]
    assert task.foreground(target).sum() == 26


# --------------------------------------------------------------------------- reading points


@pytest.mark.parametrize(
    ("text", "ndim", "message"),
    [
        ("a,b\n1,2\n", 2, "no coordinate columns"),
        ("y,x\n1,2\n3,oops\n", 2, "line 3: coordinate x = 'oops' is not a finite number"),
        ("y,x\n1,2\n,4\n", 2, "line 3: coordinate y = '<empty>' is not a finite number"),
        ("y,x\n1,2\n3,40\n", 2, "line 3: point (3, 40) lies outside the image of shape (16, 16)"),
        ("y,x\n-1,2\n", 2, "line 2: point (-1, 2) lies outside"),
        ("z,y,x\n1,2,3\n", 2, "has 3 coordinate columns (z,y,x) but ndim is 2"),
        ("y,x\n1,2\n", 3, "has 2 coordinate columns (y,x) but ndim is 3"),
        ("axis-0,axis-1,axis-2\n1,2,3\n", 2, "has 3 coordinate columns"),
        ("z,x\n1,2\n", 2, "do not match ndim 2"),
        ("", 2, "points CSV is empty"),
    ],
)
def test_bad_points_files_name_the_file(tmp_path, text, ndim, message):
    path = write(tmp_path / "bad.csv", text)
    shape = (16, 16) if ndim == 2 else (4, 16, 16)
    with pytest.raises(InputError) as err:
        read_points(path, ndim, shape)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_missing_points_file(tmp_path):
    with pytest.raises(InputError, match="points file not found"):
        read_points(tmp_path / "nope.csv", 2, (8, 8))


def test_unknown_or_missing_class_is_an_error(tmp_path):
    task = get_task(make_cfg(targets={"detection": {"classes": [1, 3]}}))
    bad = write(tmp_path / "c.csv", "y,x,class\n1,1,1\n2,2,2\n")
    with pytest.raises(InputError, match=r"line 3: class '2' is not one of targets.detection.classes \['1', '3'\]"):
        task.read_label(bad, (8, 8))
    none = write(tmp_path / "d.csv", "y,x\n1,1\n")
    with pytest.raises(InputError, match="has no 'class' column"):
        task.read_label(none, (8, 8))


def test_napari_columns_and_class_names(tmp_path):
    path = write(tmp_path / "n.csv", "index,axis-0,axis-1,class\n0,1.5,2.25,tumor\n1,3,4,immune\n")
    points = read_points(path, 2, (8, 8), ["immune", "tumor"])
    assert points.coords.tolist() == [[1.5, 2.25], [3.0, 4.0]]
    assert points.classes.tolist() == [1, 0]


def test_point_at_the_last_pixel_is_inside_and_classes_ignored_without_config(tmp_path):
    path = write(tmp_path / "e.csv", "Y , X,class\n7.49,0,whatever\n")
    points = read_points(path, 2, (8, 8))
    assert points.classes.tolist() == [0]
    with pytest.raises(InputError, match="outside"):
        read_points(write(tmp_path / "f.csv", "y,x\n7.5,0\n"), 2, (8, 8))


def test_class_key_normalizes_numbers():
    assert class_key(1) == class_key("1.0") == class_key(" 1 ") == "1"
    assert class_key("tumor") == "tumor" and class_key(1.5) == "1.5"


# --------------------------------------------------------------------------- task round trips


def test_write_and_read_output_round_trip(tmp_path):
    task = get_task(make_cfg(targets={"detection": {"classes": [1, 3]}}))
    points = PointSet(pts([[2, 3], [5.5, 6.25]]), [1, 0], (16, 16), np.array([0.75, 0.5]))
    task.write_output(tmp_path / "p.csv", points)
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == ["y", "x", "score", "class"]
    assert table["class"].tolist() == [3, 1]
    back = task.read_output(tmp_path / "p.csv")
    assert back.coords.tolist() == points.coords.tolist() and back.classes.tolist() == [1, 0]
    assert back.scores.tolist() == [0.75, 0.5]


def test_3d_output_columns(tmp_path):
    task = get_task(make_cfg(ndim=3))
    task.write_output(tmp_path / "p.csv", PointSet(pts([[1, 2, 3]]), [0], None, np.array([0.9])))
    assert pd.read_csv(tmp_path / "p.csv").columns.tolist() == ["z", "y", "x", "score", "class"]


def test_details_are_the_assignments_beside_the_metrics(tmp_path):
    task = get_task(make_cfg(evaluate={"detection": {"tolerance": 2.0}}))
    out = PointSet(pts([[1, 1], [9, 9]]), [0, 0], None, np.array([0.9, 0.8]))
    gt = PointSet(pts([[1, 2]]), [0], (16, 16))
    assert task.details_path(tmp_path / "metrics" / "img.csv") == tmp_path / "metrics" / "img_assignments.csv"
    table = task.details(out, gt)
    assert table["status"].tolist() == ["tp", "fp"]
    assert table["ap_match"].tolist() == [1.0, 0.0]


def test_tuned_threshold_is_read_from_the_tuning_file(tmp_path):
    cfg = make_cfg(tmp=tmp_path, postprocess={"detection": {"threshold": "tuned"}})
    task = get_task(cfg)
    assert task.tuning_file() == str(tmp_path / "results" / "det" / "tuning" / "detection.json")
    heat = gaussian_map((32, 32), [(8, 8), (24, 24)], amplitude=[0.9, 0.4])[..., None]
    with pytest.raises(InputError, match="tuning file does not exist"):
        task.postprocess(heat)
    from biapipe.core import imageio

    imageio.write_json(task.tuning_file(), {"threshold": 0.3})
    assert len(task.postprocess(heat)) == 2
    assert get_task(make_cfg()).tuning_file() is None


def test_tuning_finds_a_threshold_between_true_and_false_peaks(tmp_path):
    cfg = make_cfg(evaluate={"detection": {"tolerance": 2.0}})
    truth = [(10, 10), (30, 30), (50, 12)]
    preds, labels = [], []
    for shift in range(2):
        true_pts = [(y + shift, x) for y, x in truth]
        heat = gaussian_map((64, 64), true_pts + [(45, 50), (12, 50)], amplitude=[0.8, 0.85, 0.9, 0.3, 0.35])
        preds.append(heat[..., None])
        labels.append(PointSet(pts(true_pts), [0, 0, 0], (64, 64)))
    result = tune_detection_threshold(preds, labels, cfg)
    assert 0.35 <= result["threshold"] < 0.8
    assert result["f1"] == 1.0 and result["n_images"] == 2
    assert len(result["curve"]) > 10


def test_tune_files_writes_json(tmp_path):
    from biapipe.core import imageio

    cfg = make_cfg(tmp=tmp_path, postprocess={"detection": {"threshold": "tuned"}})
    task = get_task(cfg)
    heat = gaussian_map((32, 32), [(8, 8), (20, 20)], amplitude=[0.9, 0.2])[..., None]
    imageio.write_zarr(tmp_path / "p.zarr", heat.astype(np.float32))
    label = write(tmp_path / "p.csv", "y,x\n8,8\n")
    result = task.tune_files([str(tmp_path / "p.zarr")], [str(label)], task.tuning_file())
    assert imageio.read_json(task.tuning_file())["threshold"] == result["threshold"]
    assert 0.2 <= result["threshold"] < 0.9


def test_sigmoid_outputs_start_at_the_prior_and_loss_sees_the_same_offset():
    import torch

    from biapipe.tasks.detection.task import PRIOR_PROBABILITY

    task = get_task(make_cfg())
    zeros = torch.zeros(1, 1, 8, 8)
    assert torch.allclose(task.activate(zeros), torch.full_like(zeros, PRIOR_PROBABILITY))
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 4, 4] = 1
    loss_at_prior = float(task.loss()(zeros, target))
    loss_at_half = float(task.loss()(zeros - task.logit_offset, target))
    assert loss_at_prior < loss_at_half  # background right from the start
    regression = get_task(make_cfg(targets={"detection": {"kind": "gaussian"}}))
    assert regression.logit_offset == 0 and float(regression.activate(zeros).max()) == 0.0


def test_config_errors_name_the_key():
    from biapipe.core.errors import ConfigError

    with pytest.raises(ConfigError, match="targets.detection.classes.*lists a class twice"):
        get_task(make_cfg(targets={"detection": {"classes": [1, "1"]}}))
    with pytest.raises(ConfigError, match="targets.detection.radius.*has 3 entries but ndim is 2"):
        get_task(make_cfg(targets={"detection": {"radius": [1, 2, 3]}}))
    with pytest.raises(ConfigError, match="postprocess.detection.threshold"):
        make_cfg(postprocess={"detection": {"threshold": "median"}})
