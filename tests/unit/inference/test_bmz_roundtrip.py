"""BioImage Model Zoo round trip for every workflow: export a checkpoint, import the package
offline, and predict the same outputs; the package's other weight formats reproduce its test
tensors, as a zoo consumer checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

pytest.importorskip("bioimageio.spec", reason="optional dependency (pip install 'biapipe[export]')")

import biapipe  # noqa: E402
from biapipe.core.config import validate_config  # noqa: E402
from biapipe.data.normalize import normalize  # noqa: E402
from biapipe.inference.export_bmz import export_bmz  # noqa: E402
from biapipe.models.bmz import load_package  # noqa: E402
from biapipe.models.checkpoint import checkpoint_dict, save_checkpoint  # noqa: E402
from biapipe.models.info import model_meta, read_model_info  # noqa: E402
from biapipe.models.registry import build_model  # noqa: E402
from biapipe.tasks import get_task  # noqa: E402

WORKFLOWS = {
    "semantic": {"targets": {"classes": 3}},
    "instance": {"targets": {"instance": {"channels": ["foreground", "contour", "distance"]}},
                 "postprocess": {"instance": {"tuned": True}}},
    "detection": {"targets": {"detection": {"classes": [1, 2]}}, "postprocess": {"detection": {"threshold": "tuned"}}},
    "classification": {"targets": {"classification": {"classes": ["a", "b", "c"]}}, "train": {"patch_size": [32, 32]}},
    # restoration: one intensity map for the dataset (fixed statistics, as a model brings them)
    "denoising": {"normalize": {"scope": "dataset", "stats": {"low": [20.0], "high": [230.0]}},
                  "targets": {"denoising": {"channels": 1}}},
    "super_resolution": {"normalize": {"scope": "dataset", "stats": {"low": [20.0], "high": [230.0]}},
                         "targets": {"super_resolution": {"factor": 2, "channels": 1}}},
    "image_to_image": {"normalize": {"scope": "dataset", "stats": {"low": [20.0], "high": [230.0]}},
                       "targets": {"image_to_image": {"channels": ["dapi", "actin"]}}},
    "self_supervised": {"normalize": {"scope": "dataset", "stats": {"low": [20.0], "high": [230.0]}},
                        "targets": {"self_supervised": {"channels": 1}}},
}
#: Restoration models store how their targets were normalized; prediction undoes it.
TARGET_NORMALIZATION = {"offset": [500.0, 300.0], "scale": [100.0, 50.0]}  # counts: positive
#: What each workflow's tuning file holds (the model carries it; the package must too).
TUNED = {"instance": {"channels": ["foreground", "contour", "distance"],
                      "thresholds": {"seed_distance": 0.35, "seed_foreground": 0.45, "seed_contour": 0.3,
                                     "mask_threshold": 0.4}},
         "detection": {"threshold": 0.52}}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request would fail: export, validation and import must not need the network."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")


def model_file(folder: Path, workflow: str, extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """A checkpoint of a small random network (seeded) with its config and tuned thresholds, as
    an experiment's model.pt holds them (``extra``: config sections instead of the workflow's,
    and no tuned thresholds)."""
    extra = WORKFLOWS[workflow] if extra is None else extra
    cfg = validate_config({"experiment": workflow, "workflow": workflow, "ndim": 2, "seed": 0,
                           "data": {"train": {"images": "x"}}, **extra,
                           "train": {"model": {"depth": 2, "width": 4}, **extra.get("train", {})}})
    spec = get_task(cfg).model_spec(1)
    if "targets" in extra and any(k in extra["targets"] for k in ("denoising", "super_resolution", "image_to_image", "self_supervised")):
        spec["target_normalization"] = {k: v[:spec["out_channels"]] for k, v in TARGET_NORMALIZATION.items()}
    torch.manual_seed(1)
    net = build_model(spec)
    with torch.no_grad():  # batch-norm statistics of a trained network, not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if workflow == "detection":  # peaks near 1, as a trained detector's (its prior makes them ~0.01)
            net.head.bias.fill_(5.0)
    ckpt = checkpoint_dict(spec, net.state_dict(), 3, 0.5, workflow, "val_loss", config=model_meta(cfg))
    ckpt["tuned"] = TUNED.get(workflow) if extra is WORKFLOWS[workflow] else None
    path = folder / f"{workflow}.pt"
    save_checkpoint(path, ckpt)
    return path, cfg


def raw_image(folder: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:52, :60]
    image = 40 + 150 * (np.sin(yy / 5.0) * np.cos(xx / 7.0) > 0.3) + rng.integers(0, 30, yy.shape)
    path = folder / "raw.tif"
    tifffile.imwrite(path, image.astype(np.uint16))
    return path, image.astype(np.uint16)


def same_output(a: Any, b: Any) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:  # a class prediction
        assert (a.index, a.name) == (b.index, b.name)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_export_import_predicts_the_same(workflow: str, tmp_path: Path) -> None:
    checkpoint, cfg = model_file(tmp_path, workflow)
    raw_path, image = raw_image(tmp_path)
    package = export_bmz(checkpoint, cfg, get_task(cfg), tmp_path / f"{workflow}.zip", raw_path)

    # the package says what the checkpoint says: workflow, channels, normalization, tuned thresholds
    info, theirs = read_model_info(package), read_model_info(checkpoint)
    assert info.kind == "bmz" and info.workflow == workflow and info.tuned == TUNED.get(workflow)
    assert (info.ndim, info.in_channels, info.out_channels) == (theirs.ndim, theirs.in_channels, theirs.out_channels)
    assert info.config["normalize"] == theirs.config["normalize"]

    # predictions and final outputs through the package equal those through the checkpoint
    ours = biapipe.predict(checkpoint, image, probabilities=True)
    via_package = biapipe.predict(package, image, probabilities=True)
    assert float(np.std(ours)) > 1e-3  # a network that tells pixels (or classes) apart
    np.testing.assert_array_equal(ours, via_package)
    same_output(biapipe.predict(checkpoint, image), biapipe.predict(package, image))

    # without biapipe's rebuild: each weight format of the package reproduces its test tensors
    import zipfile

    with zipfile.ZipFile(package) as zf:
        zf.extractall(tmp_path / "unzipped")
    test_in = np.load(tmp_path / "unzipped" / "test_input.npy")
    test_out = np.load(tmp_path / "unzipped" / "test_output.npy")
    x = np.moveaxis(normalize(np.moveaxis(test_in[0], 0, -1), cfg["normalize"]), -1, 0)[None]
    for kind in ("torchscript", "pytorch_state_dict"):
        net, spec, activated = load_package(package, torch.device("cpu"), prefer=kind)
        assert activated and spec["in_channels"] == 1
        with torch.no_grad():
            y = net(torch.from_numpy(x.copy())).numpy()
        np.testing.assert_allclose(y.reshape(test_out.shape), test_out, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_instance_with_classes_round_trip(tmp_path: Path) -> None:
    """The class channels (a softmax of their own) travel with the package, and so do the
    number of classes and the post-processing values: both predict the same objects and classes."""
    extra = {"targets": {"instance": {"channels": ["foreground", "contour"], "classes": 3}},
             "postprocess": {"instance": {"seed_foreground": "otsu", "seed_contour": 1.0, "mask_threshold": "otsu",
                                          "min_size": 5}}}
    checkpoint, cfg = model_file(tmp_path, "instance", extra)
    raw_path, image = raw_image(tmp_path)
    package = export_bmz(checkpoint, cfg, get_task(cfg), tmp_path / "classes.zip", raw_path)
    info = read_model_info(package)
    assert info.out_channels == 5 and info.config["targets"]["instance"]["classes"] == 3
    assert info.config["postprocess"]["instance"]["min_size"] == 5
    assert info.config["postprocess"]["instance"]["seed_foreground"] == "otsu"
    ours = biapipe.predict(checkpoint, image, probabilities=True)
    np.testing.assert_array_equal(ours, biapipe.predict(package, image, probabilities=True))
    np.testing.assert_allclose(ours[..., 2:].sum(axis=-1), 1.0, atol=1e-5)  # one softmax over the classes
    a, b = biapipe.predict(checkpoint, image), biapipe.predict(package, image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert a.labels.max() > 0 and set(a.classes[1:].tolist()) <= {1, 2, 3}


def test_tuned_thresholds_travel_into_the_config(tmp_path: Path) -> None:
    """A run that predicts with the model post-processes with the tuned values, written out."""
    from biapipe.tasks.from_model import config_with_model

    checkpoint, _ = model_file(tmp_path, "instance")
    cfg = config_with_model({"experiment": "x", "model": str(checkpoint), "data": {"test": {"images": "."}}})
    pp = cfg["postprocess"]["instance"]
    assert pp["tuned"] is False
    assert (pp["seed_distance"], pp["seed_foreground"], pp["seed_contour"], pp["mask_threshold"]) == \
           (0.35, 0.45, 0.3, 0.4)
    assert cfg["targets"]["instance"]["channels"] == ["foreground", "contour", "distance"]
    # a value the config sets wins over the model's
    cfg = config_with_model({"experiment": "x", "model": str(checkpoint), "data": {"test": {"images": "."}},
                             "postprocess": {"instance": {"tuned": False, "seed_contour": 0.1}}})
    assert cfg["postprocess"]["instance"]["seed_contour"] == 0.1


def test_a_foreign_package_with_other_axes_runs(tmp_path: Path) -> None:
    """A zoo package not made by biapipe (format 0.4 layout, y-x-channel order, torchscript only):
    its preprocessing becomes biapipe's normalization, its axes are fed in its own order."""
    import yaml

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # b, y, x, c -> b, y, x, c
            return torch.sigmoid(x * 2.0 - 1.0)

    folder = tmp_path / "foreign"
    folder.mkdir()
    torch.jit.script(Net()).save(str(folder / "model.pt"))
    rdf = {"format_version": "0.4.10", "type": "model", "name": "foreign",
           "inputs": [{"name": "input0", "axes": "byxc", "data_type": "float32",
                       "shape": {"min": [1, 16, 16, 1], "step": [0, 8, 8, 0]},
                       "preprocessing": [{"name": "scale_range", "kwargs": {"mode": "per_sample", "axes": "xy",
                                                                            "min_percentile": 2.0,
                                                                            "max_percentile": 98.0}}]}],
           "outputs": [{"name": "output0", "axes": "byxc", "data_type": "float32",
                        "shape": {"reference_tensor": "input0", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]}}],
           "weights": {"torchscript": {"source": "model.pt"}}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    info = read_model_info(folder)
    assert (info.ndim, info.in_channels, info.out_channels) == (2, 1, 1)
    assert info.config["normalize"] == {"method": "percentile", "low": 2.0, "high": 98.0, "per_channel": True,
                                        "scope": "image"}
    image = np.arange(40 * 24, dtype=np.float32).reshape(40, 24)
    probs = biapipe.predict(folder, image, probabilities=True,
                            config={"workflow": "detection", "predict": {"tile_size": [16, 16]}})
    low, high = np.percentile(image, [2.0, 98.0])
    expected = 1 / (1 + np.exp(-(2 * (image - low) / (high - low) - 1)))
    np.testing.assert_allclose(probs[..., 0], expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_bioimageio_core_runs_each_package(workflow: str, tmp_path: Path) -> None:
    """The zoo's own checker (``bioimageio.core.test_model``): each weight format loaded by
    bioimageio.core, run on the package's test input and compared with its test output."""
    core = pytest.importorskip("bioimageio.core", reason="optional: pip install --no-deps bioimageio.core (Makefile)")
    checkpoint, cfg = model_file(tmp_path, workflow)
    package = export_bmz(checkpoint, cfg, get_task(cfg), tmp_path / f"{workflow}.zip", raw_image(tmp_path)[0])
    for weights in ("torchscript", "pytorch_state_dict"):
        summary = core.test_model(package, weight_format=weights)
        assert summary.status == "passed", summary.format()


def test_predict_given_a_file_name_says_it_takes_an_array(tmp_path: Path) -> None:
    from biapipe.core.errors import InputError

    checkpoint, _ = model_file(tmp_path, "semantic")
    raw_path, _ = raw_image(tmp_path)
    with pytest.raises(InputError, match="takes an image array, not a file name") as caught:
        biapipe.predict(checkpoint, str(raw_path))
    assert caught.value.path == str(raw_path)


def test_predict_given_a_volume_for_a_2d_model_names_the_model(tmp_path: Path) -> None:
    from biapipe.core.errors import InputError

    checkpoint, _ = model_file(tmp_path, "semantic")
    with pytest.raises(InputError, match=rf"shape \(8, 32, 32\) looks 3D \(ZYX\) but the model {checkpoint} has ndim: 2"):
        biapipe.predict(checkpoint, np.zeros((8, 32, 32), np.float32))
