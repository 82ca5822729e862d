"""Training from a model (train.init): which weights load, a new head, a frozen encoder, a slower encoder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError
from biapipe.core.imageio import write_zarr
from biapipe.data.normalize import normalize
from biapipe.models.checkpoint import checkpoint_dict, save_checkpoint
from biapipe.models.info import model_meta
from biapipe.models.registry import build_model
from biapipe.tasks import get_task
from biapipe.tasks.from_model import config_with_model
from biapipe.training.init import load_init
from biapipe.training.loop import train_model
from biapipe.training.schedules import make_optimizer

LOG = logging.getLogger("test")


def config(workflow: str = "instance", **train) -> dict:
    return {"experiment": "ft", "workflow": workflow, "ndim": 2, "seed": 0, "data": {"train": {"images": "x"}},
            "targets": {"binarize": True, "instance": {"channels": ["foreground", "contour", "distance"]}},
            "train": {"model": {"depth": 2, "width": 4}, "patch_size": [32, 32], "epochs": 2, "patches_per_epoch": 4,
                      "batch_size": 2, "val_patches": 2, "device": "cpu", "threads": 1, **train}}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A semantic model (2 output channels) with weights unlike a fresh network's."""
    cfg = validate_config(config("semantic"))
    spec = get_task(cfg).model_spec(1)
    torch.manual_seed(7)
    net = build_model(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
    path = tmp_path / "source.pt"
    save_checkpoint(path, checkpoint_dict(spec, net.state_dict(), 5, 0.1, "semantic", "val_loss",
                                          config=model_meta(cfg)))
    return path


def pairs(folder: Path, task) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(0)
    label = np.zeros((48, 48), np.uint16)
    label[5:20, 5:18], label[25:40, 22:44] = 1, 2
    raw = ((label > 0) * 100 + rng.integers(0, 30, label.shape)).astype(np.uint8)
    write_zarr(folder / "i.zarr", normalize(raw[..., None], validate_config(config())["normalize"]))
    write_zarr(folder / "t.zarr", task.make_targets(label))
    return [(folder / "i.zarr", folder / "t.zarr")]


def test_matching_weights_load_and_a_new_head_is_drawn(source: Path) -> None:
    theirs = torch.load(source, weights_only=True)["state_dict"]
    task = get_task(validate_config(config()))  # instance: 3 output channels, the model has 2
    net = build_model(task.model_spec(1))
    fresh = load_init(net, source, LOG)
    assert fresh == ["head.weight", "head.bias"]
    own = net.state_dict()
    for name, value in theirs.items():
        if not name.startswith("head."):
            torch.testing.assert_close(own[name], value)
    assert own["head.weight"].shape[0] == 3


def test_a_network_that_is_not_the_models_is_refused(source: Path) -> None:
    task = get_task(validate_config(config(model={"depth": 2, "width": 8})))
    with pytest.raises(ConfigError, match="train.init.*do not fit this network"):
        load_init(build_model(task.model_spec(1)), source, LOG)
    with pytest.raises(ConfigError, match="do not fit"):  # other input channels
        load_init(build_model(task.model_spec(3)), source, LOG)


def test_the_init_model_brings_its_network_unless_the_config_sets_one(source: Path) -> None:
    raw = config(init=str(source))
    del raw["train"]["model"]
    cfg = config_with_model(raw)
    assert (cfg["train"]["model"]["depth"], cfg["train"]["model"]["width"]) == (2, 4)
    raw["train"]["model"] = {"width": 8}
    assert config_with_model(raw)["train"]["model"]["width"] == 8


def test_frozen_encoder_learns_only_after_its_epochs(source: Path, tmp_path: Path) -> None:
    cfg = validate_config(config(init=str(source), epochs=2, fine_tune={"freeze_encoder_epochs": 1}))
    task = get_task(cfg)
    data = pairs(tmp_path, task)
    theirs = torch.load(source, weights_only=True)["state_dict"]
    summary = train_model(cfg, task, data, data, tmp_path / "model", max_epochs_this_call=1)
    assert not summary["finished"]
    after_one = torch.load(tmp_path / "model" / "checkpoint" / "resume.pt", weights_only=True)["model"]
    encoder = [k for k in theirs if k.startswith(("encoders.", "bottleneck."))]
    decoder = [k for k in theirs if k.startswith("decoders.") and k.endswith("weight")]
    for name in encoder:  # weights and batch-norm statistics as loaded
        torch.testing.assert_close(after_one[name], theirs[name])
    assert any(not torch.equal(after_one[k], theirs[k]) for k in decoder)
    train_model(cfg, task, data, data, tmp_path / "model")
    final = torch.load(tmp_path / "model" / "best.pt", weights_only=True)
    assert final["epoch"] in (1, 2)
    last = torch.load(tmp_path / "model" / "last.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(last[k], theirs[k]) for k in encoder if k.endswith("weight"))


def test_encoder_learns_at_its_factor(source: Path) -> None:
    cfg = validate_config(config(init=str(source), fine_tune={"encoder_lr_factor": 0.1}))
    net = build_model(get_task(cfg).model_spec(1))
    encoder = [p for n, p in net.named_parameters() if n.startswith(("encoders.", "bottleneck."))]
    opt = make_optimizer(net, cfg["train"]["optimizer"], encoder, 0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])
    assert len(opt.param_groups[1]["params"]) == len(encoder)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
