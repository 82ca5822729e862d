"""What restoration training relies on: patches keep the input-target relation (same geometry,
no intensity change of the input), normalized targets come back in their own units, residual
networks start as the identity, and Noise2Void has no input skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.models.registry import build_model
from biapipe.models.unet import UNet
from biapipe.tasks import get_task
from biapipe.tasks.restoration.data import restoration_datasets
from biapipe.tasks.restoration.targets import apply_normalization

#: Every augmentation at probability 1: restoration must keep only the exact ones (flips, rot90).
ALL_ON = {"flip": 1.0, "rot90": 1.0, "rotate": 1.0, "scale": 1.0, "elastic": 1.0, "blur": 1.0, "poisson_noise": 1.0,
          "gaussian_noise": 1.0, "brightness": 1.0, "contrast": 1.0, "gamma": 1.0}


def _config(mode: str = "supervised", augment: dict | None = None, model: dict | None = None, **section: object) -> dict:
    return validate_config({
        "experiment": "t", "workflow": "denoising", "ndim": 2, "seed": 0,
        "data": {"train": {"images": "unused", "targets": "unused"}},
        "normalize": {"scope": "dataset"}, "targets": {"denoising": {"mode": mode, "channels": 1, **section}},
        "train": {"model": {"depth": 2, "width": 4, **(model or {})}, "patch_size": [16, 16], "batch_size": 2,
                  "epochs": 1, "patches_per_epoch": 12, "val_patches": 2, "threads": 1, "augment": augment or {}}})


def test_patches_give_image_and_target_the_same_geometry_and_the_input_no_intensity_change(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((40, 48, 1)).astype(np.float32)  # a normalized input
    target = 3.0 * image + 5.0  # its target, in other units: one affine map away
    imageio.write_zarr(tmp_path / "i.zarr", image)
    imageio.write_zarr(tmp_path / "t.zarr", target)
    cfg = _config(augment=ALL_ON)
    data, norm = restoration_datasets(cfg, get_task(cfg), [(tmp_path / "i.zarr", tmp_path / "t.zarr")], [])
    gain = 3.0 / norm["scale"][0]
    offset = (5.0 - norm["offset"][0]) / norm["scale"][0]
    windows = np.lib.stride_tricks.sliding_window_view(image[..., 0], (16, 16))
    transformed = 0
    for i in range(len(data.train)):
        x, y = data.train[i]
        # any other geometry for the target, or an intensity change of the input, breaks the map
        np.testing.assert_allclose(y.numpy(), gain * x.numpy() + offset, rtol=1e-4, atol=1e-4)
        transformed += int(not np.all(windows == x[0].numpy(), axis=(2, 3)).any())
    assert transformed >= 4  # flips and rotations did happen (not all plain crops)


def test_normalized_targets_come_back_in_their_units_per_channel() -> None:
    cfg = validate_config({"experiment": "t", "workflow": "image_to_image", "ndim": 2, "seed": 0,
                           "data": {"train": {"images": "unused", "targets": "unused"}},
                           "normalize": {"scope": "dataset"}, "targets": {"image_to_image": {"channels": ["a", "b"]}}})
    norm = {"offset": [100.0, -2.0], "scale": [40.0, 0.5]}
    target = np.stack([np.linspace(90, 500, 64), np.linspace(-3, 1, 64)], axis=-1).reshape(8, 8, 2).astype(np.float32)
    task = get_task(cfg).for_model({"model": {"out_channels": 2, "target_normalization": norm}})
    normalized = torch.from_numpy(np.moveaxis(apply_normalization(target, norm), -1, 0)[None])
    back = task.activate(normalized)[0].numpy()
    np.testing.assert_allclose(np.moveaxis(back, 0, -1), target, rtol=1e-5, atol=1e-4)
    assert not np.allclose(normalized.numpy()[0, 0], target[..., 0])  # the map did something


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_residual_unet_starts_as_the_identity(ndim: int) -> None:
    torch.manual_seed(0)
    model = UNet(ndim, 2, 2, depth=2, width=4, residual=True)
    x = torch.randn(2, 2, *([8] * ndim))
    with torch.no_grad():
        assert torch.equal(model.train()(x), x)
        assert torch.equal(model.eval()(x), x)


@pytest.mark.parametrize("mode, residual", [("supervised", True), ("noise2noise", True), ("noise2void", False)])
def test_noise2void_has_no_input_skip(mode: str, residual: bool) -> None:
    # with a skip, training adds a blind spot's replacement value, prediction the noisy pixel itself
    assert get_task(_config(mode)).model_spec(1)["residual"] is residual


@pytest.mark.parametrize("mode, written, norm", [("noise2void", None, "none"), ("noise2void", "batch", "batch"),
                                                 ("supervised", None, "batch"), ("noise2noise", None, "batch")])
def test_noise2void_trains_without_batch_norm_unless_the_config_names_one(mode: str, written: str | None,
                                                                          norm: str) -> None:
    cfg = _config(mode, model={"norm": written} if written else None)
    assert cfg["train"]["model"]["norm"] == norm
    layers = {type(m).__name__ for m in build_model(get_task(cfg).model_spec(1)).modules()}
    assert ("BatchNorm2d" in layers) is (norm == "batch")


def test_noise2void_validation_scores_at_least_one_pixel_in_sixteen(tmp_path: Path) -> None:
    # at the training share (0.2 %) 2 validation patches of 32^2 would score about 4 pixels
    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    imageio.write_zarr(tmp_path / "i.zarr", image)
    cfg = _config("noise2void", mask_fraction=0.002).with_value("train.patch_size", [32, 32])
    pair = [(tmp_path / "i.zarr", tmp_path / "i.zarr")]
    data, _ = restoration_datasets(cfg, get_task(cfg), pair, pair, cfg["targets"]["denoising"])
    train_scored = [int(data.train[i][1][-1].sum()) for i in range(len(data.train))]
    val_scored = [int(data.val[i][1][-1].sum()) for i in range(len(data.val))]
    assert max(train_scored) <= 4  # one blind spot per 22x22 cell of a 32^2 patch
    assert min(val_scored) == 64  # one per 4x4 cell
    assert data.val[0][0] is data.val[0][0]  # made once: the same masks every epoch
    structured = _config("noise2void", mask_fraction=0.002, structured=1).with_value("train.patch_size", [32, 32])
    data, _ = restoration_datasets(structured, get_task(structured), pair, pair, structured["targets"]["denoising"])
    assert max(int(data.val[i][1][-1].sum()) for i in range(len(data.val))) <= 4  # 3 hidden per spot: training's share


def test_noise2void_validation_in_3d_scores_one_voxel_per_3x3x3_cell(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((12, 48, 48, 1)).astype(np.float32)
    imageio.write_zarr(tmp_path / "v.zarr", volume)
    cfg = _config("noise2void", mask_fraction=0.002)
    cfg = cfg.with_value("ndim", 3).with_value("train.patch_size", [6, 24, 24])
    pair = [(tmp_path / "v.zarr", tmp_path / "v.zarr")]
    data, _ = restoration_datasets(cfg, get_task(cfg), pair, pair, cfg["targets"]["denoising"])
    assert {int(data.val[i][1][-1].sum()) for i in range(len(data.val))} == {2 * 8 * 8}  # 1/16 -> cells of 3^3
    assert max(int(data.train[i][1][-1].sum()) for i in range(len(data.train))) <= 9  # 0.2 %: cells of 8^3, 1 x 3 x 3 of them
