"""Block-wise detection: the points of a large volume, identical to whole-volume detection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from biapipe.core.config import validate_config
from biapipe.data.blocks import block_grid
from biapipe.tasks import get_task
from biapipe.tasks.detection.large import (
    detection_blocks,
    detection_table,
    required_halo,
)
from biapipe.tasks.detection.points import PointSet
from biapipe.tasks.detection.postprocess import DetectionParams, detect_points

SHAPE_3D = (20, 40, 44)  # blocks of 8x16x16: faces at z 8, 16; y 16, 32; x 16, 32 (last blocks partial)
BLOCK_3D = (8, 16, 16)
SHAPE_2D = (70, 90)
BLOCK_2D = (16, 32)


def smooth_field(shape, seed, sigma=1.5) -> np.ndarray:
    """Many local maxima everywhere, faces included, values in [0, 0.7]."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return (0.7 * field).astype(np.float32)


def seam_features_3d(channel: np.ndarray) -> None:
    """Spikes, plateaus and chains on and next to block faces (values above the field)."""
    channel[7, 20, 20], channel[8, 21, 20] = 0.9, 0.8  # close pair straddling the z face at 8
    channel[3, 15, 5], channel[3, 16, 6] = 0.85, 0.85  # equal, diagonal neighbours across the y face: one plateau
    channel[7, 15, 15], channel[8, 16, 16] = 1.0, 1.0  # one plateau joined only through a block corner
    channel[6:11, 14:18, 30:34] = 0.95  # a flat top across a z face, a y face and an x face
    channel[12, 30, 2:42] = 0.99  # a ridge along x through three blocks: one point
    for i, x in enumerate(range(10, 44, 3)):  # a chain crossing x faces 16 and 32, scores falling
        channel[17, 5, x] = 0.96 - 0.01 * i
    channel[5, 24, 14], channel[4, 24, 16] = 0.93, 0.93  # a tie; raster order and block order disagree
    channel[0, 0, 15], channel[19, 39, 43] = 0.9, 0.9  # at the volume's corners and a face
    channel[15, 31, 31], channel[16, 32, 32] = 0.88, 0.87  # a close pair across a triple corner


def volume_3d(classes: int = 2) -> np.ndarray:
    pred = np.stack([smooth_field(SHAPE_3D, seed) for seed in range(classes)], axis=-1)
    seam_features_3d(pred[..., 0])
    if classes > 1:
        pred[7, 20, 21, 1] = 0.92  # the other class next to a class-0 point across nothing
        pred[8, 20, 20, 1] = 0.9  # and straddling the z face next to the class-0 pair
        pred[12, 30, 16, 1] = 0.99  # the same score as the class-0 ridge, on a face
    return pred


def volume_2d(classes: int = 2) -> np.ndarray:
    pred = np.stack([smooth_field(SHAPE_2D, 10 + seed, sigma=1.2) for seed in range(classes)], axis=-1)
    ch = pred[..., 0]
    ch[15, 40], ch[16, 41] = 0.9, 0.8  # close pair across the y face at 16
    ch[31, 31], ch[32, 32] = 1.0, 1.0  # a plateau through a block corner
    ch[40:52, 60:70] = 0.95  # a flat top across the y face at 48 and the x face at 64
    for i, x in enumerate(range(20, 90, 3)):  # a chain crossing x faces 32 and 64
        ch[5, x] = 0.97 - 0.005 * i
    ch[47, 10], ch[48, 12] = 0.93, 0.93  # a tie across a face
    if classes > 1:
        pred[16, 40, 1] = 0.95
    return pred


def assert_same_points(got: PointSet, want: PointSet) -> None:
    assert got.shape == want.shape
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.coords, want.coords)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.scores, want.scores)


PARAMS = [
    DetectionParams.defaults(threshold=0.5, min_distance=1),
    DetectionParams.defaults(threshold=0.5, min_distance=2),
    DetectionParams.defaults(threshold=0.3, min_distance=3, suppression_radius=3.5),
    DetectionParams.defaults(threshold=0.5, min_distance=2, suppression_radius=4.0, suppress_across_classes=False),
    DetectionParams.defaults(threshold="otsu", min_distance=2, suppression_radius=2.5),
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"t{p.threshold}-md{p.min_distance}-r{p.suppression_radius}"
                         f"-{'across' if p.suppress_across_classes else 'within'}")
@pytest.mark.parametrize("block_shape", [BLOCK_3D, (4, 8, 8), SHAPE_3D])
def test_blocks_equal_whole_volume_3d(params, block_shape):
    pred = volume_3d()
    voxel_size = [2.0, 1.0, 1.0]
    want = detect_points(pred, params, voxel_size)
    got = detection_blocks(pred, block_grid(SHAPE_3D, block_shape), params, voxel_size)
    assert len(want) > 20  # the field gives many peaks, the seam features more
    assert_same_points(got, want)


@pytest.mark.parametrize("params", PARAMS[:3] + PARAMS[4:], ids=lambda p: f"t{p.threshold}-md{p.min_distance}")
@pytest.mark.parametrize("block_shape", [BLOCK_2D, (8, 8)])
def test_blocks_equal_whole_image_2d(params, block_shape):
    pred = volume_2d()
    want = detect_points(pred, params)
    got = detection_blocks(pred, block_grid(SHAPE_2D, block_shape), params)
    assert len(want) > 20
    assert_same_points(got, want)


@pytest.mark.parametrize("threshold", [0.2, "otsu"])
@pytest.mark.parametrize("block_shape", [(3, 5, 4), (1, 7, 40)])
def test_quantised_field_plateaus_and_ties_everywhere(threshold, block_shape):
    """Few grey levels: plateaus cross faces everywhere and equal scores are the rule."""
    pred = np.round(volume_3d() * 6) / 6
    params = DetectionParams.defaults(threshold=threshold, min_distance=1, suppression_radius=2.5)
    want = detect_points(pred, params, [1.5, 1.0, 1.0])
    assert len(want) > 20
    assert_same_points(detection_blocks(pred, block_grid(SHAPE_3D, block_shape), params, [1.5, 1.0, 1.0]), want)


def test_seam_features_come_out_as_whole_volume_sees_them():
    """The cases the test volume is built for really occur: plateaus across faces give one
    point at their centre, the weaker of a straddling pair is gone, a tie keeps the raster-first."""
    pred = volume_3d(classes=1)
    params = DetectionParams.defaults(threshold=0.5, min_distance=2, suppression_radius=3.0)
    got = detection_blocks(pred, block_grid(SHAPE_3D, BLOCK_3D), params)
    coords = {tuple(c) for c in got.coords}
    assert (7.5, 15.5, 15.5) in coords  # corner-joined plateau: one point, its centre
    assert (8.0, 15.5, 31.5) in coords  # the flat top over three faces
    assert (12.0, 30.0, 21.5) in coords  # the ridge through three blocks
    assert (7.0, 20.0, 20.0) in coords and (8.0, 21.0, 20.0) not in coords
    assert (4.0, 24.0, 16.0) in coords and (5.0, 24.0, 14.0) not in coords  # tie: raster order, not block order
    chain = sorted(c[2] for c in got.coords if c[0] == 17 and c[1] == 5)
    assert chain == list(range(10, 44, 6))  # greedy: every other point of the chain survives


def test_zarr_store_and_table_match_the_task(tmp_path):
    cfg = validate_config({"experiment": "det", "workflow": "detection", "ndim": 3, "data": {"demo": {}},
                           "targets": {"detection": {"classes": [1, 3]}},
                           "postprocess": {"detection": {"threshold": 0.5, "min_distance": 2,
                                                         "suppression_radius": 3.0}}})
    task = get_task(cfg)
    pred = volume_3d()
    store = zarr.create_array(store=str(tmp_path / "pred.zarr"), shape=pred.shape, dtype=np.float32,
                              chunks=BLOCK_3D + (2,))
    store[...] = pred
    table = detection_table(store, block_grid(SHAPE_3D, BLOCK_3D), task)
    pd.testing.assert_frame_equal(table, task.points_table(task.postprocess(pred)))
    assert list(table.columns) == ["z", "y", "x", "score", "class"]
    assert set(table["class"]) == {1, 3}


def test_small_halo_is_widened():
    params = DetectionParams.defaults(threshold=0.5, min_distance=3, suppression_radius=2.0)
    assert required_halo(params, 3) == (4, 4, 4)
    assert required_halo(dataclasses.replace(DetectionParams.defaults(), min_distance=0), 2) == (2, 2)  # the window is at least 3 wide
    pred = volume_3d()
    blocks = block_grid(SHAPE_3D, BLOCK_3D)
    want = detect_points(pred, params)
    for halo in (0, 1, (0, 2, 9), 16):
        assert_same_points(detection_blocks(pred, blocks, params, halo=halo), want)
    with pytest.raises(ValueError, match="3D"):
        detection_blocks(pred, blocks, params, halo=(1, 1))


def test_blocks_must_cover_the_volume():
    blocks = block_grid(SHAPE_3D, BLOCK_3D)
    with pytest.raises(ValueError, match="whole volume"):
        detection_blocks(volume_3d(), blocks[:-1], DetectionParams.defaults())


def test_empty_and_flat_volumes():
    blocks = block_grid(SHAPE_3D, BLOCK_3D)
    flat = np.full(SHAPE_3D + (1,), 0.25, np.float32)
    for params in (DetectionParams.defaults(threshold=0.5), DetectionParams.defaults(threshold="otsu")):
        got = detection_blocks(flat, blocks, params)
        assert_same_points(got, detect_points(flat, params))
        assert len(got) == 0
