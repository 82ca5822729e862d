"""Real Snakemake runs of self-supervised pre-training on tiny demo data (2D masked, 3D
degraded): train -> predict -> metrics from images alone, and a segmentation network that
starts from the pre-trained model takes every weight but its output layer."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TINY_TRAIN, planned_jobs, snakemake, write_config

from biapipe.models.registry import build_model
from biapipe.tasks import get_task
from biapipe.tasks.from_model import config_with_model
from biapipe.training.init import load_init

pytestmark = pytest.mark.workflow


def ssl_config(ndim: int, demo: dict, **section) -> dict:
    return {"experiment": "tiny", "workflow": "self_supervised", "ndim": ndim, "seed": 3, "data": {"demo": demo},
            "normalize": {"scope": "dataset"}, "targets": {"self_supervised": section},
            "train": {**TINY_TRAIN, "patch_size": [32, 32] if ndim == 2 else [8, 16, 16]},
            "predict": {"tile_size": [32, 32] if ndim == 2 else [8, 16, 16], "threads": 1},
            "evaluate": {"restoration": {"data_range": "minmax"}}}


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    work = tmp_path_factory.mktemp("ssl")
    demo = {"folder": str(work / "data"), "n_train": 2, "n_val": 1, "n_test": 1, "size": 48}
    cfgfile = write_config(work / "cfg.yaml", ssl_config(2, demo, pretext="masked", mask_block=8))
    snakemake(work, cfgfile)
    return work, cfgfile


def test_masked_pretraining_end_to_end(masked):
    work, _ = masked
    out = work / "results" / "tiny"
    image = tifffile.imread(work / "data" / "test" / "images" / "test_000.tif")
    assert tifffile.imread(out / "reconstructed" / "test_000.tif").shape == image.shape
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["image", "psnr", "ssim", "nrmse", "pearson_r"]
    assert np.isfinite(metrics.loc[0, "psnr"]) and metrics.loc[0, "ssim"] < 1.0  # the hidden blocks were guessed
    ckpt = torch.load(out / "model" / "best.pt", weights_only=True)
    assert ckpt["model"]["out_channels"] == 1 and ckpt["model"]["in_channels"] == 1
    assert ckpt["model"]["residual"] is False  # the decoder carries the image (docs/architecture.md)
    assert planned_jobs(work, work / "cfg.yaml") == {}  # a rerun does nothing


def test_an_instance_network_takes_every_pretrained_weight_but_its_head(masked):
    work, _ = masked
    source = work / "results" / "tiny" / "model" / "best.pt"
    # an instance config that says nothing of the network: train.init brings the model's
    cfg = config_with_model({"experiment": "ft", "workflow": "instance", "ndim": 2, "seed": 0,
                             "data": {"train": {"images": "x", "labels": "y"}},
                             "train": {"patch_size": [32, 32], "init": str(source)}})
    assert (cfg["train"]["model"]["depth"], cfg["train"]["model"]["width"]) == (2, 4)
    net = build_model(get_task(cfg).model_spec(1))
    fresh = load_init(net, source, logging.getLogger("test"))
    assert sorted(fresh) == ["head.bias", "head.weight"]  # 2 output channels (foreground, contour) against 1
    theirs = torch.load(source, weights_only=True)["state_dict"]
    own = net.state_dict()
    loaded = [k for k in own if k not in fresh and torch.equal(own[k], theirs[k].to(own[k].dtype))]
    assert len(loaded) == len(own) - 2
    assert {k.split(".")[0] for k in loaded} == {"encoders", "bottleneck", "decoders"}


def test_degraded_pretraining_3d(tmp_path):
    demo = {"folder": str(tmp_path / "data"), "n_train": 2, "n_val": 1, "n_test": 1, "size": 32}
    cfg = ssl_config(3, demo, pretext="degraded", factor=[1, 2, 2], noise=0.05)
    snakemake(tmp_path, write_config(tmp_path / "cfg.yaml", cfg))
    out = tmp_path / "results" / "tiny"
    restored = tifffile.TiffFile(out / "reconstructed" / "test_000.tif")
    assert restored.series[0].axes == "ZYX" and restored.series[0].shape == (8, 32, 32)
    metrics = pd.read_csv(out / "metrics.csv")
    assert np.isfinite(metrics.loc[0, "psnr"]) and -1.0 <= metrics.loc[0, "pearson_r"] <= 1.0
