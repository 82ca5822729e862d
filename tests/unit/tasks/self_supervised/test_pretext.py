"""Self-supervised pretexts: hidden blocks are the only scored pixels, corruptions are a pure
function of their key, test images are corrupted as in training and scored where it matters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError
from biapipe.tasks import get_task
from biapipe.tasks.self_supervised.pretext import block_mask, degrade_same_size, image_rng, mask_blocks


def _config(pretext: str = "masked", ndim: int = 2, **section) -> dict:
    return validate_config({
        "experiment": "t", "workflow": "self_supervised", "ndim": ndim, "seed": 0,
        "data": {"train": {"images": "unused"}}, "normalize": {"scope": "dataset"},
        "targets": {"self_supervised": {"pretext": pretext, "channels": 1, **section}},
        "train": {"model": {"depth": 2, "width": 4}, "patch_size": [32, 32] if ndim == 2 else [8, 16, 16],
                  "batch_size": 2, "epochs": 1, "patches_per_epoch": 6, "val_patches": 2, "threads": 1}})


def test_block_mask_hides_the_share_of_whole_blocks_asked_for() -> None:
    hidden = block_mask((64, 48), (16, 16), 0.5, np.random.default_rng(0))
    # 4 x 3 = 12 cells, 6 hidden: 6 * 256 pixels, each 16 x 16 block all hidden or all visible
    assert hidden.sum() == 6 * 256
    blocks = hidden.reshape(4, 16, 3, 16)
    assert np.all(blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3)))
    # a shape that is not a multiple of the block: the grid is cut, nothing goes past the image
    assert block_mask((20, 20), (16, 16), 0.25, np.random.default_rng(0)).shape == (20, 20)


def test_masked_blocks_are_zero_and_the_rest_untouched() -> None:
    image = np.random.default_rng(1).random((32, 32, 2)).astype(np.float32) + 1.0
    masked, hidden = mask_blocks(image, (8, 8), 0.25, np.random.default_rng(2))
    assert hidden.sum() == 4 * 64
    assert np.all(masked[hidden] == 0.0)
    np.testing.assert_array_equal(masked[~hidden], image[~hidden])


def test_degradation_is_reproducible_by_its_key_and_keeps_the_shape() -> None:
    image = np.random.default_rng(3).random((37, 50, 1)).astype(np.float32)
    a = degrade_same_size(image, (2, 2), 1.0, 0.1, image_rng(5, "img_01"))
    b = degrade_same_size(image, (2, 2), 1.0, 0.1, image_rng(5, "img_01"))
    c = degrade_same_size(image, (2, 2), 1.0, 0.1, image_rng(5, "img_02"))
    assert a.shape == image.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # noise of the asked standard deviation: the difference of two draws has sqrt(2) of it
    assert np.std(a - c) == pytest.approx(0.1 * np.sqrt(2), rel=0.05)
    # nothing asked, nothing done; a constant image stays constant through blur and binning
    np.testing.assert_array_equal(degrade_same_size(image, (1, 1), 0.0, 0.0, image_rng(0, "x")), image)
    flat = degrade_same_size(np.full((9, 10, 1), 0.3, np.float32), (2, 2), 1.0, 0.0, image_rng(0, "x"))
    np.testing.assert_allclose(flat, 0.3, atol=1e-5)


def test_the_masked_loss_scores_the_hidden_pixels_only(tmp_path: Path) -> None:
    image = np.random.default_rng(4).random((48, 48, 1)).astype(np.float32)
    imageio.write_zarr(tmp_path / "i.zarr", image)
    imageio.write_zarr(tmp_path / "t.zarr", image)
    task = get_task(_config("masked", mask_block=8, mask_ratio=0.25))
    data = task.build_datasets([(tmp_path / "i.zarr", tmp_path / "t.zarr")], [])
    x, y = data.train[0]
    target, mask = y[:1], y[1:]
    hidden = mask[0].bool()
    assert hidden.sum() == 4 * 64 and torch.all(x[0][hidden] == 0) and torch.all(x[0][~hidden] != 0)
    loss = task.loss()
    right_where_hidden = torch.where(hidden, target, target + 5.0)  # wrong everywhere else
    assert loss(right_where_hidden[None], y[None]).item() == 0.0
    wrong_where_hidden = torch.where(hidden, target + 0.5, target)
    assert loss(wrong_where_hidden[None], y[None]).item() == pytest.approx(0.25)  # MSE of 0.5 on hidden pixels
    # the next epoch hides other blocks (fresh corruption per epoch)
    data.train.set_epoch(1)
    assert not torch.equal(data.train[0][1][1:], mask)


def test_degraded_patches_score_every_pixel(tmp_path: Path) -> None:
    image = np.random.default_rng(4).random((48, 48, 1)).astype(np.float32)
    imageio.write_zarr(tmp_path / "i.zarr", image)
    imageio.write_zarr(tmp_path / "t.zarr", image)
    task = get_task(_config("degraded"))
    x, y = task.build_datasets([(tmp_path / "i.zarr", tmp_path / "t.zarr")], []).train[0]
    assert x.shape == y.shape == (1, 32, 32) and not torch.allclose(x, y)
    assert task.loss()(y[None] + 0.5, y[None]).item() == pytest.approx(0.25)


def test_test_images_are_corrupted_by_name_and_masked_metrics_score_the_hidden_blocks() -> None:
    task = get_task(_config("masked", mask_block=8, mask_ratio=0.5))
    image = np.random.default_rng(6).random((32, 40, 1)).astype(np.float32) + 0.5
    a = task.prediction_input(image, "/data/test/images/cell_07.tif")
    np.testing.assert_array_equal(a, task.prediction_input(image, "/elsewhere/cell_07.tif"))
    hidden = task.test_mask((32, 40), "cell_07")
    np.testing.assert_array_equal(a[..., 0] == 0, hidden)  # the mask evaluation recomputes is the one hidden
    label = (image * 100).astype(np.uint16)
    wrong_visible = label.astype(np.float32)
    wrong_visible[~hidden] += 50.0
    assert task.evaluate(wrong_visible, label, "/data/test/images/cell_07.tif")["psnr"] == np.inf
    wrong_hidden = label.astype(np.float32)
    wrong_hidden[hidden] += 50.0
    assert np.isfinite(task.evaluate(wrong_hidden, label, "/data/test/images/cell_07.tif")["psnr"])


def test_bad_settings_stop_with_the_key_named(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    imageio.write_tiff(tmp_path / "images" / "a.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(ConfigError, match="data.train.labels"):
        get_task(_config()).split_samples("train", {"images": str(tmp_path / "images"), "labels": "x"})
    with pytest.raises(ConfigError, match="mask_block"):
        get_task(_config("masked", ndim=3, mask_block=[4, 4])).settled_config(None)
    cfg = _config("masked")
    with pytest.raises(ConfigError, match="train.loss.ssim"):
        get_task(cfg.with_value("train.loss", cfg["train"]["loss"].replace(ssim=0.5))).settled_config(None)
