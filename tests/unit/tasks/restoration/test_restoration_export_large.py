"""A super-resolution model exported for the BioImage Model Zoo (upsampling first, the target
normalization undone last), large volumes predicted block by block, and the demo data command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from biapipe.cli import main
from biapipe.core.config import validate_config
from biapipe.core.imageio import read_array
from biapipe.data.normalize import normalize
from biapipe.inference.predict import predict_image
from biapipe.inference.predictor import load_predictor
from biapipe.models.checkpoint import checkpoint_dict, save_checkpoint
from biapipe.models.registry import build_model
from biapipe.tasks import get_task
from biapipe.tasks.restoration.resample import upsample


def _sr(tmp_path: Path, ndim: int = 2, factor=2) -> tuple[Path, object]:
    torch.manual_seed(0)
    spec = {"arch": "unet", "ndim": ndim, "in_channels": 1, "out_channels": 1, "depth": 1, "width": 4,
            "norm": "batch", "dropout": 0.0, "residual": True,
            "target_normalization": {"offset": [20.0], "scale": [3.0]}}
    if ndim == 3:
        spec["pool_z"] = [False]
    path = tmp_path / "sr.pt"
    save_checkpoint(path, checkpoint_dict(spec, build_model(spec).state_dict(), 1, 0.0, "super_resolution",
                                          "val_loss"))
    cfg = validate_config({"experiment": "sr", "workflow": "super_resolution", "ndim": ndim, "seed": 0,
                           "data": {"train": {"images": str(tmp_path)}},
                           "targets": {"super_resolution": {"factor": factor, "channels": 1}},
                           "predict": {"tile_size": [32, 32] if ndim == 2 else [4, 32, 32], "threads": 1}})
    return path, cfg


def test_super_resolution_export_upsamples_and_denormalizes(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("bioimageio.spec")
    from biapipe.inference.export_bmz import check_package, export_bmz

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    checkpoint, cfg = _sr(tmp_path)
    raw = np.random.default_rng(0).integers(0, 255, (40, 36)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    out = export_bmz(checkpoint, cfg, get_task(cfg), tmp_path / "pkg", tmp_path / "raw.tif")
    assert check_package(out).validation_summary.status in ("valid-format", "passed")
    test_input, test_output = np.load(out / "test_input.npy"), np.load(out / "test_output.npy")
    assert test_output.shape[2:] == (2 * test_input.shape[2], 2 * test_input.shape[3])
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["upsample"] == [2, 2]
    # what biapipe predicts for the same normalized input
    predictor = load_predictor(checkpoint, "cpu")
    task = get_task(cfg).for_model(predictor.meta)
    x = normalize(np.moveaxis(test_input[0], 0, -1), cfg["normalize"])
    ours = predict_image(predictor.model, upsample(x, (2, 2)), {**cfg["predict"], "mode": "whole"}, task.activate,
                         predictor.divisor)
    np.testing.assert_allclose(test_output[0, 0], ours[..., 0], atol=1e-3)


def test_a_large_super_resolution_volume_block_by_block_equals_whole(tmp_path: Path) -> None:
    from biapipe.large.run import predict_large

    checkpoint, cfg = _sr(tmp_path, ndim=3, factor=[1, 2, 2])
    cfg = cfg.replace(predict=cfg["predict"].replace(memory_gb=0.0003, chunks=[4, 16, 16], overlap=0.5))
    raw = np.random.default_rng(1).integers(0, 1000, (10, 24, 22)).astype(np.uint16)
    np.save(tmp_path / "big.npy", raw)
    task = get_task(cfg)
    blocks = predict_large(checkpoint, tmp_path / "big.npy", tmp_path / "pred.zarr", task, cfg)
    assert blocks > 1
    large = read_array(tmp_path / "pred.zarr")
    predictor = load_predictor(checkpoint, "cpu")
    image = upsample(normalize(raw[..., None], cfg["normalize"]), (1, 2, 2))
    whole = predict_image(predictor.model, image, cfg["predict"], task.for_model(predictor.meta).activate,
                          predictor.divisor)
    assert large.shape == (10, 48, 44, 1)
    np.testing.assert_allclose(large, whole, atol=1e-3)


@pytest.mark.parametrize("workflow, folders", [("denoising", {"images", "targets", "noisy2"}),
                                               ("super_resolution", {"images", "targets"}),
                                               ("image_to_image", {"images", "targets"})])
def test_demo_data_command(tmp_path: Path, workflow: str, folders: set) -> None:
    assert main(["demo-data", str(tmp_path), "--workflow", workflow, "--n-train", "1", "--n-val", "0",
                 "--n-test", "1", "--size", "32"]) == 0
    assert {p.name for p in (tmp_path / "train").iterdir()} == folders
    image = tifffile.imread(tmp_path / "test" / "images" / "test_000.tif")
    target = tifffile.imread(tmp_path / "test" / "targets" / "test_000.tif")
    if workflow == "super_resolution":
        assert target.shape == (32, 32) and image.shape == (16, 16)
    elif workflow == "image_to_image":
        assert target.shape == (32, 32, 2) and image.shape == (32, 32)
    else:
        assert target.shape == image.shape == (32, 32)
        noisy2 = tifffile.imread(tmp_path / "test" / "noisy2" / "test_000.tif")
        # two frames of one clean image: same signal, independent noise
        assert not np.array_equal(image, noisy2)
        assert abs(float(image.mean()) - float(target.mean())) < 5
