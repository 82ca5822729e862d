"""Data-parallel training (train.gpus > 1), run on CPU with two gloo processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from biapipe.core.errors import ConfigError, InputError
from biapipe.models.checkpoint import load_checkpoint
from biapipe.training import ddp

from .test_train import config, make_pairs, train

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    folder = tmp_path_factory.mktemp("data")
    return {"train": make_pairs(folder, 3, "tr"), "val": make_pairs(folder, 1, "va")}


def ddp_config(gpus: int, **train_keys: Any) -> dict[str, Any]:
    """GroupNorm and no dropout: on CPU BatchNorm statistics are per process and dropout masks per
    process (see biapipe.training.ddp), so these are the settings with which N processes equal one.
    9 patches in batches of 4 leave a last batch of one: the second process has no sample there."""
    keys = {"model": {"depth": 2, "width": 4, "norm": "group"}, "epochs": 3, "patches_per_epoch": 9,
            "val_patches": 4, "batch_size": 4, "threads": 2, "gpus": gpus}
    return config(**{**keys, **train_keys})


def test_two_processes_match_one_on_the_same_global_batch(data: dict, tmp_path: Path) -> None:
    one = train(ddp_config(1), data, tmp_path / "one")
    # the two-process run is also killed after one epoch and resumed
    partial = train(ddp_config(2), data, tmp_path / "two", max_epochs_this_call=1)
    assert not partial["finished"] and (tmp_path / "two" / "checkpoint" / "resume.pt").exists()
    two = train(ddp_config(2), data, tmp_path / "two")
    assert two["finished"] and two["processes"] == 2 and two["resumed_from_epoch"] == 1
    assert two["epochs_run"] == one["epochs_run"] == 3 and two["best_epoch"] == one["best_epoch"]

    h1, h2 = (pd.read_csv(tmp_path / name / "history.csv") for name in ("one", "two"))
    assert list(h1.columns) == list(h2.columns) and h2["epoch"].tolist() == [1, 2, 3]
    for column in ("train_loss", "val_loss", "lr"):
        assert h2[column].to_numpy() == pytest.approx(h1[column].to_numpy(), rel=1e-4), column
    assert h1["train_loss"].iloc[-1] < h1["train_loss"].iloc[0]  # it did learn something

    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in ("best.pt", "last.pt"):
        _, c1 = load_checkpoint(tmp_path / "one" / name)
        _, c2 = load_checkpoint(tmp_path / "two" / name)
        assert c1["model"] == c2["model"] and c1["epoch"] == c2["epoch"]
        assert c1["state_dict"].keys() == c2["state_dict"].keys()  # no "module." prefix
        for key, value in c1["state_dict"].items():
            torch.testing.assert_close(c2["state_dict"][key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_batch_size_must_split_evenly_across_processes(data: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.gpus"):
        train(ddp_config(3), data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_more_gpus_than_visible_is_a_config_error(data: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ddp, "resolve_device", lambda *args: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="train.gpus.*2 GPUs requested .* 1 CUDA device"):
        train(ddp_config(2, device="cuda"), data, tmp_path / "out")


def test_errors_in_the_workers_reach_the_job_with_their_type() -> None:
    # the message a worker sends when a config or input problem stops it, through a real queue
    # (a real failing run would add another 10 s of process start-up to this file)
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    sent = InputError("a.zarr", "smaller than train.patch_size")
    results.put(("error", type(sent), sent.args, dict(vars(sent))))
    (message,) = ddp._drain(results)
    error = ddp._rebuild_error(*message[1:])
    assert type(error) is InputError and str(error) == str(sent) and error.path == "a.zarr"
