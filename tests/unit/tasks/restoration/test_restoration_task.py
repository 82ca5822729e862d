"""The restoration tasks: targets normalized with statistics kept in the model, predictions back
in the targets' units, seamless tiles, super-resolution shapes and voxel sizes, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import write_tif

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError, InputError
from biapipe.data.samples import discover
from biapipe.data.validate import check_dataset
from biapipe.inference.predict import predict_image
from biapipe.models.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from biapipe.models.packaged import ActivatedNet
from biapipe.models.registry import build_model
from biapipe.tasks import get_task
from biapipe.tasks.restoration.output import voxel_size_of
from biapipe.tasks.restoration.resample import Upsampled, bin_mean, upsample
from biapipe.training.loop import train_model
from biapipe.workflow import stages


def config(workflow: str, folder: Path, ndim: int = 2, **sections) -> dict:
    cfg = {"experiment": "t", "workflow": workflow, "ndim": ndim, "seed": 0,
           "data": {"train": {"images": str(folder / "train" / "images"), "targets": str(folder / "train" / "targets")}},
           "normalize": {"scope": "dataset"},
           "train": {"model": {"depth": 2, "width": 4}, "patch_size": [16, 16] if ndim == 2 else [8, 16, 16],
                     "batch_size": 2, "epochs": 1, "patches_per_epoch": 2, "val_patches": 2, "threads": 1,
                     "val_fraction": 0.0},
           "predict": {"tile_size": [32, 32] if ndim == 2 else [8, 32, 32], "threads": 1}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return validate_config(cfg)


def settled(cfg):
    task = get_task(cfg)
    ds = discover(cfg["data"], cfg["train"], cfg["seed"], task)
    cfg = task.settled_config(ds)
    task = get_task(cfg)
    check_dataset(ds, cfg, task.label_kind, check_label=task.check_label_header)
    return cfg, task, ds


def pairs(folder: Path, shapes: dict[str, tuple], target_shapes: dict[str, tuple] | None = None,
          dtype: type = np.uint16) -> None:
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        write_tif(folder / "train" / "images" / f"{name}.tif", rng.integers(0, 1000, shape).astype(dtype))
        tshape = (target_shapes or {}).get(name, shape)
        write_tif(folder / "train" / "targets" / f"{name}.tif", rng.integers(0, 1000, tshape).astype(dtype))


# --------------------------------------------------------------------------- normalization kept with the model


def test_training_stores_the_target_normalization_and_prediction_undoes_it(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (32, 32), "b": (32, 32)})
    cfg, task, ds = settled(config("denoising", tmp_path))
    prepared = []
    for s in ds.train + ds.val:
        out = (tmp_path / "n" / f"{s.id}.zarr", tmp_path / "t" / f"{s.id}.zarr")
        stages.prepare(image=s.image, label=s.label, image_out=str(out[0]), targets_out=str(out[1]), task=task,
                       axes=None, normalize=cfg["normalize"].replace(scope="image"), memory_gb=4,
                       patch_size=cfg["train"]["patch_size"])
        prepared.append(tuple(map(str, out)))
    train_model(cfg, get_task(cfg), prepared[:1], prepared[1:], tmp_path / "model")
    model, ckpt = load_checkpoint(tmp_path / "model" / "best.pt")
    norm = ckpt["model"]["target_normalization"]
    target = tifffile.imread((ds.train + ds.val)[0].label).astype(np.float64)  # the one training target
    low, high = np.percentile(target, [1.0, 99.8])
    assert norm["offset"][0] == pytest.approx(low, rel=1e-6)
    assert norm["scale"][0] == pytest.approx(high - low, rel=1e-6)
    trained = task.for_model(ckpt)
    logits = torch.tensor([[[[0.0, 1.0], [0.5, -1.0]]]])
    assert torch.allclose(trained.activate(logits), logits * (high - low) + low, rtol=1e-5)
    # the exported network ends in the same affine map
    exported = ActivatedNet(model, trained.activation_spec()).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(exported(x), trained.activate(model(x)), atol=1e-3)


def test_a_model_without_target_normalization_is_refused(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (16, 16)})
    cfg, task, _ = settled(config("denoising", tmp_path))
    with pytest.raises(InputError, match="not a denoising model"):
        task.for_model({"model": {"out_channels": 1}})


# --------------------------------------------------------------------------- seamless tiles


@pytest.mark.parametrize("ndim", [2, 3])
def test_tiled_prediction_of_a_restoration_model_equals_whole_image_away_from_the_border(ndim: int) -> None:
    torch.manual_seed(0)
    spec = {"arch": "unet", "ndim": ndim, "in_channels": 1, "out_channels": 1, "depth": 1, "width": 4,
            "norm": "batch", "dropout": 0.0, "residual": True}
    if ndim == 3:
        spec["pool_z"] = [True]
    model = build_model(spec).eval()
    task = get_task(validate_config({"experiment": "t", "workflow": "denoising", "ndim": ndim,
                                     "data": {"demo": {}}, "targets": {"denoising": {"channels": 1}}}))
    trained = task.for_model({"model": {**spec, "target_normalization": {"offset": [100.0], "scale": [50.0]}}})
    shape = (101, 77, 1) if ndim == 2 else (60, 56, 52, 1)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    pcfg = {"mode": "tiled", "tile_size": [48, 48] if ndim == 2 else [40, 40, 40], "overlap": 0.5,
            "blend": "gaussian", "batch_size": 2, "precision": "float32", "trim": 0.5, "threads": 1, "tta": False}
    tiled = predict_image(model, image, pcfg, trained.activate, 2, "cpu")
    whole = predict_image(model, image, {**pcfg, "mode": "whole"}, trained.activate, 2, "cpu")
    r = 12  # beyond the reach of a depth-1 U-Net (2 + 1 + 2 x 2 + 1 + 2 pixels); the trimmed overlap is 12
    inner = (slice(r, -r),) * ndim
    assert np.abs(whole[inner] - 100).max() > 1  # in the targets' units
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-3)


# --------------------------------------------------------------------------- super-resolution


def _sr_model(tmp_path: Path, ndim: int, norm: dict) -> Path:
    torch.manual_seed(0)
    spec = {"arch": "unet", "ndim": ndim, "in_channels": 1, "out_channels": 1, "depth": 1, "width": 4,
            "norm": "batch", "dropout": 0.0, "residual": True, "target_normalization": norm}
    if ndim == 3:
        spec["pool_z"] = [False]
    path = tmp_path / "sr.pt"
    save_checkpoint(path, checkpoint_dict(spec, build_model(spec).state_dict(), 1, 0.0, "super_resolution",
                                          "val_loss"))
    return path


@pytest.mark.parametrize("ndim, factor, voxel", [(2, 2, [0.4, 0.3]), (3, [1, 2, 2], [2.0, 0.4, 0.4]),
                                                 (2, 4, None)])
def test_super_resolution_output_has_exactly_the_scaled_shape_and_voxel_size(tmp_path: Path, ndim: int, factor,
                                                                             voxel) -> None:
    low_shape = (21, 17) if ndim == 2 else (5, 12, 10)
    image = write_tif(tmp_path / "low.tif", np.random.default_rng(1).integers(0, 255, low_shape).astype(np.uint8))
    cfg = validate_config({"experiment": "t", "workflow": "super_resolution", "ndim": ndim, "data": {"demo": {},
                           "voxel_size": voxel}, "targets": {"super_resolution": {"factor": factor, "channels": 1}},
                           "normalize": {"scope": "dataset"},
                           "predict": {"tile_size": [16, 16] if ndim == 2 else [4, 16, 16], "threads": 1}})
    task = get_task(cfg)
    model = _sr_model(tmp_path, ndim, {"offset": [10.0], "scale": [2.0]})
    stages.predict(model=str(model), image=str(image), out=str(tmp_path / "p.zarr"), task=task, axes=None,
                   normalize=cfg["normalize"].replace(scope="image"), predict=cfg["predict"])
    out = tmp_path / "restored.tif"
    stages.postprocess(prediction=str(tmp_path / "p.zarr"), out=str(out), task=task, axes=None, image=str(image),
                       image_id="low")
    factors = [factor] * ndim if isinstance(factor, int) else factor
    expected = tuple(n * f for n, f in zip(low_shape, factors))
    assert tifffile.imread(out).shape == expected
    assert task.read_output(out).shape == expected + (1,)
    vs = voxel or [1.0] * ndim
    assert voxel_size_of(out) == pytest.approx([v / f for v, f in zip(vs, factors)], rel=1e-5)


def test_lazy_upsampling_of_any_region_equals_upsampling_the_whole_image() -> None:
    image = np.random.default_rng(0).normal(size=(9, 23, 19, 2)).astype(np.float32)
    whole = upsample(image, (1, 2, 4))
    view = Upsampled(image, (1, 2, 4))
    assert view.shape == whole.shape == (9, 46, 76, 2)
    for key in [(slice(0, 9), slice(0, 46), slice(0, 76)), (slice(2, 5), slice(7, 31), slice(13, 60)),
                (slice(8, 9), slice(40, 46), slice(70, 76))]:
        np.testing.assert_allclose(view[key], whole[key], atol=1e-5)


def test_binning_is_the_mean_of_each_block() -> None:
    high = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    assert bin_mean(high, (2, 2))[..., 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


# --------------------------------------------------------------------------- bad input, one line naming the file


def test_a_target_of_the_wrong_scale_names_the_file(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (16, 16), "b": (16, 16)}, {"a": (32, 32), "b": (16, 32)})
    with pytest.raises(InputError, match=r"b\.tif.*expected shape \(32, 32\)"):
        settled(config("super_resolution", tmp_path))


def test_a_missing_target_names_the_image(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (16, 16), "b": (16, 16)})
    (tmp_path / "train" / "targets" / "b.tif").unlink()
    with pytest.raises(InputError, match=r"b\.tif.*has no label"):
        settled(config("denoising", tmp_path))


def test_a_target_with_another_channel_count_names_the_file(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (16, 16, 3), "b": (16, 16, 3)}, {"a": (16, 16, 2), "b": (16, 16, 3)})
    with pytest.raises(InputError, match=r"b\.tif.*has 3 channels, expected 2"):
        settled(config("image_to_image", tmp_path))


def test_images_that_disagree_on_channels_are_named(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (16, 16, 3), "b": (16, 16, 2)}, {"a": (16, 16), "b": (16, 16)})
    with pytest.raises(InputError, match=r"images.b\.tif.*has 2 channels"):
        settled(config("image_to_image", tmp_path))


def test_per_image_normalization_is_refused(tmp_path: Path) -> None:
    pairs(tmp_path, {"a": (16, 16)})
    with pytest.raises(ConfigError, match="normalize.scope"):
        settled(config("denoising", tmp_path, normalize={"scope": "image"}))


def test_noise2void_needs_no_targets_and_no_ssim(tmp_path: Path) -> None:
    write_tif(tmp_path / "train" / "images" / "a.tif", np.zeros((16, 16), np.uint16))
    cfg, task, ds = settled(config("denoising", tmp_path, targets={"denoising": {"mode": "noise2void"}}))
    assert ds.train[0].label == ds.train[0].image
    with pytest.raises(ConfigError, match="train.loss.ssim"):
        settled(config("denoising", tmp_path, targets={"denoising": {"mode": "noise2void"}}, train={"loss": {"ssim": 1}}))


def test_evaluate_command_scores_two_folders(tmp_path: Path) -> None:
    from biapipe.cli import main

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 255, (2, 24, 24)).astype(np.uint8)
    pred = np.clip(gt + rng.normal(0, 5, gt.shape), 0, 255).astype(np.float32)
    for i in range(2):
        write_tif(tmp_path / "gt" / f"im{i}.tif", gt[i])
        write_tif(tmp_path / "pred" / f"im{i}.tif", pred[i])
    assert main(["evaluate", "--workflow", "denoising", "--pred", str(tmp_path / "pred"), "--gt",
                 str(tmp_path / "gt"), "--out", str(tmp_path / "m.csv")]) == 0
    import pandas as pd
    from skimage.metrics import peak_signal_noise_ratio

    table = pd.read_csv(tmp_path / "m.csv")
    assert table.loc[0, "psnr"] == pytest.approx(peak_signal_noise_ratio(gt[0].astype(float), pred[0].astype(float),
                                                                         data_range=255))
