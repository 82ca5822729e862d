"""Tiled and whole-image prediction, the model cache and the predict stage (file to file)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn

from biapipe.core.config import defaults, validate_config
from biapipe.core.devices import resolve_device
from biapipe.core.errors import ConfigError, InputError
from biapipe.inference import predictor as predict
from biapipe.inference.predict import predict_image
from biapipe.inference.predictor import (
    clear_predictor_cache,
    fuse_conv_batchnorm,
    load_predictor,
    predictor_cache_info,
)
from biapipe.models.registry import build_model
from biapipe.tasks import get_task
from biapipe.workflow import stages

CFG = defaults("predict", tile_size=[32, 32], overlap=0.5, batch_size=3, threads=2)


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def fixed_conv(ndim: int, in_ch: int = 1, out_ch: int = 2, k: int = 5) -> nn.Module:
    """A translation-equivariant model whose receptive-field radius is k // 2."""
    conv = (nn.Conv2d if ndim == 2 else nn.Conv3d)(in_ch, out_ch, k, padding=k // 2, bias=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.2)
    return conv.eval()


def rand_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_predictor_cache()
    yield
    clear_predictor_cache()


# --------------------------------------------------------------------------- one image


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_tiled_equals_whole_for_a_conv_away_from_the_border_2d(blend: str) -> None:
    model, image, r = fixed_conv(2), rand_image((101, 77, 1)), 2
    whole = predict_image(model, image, {**CFG, "mode": "whole"}, identity, 8, "cpu")
    tiled = predict_image(model, image, {**CFG, "blend": blend}, identity, 8, "cpu")
    assert tiled.shape == whole.shape == (101, 77, 2) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled[r:-r, r:-r], whole[r:-r, r:-r], atol=1e-5)


def test_tiled_equals_whole_for_a_conv_away_from_the_border_3d() -> None:
    model, image, r = fixed_conv(3, k=3, out_ch=1), rand_image((19, 40, 35, 1)), 1
    cfg = {**CFG, "tile_size": [8, 16, 16]}
    whole = predict_image(model, image, {**cfg, "mode": "whole"}, identity, 4, "cpu")
    tiled = predict_image(model, image, cfg, identity, 4, "cpu")
    np.testing.assert_allclose(tiled[r:-r, r:-r, r:-r], whole[r:-r, r:-r, r:-r], atol=1e-5)


def test_batch_size_does_not_change_results() -> None:
    model, image = fixed_conv(2), rand_image((90, 70, 1))
    results = [predict_image(model, image, {**CFG, "batch_size": b}, identity, 8, "cpu") for b in (1, 4, 7)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-6)


def test_memory_layout_does_not_change_results() -> None:
    model, image = fixed_conv(2), rand_image((70, 50, 1))
    a = predict_image(model, image, CFG, identity, 8, "cpu", channels_last=True)
    b = predict_image(model, image, CFG, identity, 8, "cpu", channels_last=False)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_activation_is_what_gets_blended_and_returned() -> None:
    model, image = fixed_conv(2), rand_image((50, 50, 1))
    logits = predict_image(model, image, CFG, identity, 8, "cpu")
    probs = predict_image(model, image, CFG, torch.sigmoid, 8, "cpu")
    # the conv is exact on tiles, so blending sigmoid(logits) equals sigmoid of the blend
    np.testing.assert_allclose(probs[2:-2, 2:-2], 1 / (1 + np.exp(-logits[2:-2, 2:-2])), atol=1e-5)


@pytest.mark.parametrize("mode", ["tiled", "whole"])
@pytest.mark.parametrize("shape", [(45, 61, 1), (5, 7, 1), (7, 45, 33, 2)])
def test_identity_model_reassembles_in_both_modes(mode: str, shape: tuple) -> None:
    image = rand_image(shape)
    cfg = {**CFG, "mode": mode, "tile_size": [16] * (len(shape) - 1)}
    out = predict_image(nn.Identity(), image, cfg, identity, 8, "cpu")
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-7)


def test_bfloat16_is_close_to_float32() -> None:
    model, image = fixed_conv(2), rand_image((64, 64, 1))
    a = predict_image(model, image, CFG, identity, 8, "cpu")
    b = predict_image(model, image, CFG, identity, 8, "cpu", dtype=torch.bfloat16)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=0.05)
    c = predict_image(model, image, {**CFG, "precision": "bfloat16"}, identity, 8, "cpu")
    np.testing.assert_array_equal(b, c)
    with pytest.raises(ConfigError, match="predict.precision"):
        predict_image(model, image, {**CFG, "precision": "fp8"}, identity, 8, "cpu")


def test_training_mode_model_is_put_in_eval_mode() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Dropout(0.5))
    predict_image(model, rand_image((16, 16, 1)), CFG, identity, 1, "cpu")
    assert not model.training


def test_tile_size_must_match_dimensionality() -> None:
    with pytest.raises(ConfigError, match="predict.tile_size"):
        predict_image(fixed_conv(2), rand_image((20, 20, 1)), {**CFG, "tile_size": [8, 8, 8]}, identity, 1, "cpu")


def test_unavailable_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="predict.device"):
        resolve_device("cuda")


def test_batchnorm_fusion_keeps_the_function() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    model.eval()
    x = torch.rand(2, 1, 16, 16)
    expected = model(x)
    fuse_conv_batchnorm(model)
    assert isinstance(model[1], nn.Identity)
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def counting_loader(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the checkpoint reader with one that records each real load."""
    loads: list[Path] = []

    def fake_load(path: Path, device: torch.device) -> predict.Predictor:
        loads.append(path)
        time.sleep(0.05)  # long enough for a second thread to arrive during the load
        return predict.Predictor(model=nn.Identity(), spec={}, divisor=1, device=device, path=path)

    monkeypatch.setattr(predict, "_load", fake_load)
    return loads


def test_cache_loads_once_and_reloads_when_the_file_changes(tmp_path: Path, counting_loader: list) -> None:
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    first = load_predictor(ckpt, "cpu")
    assert load_predictor(str(ckpt), "cpu") is first
    assert len(counting_loader) == 1 and predictor_cache_info()["hits"] == 1
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_predictor(ckpt, "cpu") is not first
    assert len(counting_loader) == 2
    assert predictor_cache_info()["size"] == 1  # the stale version was dropped


def test_cache_is_shared_by_threads_with_one_load(tmp_path: Path, counting_loader: list) -> None:
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    results: list[predict.Predictor] = []
    threads = [threading.Thread(target=lambda: results.append(load_predictor(ckpt, "cpu"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counting_loader) == 1
    assert all(r is results[0] for r in results)


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="best.pt"):
        load_predictor(tmp_path / "best.pt")


# --------------------------------------------------------------------------- real checkpoints and files

SPEC = {"arch": "unet", "ndim": 2, "in_channels": 1, "out_channels": 2, "depth": 2, "width": 4,
        "norm": "batch", "dropout": 0.0}


def write_checkpoint(path: Path, spec: dict = SPEC, seed: int = 0) -> Path:
    """A checkpoint in the documented format, written the way training writes it."""
    torch.manual_seed(seed)
    model = build_model(spec)
    ckpt = {"format": 1, "model": dict(spec), "state_dict": model.state_dict(), "epoch": 3, "val_loss": 0.5,
            "workflow": "semantic"}
    torch.save(ckpt, path)
    return path


def test_real_checkpoint_loads_once_then_reloads_after_retraining(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "best.pt")
    p1 = load_predictor(ckpt, "cpu")
    p2 = load_predictor(ckpt, "cpu")
    assert p1 is p2 and predictor_cache_info()["loads"] == 1
    assert p1.divisor == 4 and p1.spec == SPEC and p1.meta["epoch"] == 3 and "state_dict" not in p1.meta
    assert not p1.model.training
    stat = ckpt.stat()
    write_checkpoint(ckpt, seed=1)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    p3 = load_predictor(ckpt, "cpu")
    assert p3 is not p1 and predictor_cache_info()["loads"] == 2


def test_predict_stage_writes_float32_zarr_from_raw_images(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "best.pt")
    cfg = validate_config({"experiment": "t", "workflow": "semantic", "ndim": 2, "data": {"demo": {}},
                           "predict": {"tile_size": [32, 32], "overlap": 0.5, "device": "cpu"}})
    task = get_task(cfg)
    p = load_predictor(ckpt, "cpu")
    for i, shape in enumerate([(40, 50), (70, 33)]):
        raw = (rand_image(shape, seed=i) * 1000).astype(np.uint16)
        src = tmp_path / f"in{i}.tif"
        tifffile.imwrite(src, raw)
        dst = tmp_path / "pred" / f"in{i}.zarr"
        stages.predict(model=str(ckpt), image=str(src), out=str(dst), task=task, axes=None,
                       normalize=cfg["normalize"], predict=cfg["predict"])
        out = zarr.open_array(str(dst), mode="r")
        assert out.shape == (*shape, 2) and out.dtype == np.float32 and out.attrs["tile_size"] == [32, 32]
        image = stages.normalized_image(str(src), 2, None, cfg["normalize"])
        expected = predict_image(p.model, image, cfg["predict"], task.activate, p.divisor, "cpu")
        np.testing.assert_allclose(out[...], expected, atol=1e-6)
        np.testing.assert_allclose(out[...].sum(-1), 1, atol=1e-5)
    assert predictor_cache_info()["loads"] == 1
    assert not list((tmp_path / "pred").glob(".*tmp*"))
