"""Instance targets on hand-made labels, label checks, and the training side of InstanceTask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError, InputError
from biapipe.tasks import get_task
from biapipe.tasks.instance.targets import (
    SemanticLabelWarning,
    TargetSpec,
    inner_distance,
    instance_targets,
    neighbourhood,
    prepare_labels,
)


def _touching_squares() -> np.ndarray:
    lab = np.zeros((10, 13), np.uint16)
    lab[2:8, 1:6] = 1
    lab[2:8, 6:11] = 2
    return lab


def _target(lab, *channels, **kw):
    out = instance_targets(lab, TargetSpec.defaults(channels=channels, **kw))
    assert out.dtype == np.float32 and out.shape == lab.shape + (len(channels),)
    return {c: out[..., i] for i, c in enumerate(channels)}


def _interior(lab):
    """Object pixels whose four face neighbours carry the same label (computed independently)."""
    padded = np.pad(lab, 1, mode="edge")
    same = np.ones(lab.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= padded[dy:dy + lab.shape[0], dx:dx + lab.shape[1]] == lab
    return same & (lab > 0)


def test_touching_squares_get_a_contour_between_them():
    lab = _touching_squares()
    t = _target(lab, "foreground", "contour", "touching")
    assert np.array_equal(t["foreground"], lab > 0)
    assert t["contour"][2:8, 5].all() and t["contour"][2:8, 6].all()      # the shared edge, both sides
    expected_touch = np.zeros(lab.shape, bool)
    expected_touch[2:8, 5:7] = True
    assert np.array_equal(t["touching"] > 0, expected_touch)
    # thick = object pixels next to something else + background pixels next to an object
    ring = ndimage.binary_dilation(lab > 0) & (lab == 0)
    assert np.array_equal(t["contour"] > 0, ((lab > 0) & ~_interior(lab)) | ring)


def test_contour_modes():
    lab = _touching_squares()
    inner = _target(lab, "foreground", "contour", contour_mode="inner")["contour"] > 0
    assert np.array_equal(inner, (lab > 0) & ~_interior(lab))
    outer = _target(lab, "foreground", "contour", contour_mode="outer")["contour"] > 0
    ring = ndimage.binary_dilation(lab > 0) & (lab == 0)
    assert np.array_equal(outer, ring | _target(lab, "foreground", "touching")["touching"].astype(bool))
    wide = _target(lab, "foreground", "contour", contour_width=2)["contour"] > 0
    assert wide.sum() > (_target(lab, "foreground", "contour")["contour"] > 0).sum()


def test_distance_is_one_at_each_centre_whatever_the_size():
    lab = np.zeros((12, 16), np.uint8)
    lab[1:8, 1:8] = 1           # 7x7, centre (4, 4), 4 pixels from the outside
    lab[9:12, 11:14] = 5        # 3x3 touching the bottom border
    d = _target(lab, "foreground", "distance")["distance"]
    assert d[4, 4] == 1.0 and np.sum(d[lab == 1] == 1.0) == 1
    assert d[1, 4] == pytest.approx(0.25)                  # boundary pixel: raw 1 / max 4
    assert d[lab == 5].max() == 1.0
    assert np.all(d[lab == 0] == 0) and np.all(d[lab > 0] > 0)


def test_image_border_is_not_an_object_boundary():
    lab = np.zeros((5, 10), np.uint8)
    lab[:, 0:7] = 3                                         # spans every row, cut by the left border
    t = _target(lab, "foreground", "contour", "distance")
    assert not t["contour"][:, 0:6].any() and t["contour"][:, 6:8].all()
    assert np.allclose(t["distance"][2, :7], (7 - np.arange(7)) / 7)


def test_signed_distance_background_is_minus_one():
    lab = np.zeros((12, 12), np.uint8)
    lab[3:8, 3:8] = 1
    t = _target(lab, "distance", "signed_distance", background_distance=2)
    s = t["signed_distance"]
    assert s.min() == -1.0 and s.max() == 1.0
    assert s[0, 0] == -1.0 and s[11, 11] == -1.0
    assert s[2, 5] == pytest.approx(-0.5)                   # one pixel outside, scale 2
    assert np.array_equal(s[lab > 0], t["distance"][lab > 0])
    assert np.all(instance_targets(np.zeros((4, 4), np.uint8), TargetSpec.defaults(channels=("signed_distance",))) == -1)


def test_centroid_gives_one_blob_inside_each_object_even_a_crescent():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:6, 2:6] = 1
    lab[8:18, 8:18] = 2
    lab[10:16, 10:16] = 0                                   # a ring: centroid lies in the hole
    c = _target(lab, "foreground", "centroid", centroid_radius=1)["centroid"] > 0
    assert not (c & (lab == 0)).any()
    for i in (1, 2):
        assert ndimage.label(c & (lab == i))[1] == 1
    assert c[3:5, 3:5].any()


def test_anisotropic_voxel_size_is_respected_in_3d():
    lab = np.zeros((5, 12, 12), np.uint16)
    lab[1:4, 2:10, 2:10] = 1
    raw_iso, _ = inner_distance(lab, np.ones(3))
    raw_aniso, _ = inner_distance(lab, np.array([5.0, 1.0, 1.0]))
    assert raw_iso.max() == 2.0 and raw_aniso.max() == 4.0   # z no longer the limiting axis
    assert neighbourhood(np.array([5.0, 1.0, 1.0]), 3).shape == (3, 7, 7)
    assert neighbourhood(np.ones(3), 3).shape == (7, 7, 7)
    t = _target(lab, "foreground", "contour", contour_width=3, voxel_size=(5.0, 1.0, 1.0))
    assert t["contour"][2, 5, 5] == 0 and t["contour"][1, 5, 5] == 1 and t["contour"][2, 4, 5] == 1


def test_bad_labels_are_errors_naming_the_file():
    with pytest.raises(InputError, match="lab.tif.*non-integer"):
        prepare_labels(np.array([[0.0, 1.5]]), "lab.tif")
    with pytest.raises(InputError, match="lab.tif.*negative"):
        prepare_labels(np.array([[0, -2]], np.int32), "lab.tif")
    assert prepare_labels(np.array([[0.0, 3.0]]), "lab.tif").dtype.kind == "u"


def test_semantic_mask_is_relabelled_with_a_warning():
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:3] = 1
    mask[5:7, 5:7] = 1
    with pytest.warns(SemanticLabelWarning, match="m.tif.*semantic mask"):
        out = prepare_labels(mask, "m.tif")
    assert set(np.unique(out)) == {0, 1, 2}
    single = np.zeros((8, 8), np.uint8)
    single[2:5, 2:5] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(prepare_labels(single, "s.tif"), single)


def test_channel_sets_without_seeds_are_config_errors():
    for channels in ([], ["contour"], ["contour", "touching"], ["foreground", "foreground"], ["shape"]):
        with pytest.raises(ConfigError, match="targets.instance.channels"):
            TargetSpec.defaults(channels=tuple(channels))


def _cfg(**targets):
    return validate_config({"experiment": "t", "workflow": "instance", "ndim": 2, "data": {"demo": {}},
                            "targets": {"instance": targets}})


def test_task_training_side():
    task = get_task(_cfg(channels=["foreground", "contour", "distance"]))
    assert task.name == "instance" and task.output_dir == "labels" and task.out_channels() == 3
    target = task.make_targets(_touching_squares(), "x.tif")
    assert target.shape == (10, 13, 3) and target.dtype == np.float32
    assert np.array_equal(task.foreground(target), _touching_squares() > 0)
    assert task.loss_kinds == ["bce_dice", "bce_dice", "l1"]
    logits = torch.zeros(2, 3, 10, 13, requires_grad=True)
    loss = task.loss()(logits, torch.from_numpy(np.moveaxis(target, -1, 0))[None].repeat(2, 1, 1, 1))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad is not None


def test_task_activation_follows_the_loss():
    task = get_task(_cfg(channels=["foreground", "distance", "signed_distance"]))
    x = torch.tensor([-3.0, 0.0, 3.0]).view(1, 1, 1, 3).repeat(1, 3, 1, 1)
    y = task.activate(x)
    assert torch.allclose(y[0, 0, 0], torch.sigmoid(x[0, 0, 0]))
    assert y[0, 1, 0].tolist() == [0.0, 0.0, 1.0] and y[0, 2, 0].tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="targets.instance.loss"):
        get_task(_cfg(channels=["signed_distance"], loss=["bce"]))
    with pytest.raises(ConfigError, match="targets.instance.loss_weights"):
        get_task(_cfg(channels=["foreground"], loss_weights=[1, 2]))
