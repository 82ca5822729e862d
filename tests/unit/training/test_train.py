"""The training loop: learning, outputs, checkpoints, determinism, resume, early stopping."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError, InputError
from biapipe.core.imageio import read_array, write_zarr
from biapipe.models.checkpoint import load_checkpoint
from biapipe.tasks.base import Task
from biapipe.training.launch import train as launch_train
from biapipe.training.loop import train_model
from biapipe.training.losses import CrossEntropyDiceLoss
from biapipe.training.state import fingerprint


class BinaryTask(Task):
    """Foreground/background class map from a label image; enough of a task to train."""

    name = "semantic"
    output_dir = "masks"
    output_suffix = ".tif"

    def out_channels(self) -> int:
        return 2

    def make_targets(self, label: np.ndarray, path: Any = None) -> np.ndarray:
        return (label > 0).astype(np.int16)[..., None]

    def foreground(self, target: np.ndarray) -> np.ndarray:
        return target[..., 0] > 0

    def loss(self) -> torch.nn.Module:
        return CrossEntropyDiceLoss(ce_weight=1.0, dice_weight=1.0)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def postprocess(self, prediction: np.ndarray) -> Any:
        raise NotImplementedError

    def write_output(self, path: Any, output: Any) -> None:
        raise NotImplementedError

    def read_output(self, path: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, output: Any, label: np.ndarray) -> dict[str, float]:
        raise NotImplementedError


def config(**train: Any) -> dict[str, Any]:
    base = {"model": {"depth": 2, "width": 4}, "patch_size": [32, 32], "batch_size": 4, "epochs": 10,
            "patches_per_epoch": 16, "val_patches": 4, "optimizer": {"lr": 0.03}, "threads": 1,
            "device": "cpu"}
    base.update(train)
    return validate_config({"experiment": "t", "workflow": "semantic", "ndim": 2, "seed": 3,
                            "data": {"train": {"images": "x"}}, "train": base})


def make_pairs(folder: Path, n: int, prefix: str) -> list[tuple[Path, Path]]:
    """Image = binary target + noise: a problem a tiny U-Net learns in a few epochs."""
    rng = np.random.default_rng(len(prefix) + n)
    task = BinaryTask({"ndim": 2})
    pairs = []
    for i in range(n):
        label = np.zeros((32, 32), np.int16)
        for _ in range(3):
            y, x = rng.integers(2, 26, size=2)
            label[y:y + 6, x:x + 6] = 1
        image = (label + rng.normal(0, 0.3, label.shape)).astype(np.float32)[..., None]
        img, tgt = folder / f"{prefix}{i}.zarr", folder / f"{prefix}{i}_target.zarr"
        write_zarr(img, image)
        write_zarr(tgt, task.make_targets(label))
        pairs.append((img, tgt))
    return pairs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    folder = tmp_path_factory.mktemp("data")
    return {"train": make_pairs(folder, 3, "tr"), "val": make_pairs(folder, 1, "va")}


def train(cfg: dict, data: dict, out: Path, **kwargs: Any) -> dict:
    return launch_train(cfg, BinaryTask(cfg), data["train"], data["val"], out, **kwargs)


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "history.csv").drop(columns=["seconds"])


#: Every augmentation on (the defaults plus the ones off by default), so determinism and
#: resuming are checked with every random generator in use.
ALL_AUGMENTATIONS = {"elastic": 0.2, "poisson_noise": 0.1, "cutout": 0.1}


def reference_config() -> dict[str, Any]:
    return config(model={"depth": 2, "width": 4, "dropout": 0.2}, augment=ALL_AUGMENTATIONS)


@pytest.fixture(scope="module")
def reference_run(data: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted run (with dropout, so resume must also restore torch's RNG)."""
    out = tmp_path_factory.mktemp("reference")
    return out, train(reference_config(), data, out)


def test_tiny_problem_is_learned_and_outputs_written(reference_run: tuple[Path, dict], data: dict) -> None:
    out, summary = reference_run
    assert summary["finished"] and summary["epochs_run"] == 10 and summary["monitor"] == "val_loss"
    for name in ("best.pt", "last.pt", "history.csv", "training_curve.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "checkpoint" / "resume.pt").exists()
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert hist["epoch"].tolist() == list(range(1, 11))
    assert hist["train_loss"].iloc[-1] < 0.3 * hist["train_loss"].iloc[0]
    assert hist["val_loss"].min() < 0.3 * hist["val_loss"].iloc[0]
    assert hist["lr"].iloc[0] == pytest.approx(0.03) and hist["lr"].iloc[-1] < 0.003  # cosine decay
    assert hist["lr"].is_monotonic_decreasing
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_load_with_weights_only(reference_run: tuple[Path, dict], data: dict) -> None:
    out, summary = reference_run
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["format"] == 1 and ckpt["workflow"] == "semantic"
    assert ckpt["model"] == {"arch": "unet", "ndim": 2, "in_channels": 1, "out_channels": 2, "depth": 2,
                             "width": 4, "norm": "batch", "dropout": 0.2}
    assert ckpt["monitor"] == "val_loss" and ckpt["monitor_value"] == ckpt["val_loss"]
    hist = pd.read_csv(out / "history.csv")
    assert ckpt["epoch"] == int(hist["epoch"][hist["val_loss"].idxmin()]) == summary["best_epoch"]
    assert ckpt["val_loss"] == pytest.approx(hist["val_loss"].min())
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 10 and last["val_loss"] == pytest.approx(hist["val_loss"].iloc[-1])

    model, loaded = load_checkpoint(out / "best.pt")
    assert not model.training and loaded["epoch"] == ckpt["epoch"]
    # the trained network segments a validation image far better than chance
    image = torch.from_numpy(np.moveaxis(read_array(data["val"][0][0]), -1, 0))
    truth = read_array(data["val"][0][1])[..., 0]
    with torch.no_grad():
        pred = model(image[None]).argmax(1)[0].numpy()
    assert (pred == truth).mean() > 0.97  # all-background would score about 0.9


def test_same_seed_gives_bit_identical_weights(reference_run: tuple[Path, dict], data: dict,
                                                tmp_path: Path) -> None:
    out, _ = reference_run
    train(reference_config(), data, tmp_path)
    assert_same_weights(out / "best.pt", tmp_path / "best.pt")
    assert_same_weights(out / "last.pt", tmp_path / "last.pt")
    pd.testing.assert_frame_equal(history(out), history(tmp_path))


def test_killed_and_resumed_run_matches_uninterrupted(reference_run: tuple[Path, dict], data: dict,
                                                      tmp_path: Path) -> None:
    out, _ = reference_run
    cfg = reference_config()
    partial = train(cfg, data, tmp_path, max_epochs_this_call=4)
    assert not partial["finished"] and partial["epochs_run"] == 4
    assert (tmp_path / "checkpoint" / "resume.pt").exists() and not (tmp_path / "best.pt").exists()
    torch.load(tmp_path / "checkpoint" / "resume.pt", weights_only=True)  # resume file is safe to load too
    # disturb the global RNGs, as a fresh process would have different ones
    torch.manual_seed(999)
    np.random.seed(999)
    resumed = train(cfg, data, tmp_path)
    assert resumed["finished"] and resumed["resumed_from_epoch"] == 4
    assert_same_weights(out / "best.pt", tmp_path / "best.pt")
    assert_same_weights(out / "last.pt", tmp_path / "last.pt")
    pd.testing.assert_frame_equal(history(out), history(tmp_path))
    assert not (tmp_path / "checkpoint" / "resume.pt").exists()


def test_kept_epochs_are_the_weights_of_those_epochs_and_change_nothing_else(
        reference_run: tuple[Path, dict], data: dict, tmp_path: Path) -> None:
    out, _ = reference_run
    cfg = config(model={"depth": 2, "width": 4, "dropout": 0.2}, augment=ALL_AUGMENTATIONS, keep_epochs=3)
    stale = tmp_path / "epochs" / "epoch_0099.pt"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's")
    train(cfg, data, tmp_path, max_epochs_this_call=6)
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch_0003.pt", "epoch_0006.pt"]
    resume = torch.load(tmp_path / "checkpoint" / "resume.pt", weights_only=True)["model"]
    kept = state_of(tmp_path / "epochs" / "epoch_0006.pt")
    assert all(torch.equal(resume[k], kept[k]) for k in resume)
    third = (tmp_path / "epochs" / "epoch_0003.pt").read_bytes()
    train(cfg, data, tmp_path)  # resumed: the epochs kept so far stay
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch_0003.pt", "epoch_0006.pt",
                                                                        "epoch_0009.pt"]
    assert (tmp_path / "epochs" / "epoch_0003.pt").read_bytes() == third
    model, ninth = load_checkpoint(tmp_path / "epochs" / "epoch_0009.pt")
    assert ninth["epoch"] == 9 and ninth["val_loss"] == pytest.approx(history(out)["val_loss"].iloc[8])
    assert not all(torch.equal(v, state_of(out / "last.pt")[k]) for k, v in ninth["state_dict"].items())
    # keeping epochs changes neither the training nor its identity
    assert_same_weights(out / "best.pt", tmp_path / "best.pt")
    assert_same_weights(out / "last.pt", tmp_path / "last.pt")
    assert fingerprint(cfg, data["train"], data["val"]) == fingerprint(reference_config(), data["train"], data["val"])


def test_a_fresh_run_refuses_to_start_from_a_kept_epoch_it_would_delete(
        reference_run: tuple[Path, dict], data: dict, tmp_path: Path) -> None:
    out, _ = reference_run
    inside = tmp_path / "epochs" / "epoch_0003.pt"
    inside.parent.mkdir()
    inside.write_bytes((out / "best.pt").read_bytes())
    with pytest.raises(ConfigError, match="train.init"):
        train(config(keep_epochs=1, init=str(inside)), data, tmp_path)
    assert inside.exists()


def test_resume_file_of_another_config_is_ignored(data: dict, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    train(config(epochs=2), data, tmp_path, max_epochs_this_call=1)
    log = logging.getLogger("test_train")
    with caplog.at_level(logging.INFO, logger="test_train"):
        summary = train(config(epochs=2, optimizer={"lr": 0.005}), data, tmp_path, log=log)
    assert summary["resumed_from_epoch"] == 0 and summary["epochs_run"] == 2
    assert "different config or data; starting fresh" in caplog.text
    assert "epoch 2/2" in caplog.text


def test_early_stopping_when_validation_loss_stalls(data: dict, tmp_path: Path) -> None:
    # a learning rate this small leaves the loss flat, so no epoch beats the first by min_delta
    cfg = config(epochs=20, optimizer={"name": "sgd", "lr": 1e-9}, scheduler="none",
                 early_stopping={"patience": 2, "min_delta": 0.05})
    summary = train(cfg, data, tmp_path)
    assert summary["stopped_early"] and summary["epochs_run"] == 3
    assert len(pd.read_csv(tmp_path / "history.csv")) == 3
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


def test_without_validation_the_training_loss_is_monitored(data: dict, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(epochs=2, scheduler="plateau", optimizer={"name": "adam", "lr": 0.01})
    with caplog.at_level(logging.INFO, logger="biapipe.training"):
        summary = train_model(cfg, BinaryTask(cfg), data["train"], [], tmp_path)
    assert summary["monitor"] == "train_loss"
    assert "no validation images: the training loss selects best.pt" in caplog.text
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["val_loss"].isna().all()
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["val_loss"] == pytest.approx(hist["train_loss"].min())


def test_bad_input_fails_before_training(data: dict, tmp_path: Path) -> None:
    cfg = config(patch_size=[64, 64], pad=False)
    with pytest.raises(InputError, match="smaller than train.patch_size"):
        train(cfg, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a biapipe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_worker_processes_draw_the_same_patches(data: dict, tmp_path: Path) -> None:
    # patches depend only on (seed, epoch, index), so loader workers change nothing but speed
    train(config(epochs=2), data, tmp_path / "main")
    train(config(epochs=2, num_workers=1), data, tmp_path / "workers")
    assert_same_weights(tmp_path / "main" / "last.pt", tmp_path / "workers" / "last.pt")


def test_3d_training_runs_and_checkpoint_rebuilds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((8, 16, 16), np.int16)
    label[2:6, 4:10, 5:12] = 1
    image = (label + rng.normal(0, 0.3, label.shape)).astype(np.float32)[..., None]
    write_zarr(tmp_path / "v.zarr", image)
    write_zarr(tmp_path / "v_target.zarr", label[..., None])
    pairs = [(tmp_path / "v.zarr", tmp_path / "v_target.zarr")]
    cfg = validate_config({"experiment": "t", "workflow": "semantic", "ndim": 3, "data": {"train": {"images": "x"}},
                           "train": {"model": {"depth": 1, "width": 4, "norm": "group"}, "patch_size": [8, 16, 16],
                                     "epochs": 2, "patches_per_epoch": 4, "batch_size": 2, "val_patches": 2,
                                     "device": "cpu", "threads": 1}})
    summary = train_model(cfg, BinaryTask(cfg), pairs, pairs, tmp_path / "out")
    assert summary["finished"] and summary["epochs_run"] == 2
    model, ckpt = load_checkpoint(tmp_path / "out" / "best.pt")
    assert ckpt["model"]["ndim"] == 3
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 2, 8, 16, 16)


# --------------------------------------------------------------------------- schedules, clipping, precision, monitors

from torch import nn  # noqa: E402

from biapipe.tasks import get_task  # noqa: E402
from biapipe.training.loop import Run  # noqa: E402
from biapipe.training.schedules import cosine_factor, make_scheduler, onecycle_factor  # noqa: E402
from biapipe.training.state import TrainState  # noqa: E402


def lrs_of(scheduler_name: str, epochs: int = 4, steps: int = 5, **train_keys: Any) -> list[float]:
    """Learning rate before every optimizer step of a whole run."""
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tcfg = config(epochs=epochs, scheduler=scheduler_name, **train_keys)["train"]
    sched = make_scheduler(opt, tcfg, steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_with_warmup_and_onecycle_shapes() -> None:
    lrs = lrs_of("cosine", warmup_epochs=1)
    assert lrs[:5] == pytest.approx([0.1 * k / 6 for k in range(1, 6)])  # linear ramp over one epoch (5 steps)
    assert lrs[5] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 * cosine_factor(19, 20, 5), rel=1e-6)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # then only down
    assert min(lrs) > 0
    one = lrs_of("onecycle")
    peak = int(np.argmax(one))
    assert peak == 6 and one[peak] == pytest.approx(0.1)  # 30% of 20 steps rising
    assert one[0] == pytest.approx(0.1 / 25) and one[-1] < 0.1 / 25
    assert onecycle_factor(10**6, 20) == pytest.approx(1 / 25 / 1e4)
    warm_const = lrs_of("none", warmup_epochs=0.4)  # 2 steps
    assert warm_const[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    plain = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1)
    assert make_scheduler(plain, config(scheduler="none")["train"]) is None


def test_gradient_clipping_bounds_the_step() -> None:
    model = nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    run = Run(model, opt, None, TrainState(), torch.device("cpu"), torch.contiguous_format, grad_clip=0.5)
    run.step(1000.0 * model(torch.ones(1, 4)).sum())
    assert float((model.weight.detach() - before).norm()) == pytest.approx(0.5, rel=1e-5)


def test_amp_is_ignored_on_cpu_with_a_log_line(data: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="biapipe.training"):
        train(config(epochs=2, amp="bf16"), data, tmp_path / "amp")
    assert "train.amp: bf16 ignored on cpu" in caplog.text
    train(config(epochs=2), data, tmp_path / "fp32")
    assert_same_weights(tmp_path / "amp" / "last.pt", tmp_path / "fp32" / "last.pt")


def test_monitor_iou_selects_best_checkpoint_by_validation_iou(data: dict, tmp_path: Path) -> None:
    summary = train(config(epochs=4, monitor="iou", grad_clip=1.0, warmup_epochs=0.5), data, tmp_path)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds", "val_iou"]
    assert hist["val_iou"].between(0, 1).all() and hist["val_iou"].iloc[-1] > 0.5
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["monitor"] == "iou" and summary["monitor"] == "iou"
    assert best["epoch"] == int(hist["epoch"][hist["val_iou"].idxmax()])
    assert best["monitor_value"] == pytest.approx(hist["val_iou"].max())
    assert best["val_loss"] == pytest.approx(float(hist.loc[hist["val_iou"].idxmax(), "val_loss"]))


def instance_pairs(folder: Path) -> tuple[dict[str, Any], list[tuple[Path, Path]]]:
    cfg = validate_config({"experiment": "t", "workflow": "instance", "ndim": 2, "seed": 1,
                           "data": {"train": {"images": "x"}},
                           "train": {"model": {"depth": 2, "width": 4}, "patch_size": [32, 32], "epochs": 3,
                                     "patches_per_epoch": 8, "val_patches": 4, "optimizer": {"lr": 0.02},
                                     "threads": 1, "device": "cpu", "monitor": "f1"}})
    task = get_task(cfg)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(2):
        label = np.zeros((40, 40), np.uint16)
        for k, (y, x) in enumerate(rng.integers(3, 30, size=(4, 2)), start=1):
            label[y:y + 6, x:x + 6] = k
        image = ((label > 0) + rng.normal(0, 0.2, label.shape)).astype(np.float32)[..., None]
        write_zarr(folder / f"i{i}.zarr", image)
        write_zarr(folder / f"t{i}.zarr", task.make_targets(label))
        pairs.append((folder / f"i{i}.zarr", folder / f"t{i}.zarr"))
    return cfg, pairs


def test_monitor_f1_for_instances_uses_the_watershed(tmp_path: Path) -> None:
    cfg, pairs = instance_pairs(tmp_path)
    summary = train_model(cfg, get_task(cfg), pairs[:1], pairs[1:], tmp_path / "out")
    hist = pd.read_csv(tmp_path / "out" / "history.csv")
    assert "val_f1" in hist and hist["val_f1"].between(0, 1).all()
    assert summary["monitor"] == "f1" and summary["best_value"] == pytest.approx(hist["val_f1"].max())


def test_debug_samples_are_written_and_do_not_change_the_run(data: dict, tmp_path: Path) -> None:
    cfg = config(epochs=1, augment={"debug_samples": 3, "rotate": 1.0})
    train(cfg, data, tmp_path / "debug")
    folder = tmp_path / "debug" / "augment_samples"
    assert sorted(p.name for p in folder.iterdir()) == [
        "montage.png", *[f"sample_{i:02d}_{kind}.tif" for i in range(3) for kind in ("image", "target")]]
    target = read_array(folder / "sample_00_target.tif")
    assert target.shape == (32, 32, 1) and set(np.unique(target)) <= {-1, 0, 1}
    train(config(epochs=1, augment={"rotate": 1.0}), data, tmp_path / "plain")
    assert_same_weights(tmp_path / "debug" / "last.pt", tmp_path / "plain" / "last.pt")


@pytest.mark.parametrize("arch", ["resunet", "attention_unet"])
def test_other_architectures_train(arch: str, data: dict, tmp_path: Path) -> None:
    summary = train(config(epochs=1, model={"arch": arch, "depth": 2, "width": 4}), data, tmp_path)
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert summary["finished"] and ckpt["model"]["arch"] == arch


def test_patch_size_must_fit_the_network(data: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.patch_size"):
        train(config(patch_size=[30, 32], model={"depth": 2, "width": 4}), data, tmp_path)


def test_anisotropic_3d_training_pools_z_less(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((4, 16, 16), np.int16)
    label[1:3, 4:10, 5:12] = 1
    image = (label + rng.normal(0, 0.3, label.shape)).astype(np.float32)[..., None]
    write_zarr(tmp_path / "v.zarr", image)
    write_zarr(tmp_path / "v_target.zarr", label[..., None])
    pairs = [(tmp_path / "v.zarr", tmp_path / "v_target.zarr")]
    cfg = validate_config({"experiment": "t", "workflow": "semantic", "ndim": 3,
                           "data": {"train": {"images": "x"}, "voxel_size": [3.0, 1.0, 1.0]},
                           "train": {"model": {"depth": 2, "width": 4, "norm": "group"}, "patch_size": [4, 16, 16],
                                     "epochs": 1, "patches_per_epoch": 2, "batch_size": 2, "val_patches": 1,
                                     "device": "cpu", "threads": 1}})
    train_model(cfg, BinaryTask(cfg), pairs, pairs, tmp_path / "out")
    model, ckpt = load_checkpoint(tmp_path / "out" / "best.pt")
    assert ckpt["model"]["pool_z"] == [False, True]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 2, 8, 12)).shape == (1, 2, 2, 8, 12)  # z needs only a multiple of 2
