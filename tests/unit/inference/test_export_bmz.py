"""BioImage Model Zoo export: a valid package (checked offline by bioimageio.spec) that reproduces biapipe."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml

pytest.importorskip("bioimageio.spec", reason="optional dependency (pip install 'biapipe[export]')")

from biapipe.cli import main  # noqa: E402
from biapipe.core.config import (
    defaults,  # noqa: E402
    validate_config,  # noqa: E402
)
from biapipe.core.imageio import write_zarr  # noqa: E402
from biapipe.data.normalize import normalize  # noqa: E402
from biapipe.inference.export_bmz import check_package, export_bmz, test_crop  # noqa: E402
from biapipe.models.checkpoint import load_checkpoint  # noqa: E402
from biapipe.models.packaged import ActivatedNet  # noqa: E402
from biapipe.models.registry import build_model  # noqa: E402
from biapipe.tasks import get_task  # noqa: E402
from biapipe.training.loop import train_model  # noqa: E402

test_crop.__test__ = False  # a library function whose name pytest would collect


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request would fail: the export and its validation must not need the network."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")


def experiment(workflow: str, **extra: Any) -> dict[str, Any]:
    return validate_config({
        "experiment": "bmz", "workflow": workflow, "ndim": 2, "seed": 0, "data": {"train": {"images": "x"}},
        "targets": {"binarize": True}, **extra,
        "train": {"model": {"depth": 2, "width": 4}, "patch_size": [32, 32], "epochs": 1, "patches_per_epoch": 4,
                  "val_patches": 2, "device": "cpu", "threads": 1},
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """(checkpoint, config, raw test image) of a tiny semantic model."""
    folder = tmp_path_factory.mktemp("bmz")
    rng = np.random.default_rng(0)
    label = np.zeros((70, 60), np.uint16)
    label[10:25, 10:22] = 1
    label[40:55, 30:50] = 2
    raw = ((label > 0) * 120 + rng.integers(0, 40, label.shape)).astype(np.uint8)
    tifffile.imwrite(folder / "raw.tif", raw)
    cfg = experiment("semantic")
    task = get_task(cfg)
    write_zarr(folder / "i.zarr", normalize(raw[..., None], cfg["normalize"]))
    write_zarr(folder / "t.zarr", task.make_targets(label))
    pair = [(folder / "i.zarr", folder / "t.zarr")]
    train_model(cfg, task, pair, pair, folder / "model")
    return folder / "model" / "best.pt", cfg, folder / "raw.tif"


def load_architecture(path: Path) -> Any:
    """Import the packaged architecture file on its own, as a model zoo consumer does."""
    spec = importlib.util.spec_from_file_location("packaged_arch", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_package_is_valid_and_reproduces_biapipe(trained: tuple, tmp_path: Path) -> None:
    checkpoint, cfg, raw_path = trained
    out = export_bmz(checkpoint, cfg, get_task(cfg), tmp_path / "pkg", raw_path, authors=["A. Tester"])
    descr = check_package(out)
    assert descr.validation_summary.status in ("valid-format", "passed")
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert rdf["inputs"][0]["preprocessing"][-2]["id"] == "scale_range"  # ensure_dtype around it
    assert rdf["inputs"][0]["preprocessing"][-2]["kwargs"]["max_percentile"] == 99.8
    assert [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "y", "x"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["class_0", "class_1"]

    test_input = np.load(out / "test_input.npy")
    test_output = np.load(out / "test_output.npy")
    assert test_input.shape == (1, 1, 68, 60) and test_output.shape == (1, 2, 68, 60)  # multiples of 4
    # the output is biapipe's own prediction of the normalized input
    model, _ = load_checkpoint(checkpoint)
    task = get_task(cfg)
    x = normalize(np.moveaxis(test_input[0], 0, -1), cfg["normalize"])
    with torch.no_grad():
        ours = task.activate(model(torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy()))).numpy()
    np.testing.assert_allclose(test_output, ours, atol=1e-5)
    # the preprocessing a consumer applies (scale_range over y, x) is biapipe's normalization
    low, high = np.percentile(test_input, [1.0, 99.8], axis=(2, 3), keepdims=True)
    np.testing.assert_allclose((test_input - low) / (high - low + 1e-6), np.moveaxis(x, -1, 0)[None], atol=1e-4)
    # both weight formats reproduce the test output
    scripted = torch.jit.load(str(out / "weights_torchscript.pt"))
    kwargs = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    arch = load_architecture(out / "biapipe_models.py")
    net = arch.packaged_network(**kwargs)
    net.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    net.eval()
    pre = torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy())
    with torch.no_grad():
        np.testing.assert_allclose(scripted(pre).numpy(), test_output, atol=1e-5)
        np.testing.assert_allclose(net(pre).numpy(), test_output, atol=1e-5)


def test_zip_package_via_the_command_line(trained: tuple, tmp_path: Path) -> None:
    checkpoint, cfg, raw_path = trained
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({k: cfg[k] for k in ("experiment", "workflow", "ndim", "data", "targets",
                                                                "normalize")}))
    out = tmp_path / "model.zip"
    assert main(["export-bmz", "--model", str(checkpoint), "--config", str(config_file), "--out", str(out),
                 "--test-image", str(raw_path), "--name", "tiny nuclei"]) == 0
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "biapipe_models.py", "test_input.npy",
            "test_output.npy", "README.md"} <= names
    assert check_package(out).name == "tiny nuclei"


@pytest.mark.parametrize(("workflow", "extra"), [
    ("instance", {"targets": {"instance": {"channels": ["foreground", "contour", "signed_distance"]}}}),
    ("detection", {}),
])
def test_exported_activation_matches_the_task(workflow: str, extra: dict) -> None:
    cfg = experiment(workflow, **extra)
    task = get_task(cfg)
    torch.manual_seed(0)
    model = build_model({"arch": "unet", "ndim": 2, "in_channels": 1, "out_channels": task.out_channels(),
                         "depth": 1, "width": 2, "norm": "none", "dropout": 0.0}).eval()
    x = torch.randn(1, 1, 8, 8) * 10
    with torch.no_grad():
        torch.testing.assert_close(ActivatedNet(model, task.activation_spec())(x), task.activate(model(x)))


def test_dataset_statistics_become_a_fixed_scale(trained: tuple, tmp_path: Path) -> None:
    from biapipe.inference.export_bmz import preprocessing

    steps = preprocessing(defaults("normalize", method="percentile", scope="dataset", clip=True), 2, 2,
                          np.dtype("uint8"), {"low": [10.0], "high": [110.0]})
    assert [s.id for s in steps] == ["scale_linear", "clip"]
    assert steps[0].kwargs.gain == [0.01, 0.01] and steps[0].kwargs.offset == pytest.approx([-0.1, -0.1])
    zscore = preprocessing(defaults("normalize", method="zscore"), 3, 1, np.dtype("uint16"), None)
    assert zscore[0].id == "zero_mean_unit_variance" and list(zscore[0].kwargs.axes) == ["z", "y", "x"]
