"""Restoration metrics equal scikit-image's on the same arrays; block-wise figures of a large
output equal the whole-image ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import pearson_corr_coeff
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from biapipe.core.config import defaults
from biapipe.core.imageio import write_zarr
from biapipe.tasks.restoration.large import finish_blocks, metrics_blocks
from biapipe.tasks.restoration.metrics import data_range, restoration_metrics
from biapipe.training.losses import ssim_map


def _pair(shape: tuple[int, ...], dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    gt = rng.integers(10, 200, size=shape).astype(dtype)
    pred = (gt.astype(np.float32) + rng.normal(0, 8, size=shape)).astype(np.float32)
    return pred, gt


def test_metrics_equal_scikit_image_on_the_same_arrays() -> None:
    pred, gt = _pair((48, 40, 1))
    got = restoration_metrics(pred, gt, ["c"], "dtype")
    p, g = pred[..., 0].astype(np.float64), gt[..., 0].astype(np.float64)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(g, p, data_range=255))
    assert got["ssim"] == pytest.approx(structural_similarity(g, p, data_range=255))
    assert got["nrmse"] == pytest.approx(normalized_root_mse(g, p, normalization="min-max"))
    assert got["pearson_r"] == pytest.approx(pearson_corr_coeff(g, p)[0])
    # the documented range normalization: divide both by 255, score on a range of 1
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(g / 255, p / 255, data_range=1.0))
    # by hand: PSNR = 10 log10(R^2 / MSE)
    assert got["psnr"] == pytest.approx(10 * np.log10(255**2 / np.mean((p - g) ** 2)))


def test_per_channel_columns_and_ranges() -> None:
    pred, gt = _pair((32, 32, 2), np.uint16)
    got = restoration_metrics(pred, gt, ["dapi", "map2"], "minmax")
    for c, name in enumerate(["dapi", "map2"]):
        g, p = gt[..., c].astype(np.float64), pred[..., c].astype(np.float64)
        assert got[f"psnr_{name}"] == pytest.approx(peak_signal_noise_ratio(g, p, data_range=g.max() - g.min()))
    assert got["psnr"] == pytest.approx((got["psnr_dapi"] + got["psnr_map2"]) / 2)
    assert data_range(gt[..., 0], "dtype") == 65535.0
    assert data_range(gt[..., 0].astype(np.float32), "dtype") == float(gt[..., 0].max() - gt[..., 0].min())
    assert data_range(gt[..., 0], 100) == 100.0


def test_the_ssim_loss_is_scikit_images_gaussian_ssim() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((40, 36)), rng.random((40, 36))
    ours = float(ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).mean())
    theirs = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_block_wise_metrics_equal_whole_image(tmp_path, ndim: int) -> None:
    shape = (24, 40, 36, 2) if ndim == 3 else (70, 66, 2)
    pred, gt = _pair(shape, np.uint16)
    store = tmp_path / "pred.zarr"
    write_zarr(store, pred, chunks=(8, 16, 16, 2) if ndim == 3 else (16, 16, 2))
    gt_path = tmp_path / "gt.npy"
    np.save(gt_path, gt)
    pcfg = defaults("predict", ndim, memory_gb=0.00002)  # tiny blocks: many seams
    out = tmp_path / "restored.ome.zarr"
    finish_blocks(store, out, None, "float32", [1.0] * ndim, pcfg)
    got = metrics_blocks(out, gt_path, ndim, None, ["a", "b"], "minmax", pcfg)
    whole = restoration_metrics(pred, gt, ["a", "b"], "minmax")
    for key in whole:
        assert got[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
