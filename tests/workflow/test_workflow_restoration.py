"""Real Snakemake runs of the restoration workflows on tiny data: Noise2Void denoising (2D, from
the demo rule), super-resolution (2D, image and target folders) and image-to-image (3D, two
target channels)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TINY_TRAIN, planned_jobs, snakemake, write_config

from biapipe.tasks.restoration.demo import super_resolution_demo
from biapipe.tasks.restoration.output import voxel_size_of

pytestmark = pytest.mark.workflow


def restoration_config(workflow: str, ndim: int, data: dict, **sections) -> dict:
    cfg = {"experiment": "tiny", "workflow": workflow, "ndim": ndim, "seed": 3, "data": data,
           "normalize": {"scope": "dataset"},
           "train": {**TINY_TRAIN, "patch_size": [32, 32] if ndim == 2 else [8, 16, 16]},
           "predict": {"tile_size": [32, 32] if ndim == 2 else [8, 16, 16], "threads": 1}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture(scope="module")
def n2v(tmp_path_factory):
    """Noise2Void from demo data: noisy images only for training, clean targets score the test image."""
    work = tmp_path_factory.mktemp("n2v")
    demo = {"folder": str(work / "data"), "n_train": 2, "n_val": 1, "n_test": 1, "size": 48}
    cfg = restoration_config("denoising", 2, {"demo": demo}, targets={"denoising": {"mode": "noise2void",
                                                                                      "mask_fraction": 0.01}})
    cfgfile = write_config(work / "cfg.yaml", cfg)
    snakemake(work, cfgfile)
    return work, cfgfile, cfg


def test_noise2void_end_to_end(n2v):
    work, _, _ = n2v
    out = work / "results" / "tiny"
    restored = tifffile.imread(out / "restored" / "test_000.tif")
    noisy = tifffile.imread(work / "data" / "test" / "images" / "test_000.tif")
    assert restored.shape == noisy.shape and restored.dtype == np.float32
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["image", "psnr", "ssim", "nrmse", "pearson_r"]
    assert np.isfinite(metrics.loc[0, "psnr"])
    ckpt = torch.load(out / "model" / "best.pt", weights_only=True)
    assert ckpt["model"]["residual"] is False  # no input skip: it would add the noisy pixel back
    # the map back to the images' units (camera counts of 100 to 400), not normalized ones (0 to 1),
    # is the training images' own (N2V: they are the targets); activate() applies it (unit tests)
    norm = ckpt["model"]["target_normalization"]
    train = np.concatenate([tifffile.imread(p).ravel() for p in sorted((work / "data" / "train" / "images").glob("*.tif"))])
    low, high = np.percentile(train, [1.0, 99.8])
    assert norm["offset"] == [pytest.approx(low, rel=0.05)]
    assert norm["scale"] == [pytest.approx(high - low, rel=0.05)]


def test_nothing_to_do_after_a_run(n2v):
    work, cfgfile, _ = n2v
    assert planned_jobs(work, cfgfile) == {}


@pytest.mark.parametrize("section", [{"evaluate": {"restoration": {"data_range": 1000}}},
                                     {"postprocess": {"restoration": {"dtype": "uint16", "clip": [0, 4000]}}}])
def test_an_evaluation_or_postprocessing_change_does_not_retrain(n2v, section):
    work, _, cfg = n2v
    changed = write_config(work / "changed.yaml", {**cfg, **{k: {**cfg.get(k, {}), **v} for k, v in section.items()}})
    assert planned_jobs(work, changed) == {"postprocess": 1, "aggregate": 1, "report": 1, "all": 1}


def test_super_resolution_2d_outputs_the_scaled_shape_and_voxel_size(tmp_path):
    super_resolution_demo(tmp_path / "data", 2, (2, 1, 1), 48, 0, (2, 2))
    data = {s: {"images": str(tmp_path / "data" / s / "images"), "targets": str(tmp_path / "data" / s / "targets")}
            for s in ("train", "val", "test")}
    cfg = restoration_config("super_resolution", 2, {**data, "voxel_size": [0.5, 0.5]},
                             targets={"super_resolution": {"factor": 2}}, train={"loss": {"l1": 1.0, "ssim": 0.5}})
    snakemake(tmp_path, write_config(tmp_path / "cfg.yaml", cfg))
    out = tmp_path / "results" / "tiny" / "restored" / "test_000.tif"
    low = tifffile.imread(tmp_path / "data" / "test" / "images" / "test_000.tif")
    assert tifffile.imread(out).shape == (2 * low.shape[0], 2 * low.shape[1]) == (48, 48)
    assert voxel_size_of(out) == pytest.approx((0.25, 0.25))
    assert np.isfinite(pd.read_csv(tmp_path / "results" / "tiny" / "metrics.csv").loc[0, "ssim"])


def test_image_to_image_3d_learns_two_channels_together(tmp_path):
    demo = {"folder": str(tmp_path / "data"), "n_train": 2, "n_val": 1, "n_test": 1, "size": 32}
    cfg = restoration_config("image_to_image", 3, {"demo": demo},
                             evaluate={"restoration": {"data_range": "minmax"}})
    snakemake(tmp_path, write_config(tmp_path / "cfg.yaml", cfg))
    out = tmp_path / "results" / "tiny"
    restored = tifffile.TiffFile(out / "restored" / "test_000.tif")
    assert restored.series[0].axes == "ZCYX" and restored.series[0].shape == (8, 2, 32, 32)
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"psnr_nuclei", "ssim_envelope", "pearson_r_nuclei"} <= set(metrics.columns)
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "n_images"] == 1 and "mean_psnr" in summary.columns
