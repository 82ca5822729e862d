"""What a hostile but fair user meets, at library level: names that escape results/, bad input in
every split caught before training with one line naming the file, expected failures (disk
full, broken links, permissions) as one line, temporary files of killed writers removed,
a cache that two processes can save at once, and the rule parameters' independence of key
order."""

from __future__ import annotations

import errno
import multiprocessing
import os
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import write_tif

from biapipe.core import imageio
from biapipe.core.config import rerun_key, validate_config
from biapipe.core.errors import BiapipeError, ConfigError, InputError, expected_failure
from biapipe.data.validate import ProbeCache
from biapipe.tasks import get_task
from biapipe.workflow import smk, stages
from biapipe.workflow.joblog import stage
from biapipe.workflow.orphan import is_snakemake, snakemake_ancestor

SPLITS = ("train", "val", "test")


def layout(root: Path, n: int = 2, shape: tuple[int, int] = (32, 32)) -> dict:
    """train/val/test folders of uint8 images and semantic labels (0/1)."""
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for i in range(n):
            write_tif(root / split / "images" / f"{split}{i}.tif", rng.integers(0, 255, shape, dtype=np.uint8))
            write_tif(root / split / "labels" / f"{split}{i}.tif", (rng.random(shape) > 0.5).astype(np.uint8))
    return {"experiment": "rel", "workflow": "semantic", "ndim": 2,
            "data": {s: {"images": str(root / s / "images"), "labels": str(root / s / "labels")} for s in SPLITS},
            "train": {"patch_size": [32, 32]}}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["..", ".", "...", "demo\n", "a/b", ".hidden", "", "x\ny"])
def test_experiment_names_never_leave_results(name: str) -> None:
    with pytest.raises(ConfigError, match="config key 'experiment'"):
        validate_config({"experiment": name, "workflow": "semantic", "ndim": 2, "data": {"demo": {}}})


@pytest.mark.parametrize("name", ["demo", "my_exp.v2", "A-1", "_x"])
def test_ordinary_experiment_names_pass(name: str) -> None:
    assert validate_config({"experiment": name, "workflow": "semantic", "ndim": 2, "data": {"demo": {}}})[
        "experiment"] == name


# --------------------------------------------------------------------------- reruns follow meaning


def _reordered(value: object) -> object:
    """The same config with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    return value


def test_rule_parameters_do_not_depend_on_key_order_or_spelled_out_defaults() -> None:
    given = {"experiment": "x", "workflow": "instance", "ndim": 2, "data": {"demo": {"n_train": 3}},
             "train": {"epochs": 3, "model": {"width": 8, "depth": 2}}, "postprocess": {"instance": {"tuned": True}}}
    a = validate_config(given)
    b = validate_config(_reordered(yaml.safe_load(yaml.safe_dump(dict(a), sort_keys=True))))
    assert list(b["train"]) != list(a["train"])  # the files differ in order ...
    assert smk.train_params(a) == smk.train_params(b)  # ... not in meaning
    assert smk.predict_params(a) == smk.predict_params(b)
    for section in ("normalize", "targets", "postprocess", "evaluate"):
        assert rerun_key(a[section]) == rerun_key(b[section])
    assert rerun_key(a["data"]["demo"]) == rerun_key(b["data"]["demo"])
    changed = validate_config({**given, "train": {**given["train"], "epochs": 4}})
    assert smk.train_params(changed) != smk.train_params(a)
    kept = validate_config({**given, "train": {**given["train"], "keep_epochs": 1}})
    assert smk.train_params(kept) == smk.train_params(a)  # an output-only key: never retrains


def test_another_workflows_target_settings_never_retrain() -> None:
    """A new workflow's defaults in the schema (an upgrade) or a setting for another workflow
    leave an experiment's training and prepared targets as they are; its own settings do not."""
    given = {"experiment": "x", "workflow": "instance", "ndim": 2, "data": {"demo": {"n_train": 3}}}
    a = validate_config(given)
    other = dict(a["targets"])
    other.pop("denoising")  # as before the denoising workflow existed
    other["detection"] = {**a["targets"]["detection"], "radius": 9}
    b = a.replace(targets=other)
    assert smk.train_params(a) == smk.train_params(b) and smk.targets_key(a) == smk.targets_key(b)
    own = a.replace(targets={**a["targets"], "instance": {**a["targets"]["instance"], "channels": "BC"}})
    assert smk.targets_key(own) != smk.targets_key(a)


# --------------------------------------------------------------------------- bad input, every split


def _truncate(path: Path) -> None:
    """Keep the TIFF header (and the first bytes of the pixels), cut the rest of the body."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _plan(cfg: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> smk.Plan:
    monkeypatch.chdir(tmp_path)  # the header cache goes to ./.snakemake
    return smk.make_plan(cfg, tmp_path)


@pytest.mark.parametrize("split", SPLITS)
def test_an_rgba_image_among_grey_ones_is_named_when_the_workflow_is_parsed(split, tmp_path, monkeypatch) -> None:
    cfg = layout(tmp_path)
    bad = tmp_path / split / "images" / f"{split}1.tif"
    tifffile.imwrite(bad, np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(InputError, match=rf"{split}1.tif: has 4 channel\(s\) but .* has 1"):
        _plan(cfg, tmp_path, monkeypatch)


@pytest.mark.parametrize("split", SPLITS)
def test_a_symlink_loop_is_one_line_naming_the_file(split, tmp_path, monkeypatch) -> None:
    cfg = layout(tmp_path)
    loop = tmp_path / split / "images" / f"{split}9.tif"
    os.symlink(loop, loop)
    (tmp_path / split / "labels" / f"{split}9.tif").symlink_to(tmp_path / split / "labels" / f"{split}0.tif")
    with pytest.raises(InputError, match=rf"{split}9.tif: too many levels of symbolic links"):
        _plan(cfg, tmp_path, monkeypatch)


def _break(kind: str, image: Path, label: Path) -> Path:
    """Make one pixel-level problem; returns the file the message must name."""
    if kind == "truncated image":
        tifffile.imwrite(image, np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
        tifffile.imwrite(label, np.zeros((64, 64), np.uint8))
        _truncate(image)
        return image
    if kind == "label outside the classes":
        tifffile.imwrite(label, np.full((32, 32), 7, np.uint8))
        return label
    if kind == "float label with NaN":
        lab = np.zeros((32, 32), np.float32)
        lab[3, 3] = np.nan
        tifffile.imwrite(label, lab)
        return label
    img = np.ones((32, 32), np.float32)
    img[5, 5] = np.inf
    tifffile.imwrite(image, img)
    return image


BAD_PIXELS = ("truncated image", "label outside the classes", "float label with NaN", "image with Inf")
MESSAGES = {"truncated image": "cannot read|truncated", "label outside the classes": "outside the class range",
            "float label with NaN": "NaN", "image with Inf": "NaN/Inf"}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("kind", BAD_PIXELS)
def test_pixel_level_problems_stop_before_training_naming_the_file(split, kind, tmp_path, monkeypatch) -> None:
    """Training and validation images meet the check in their prepare jobs, test images in the
    train job before it trains: both run before training, and both name the input file."""
    cfg = layout(tmp_path)
    image, label = (tmp_path / split / d / f"{split}1.tif" for d in ("images", "labels"))
    named = _break(kind, image, label)
    if kind == "truncated image" and split != "test":
        # train.plan: auto reads the training images it fingerprints when the workflow is parsed
        with pytest.raises(InputError, match=rf"{named.name}: .*({MESSAGES[kind]})"):
            _plan(cfg, tmp_path, monkeypatch)
        cfg["train"]["plan"] = "none"  # without planning, the prepare job is where it is found
    plan = _plan(cfg, tmp_path, monkeypatch)
    task = plan.task
    with pytest.raises(InputError, match=rf"{named.name}: .*({MESSAGES[kind]})"):
        if split == "test":
            samples = plan.test_samples
            ids = plan.ids("test")
            stages.check_test_data([samples[i].image for i in ids], [samples[i].label for i in ids], task, None, 1.0,
                                   [False] * len(ids))
        else:
            sample = plan.train_samples[f"{split}1"]
            stages.prepare(image=sample.image, label=sample.label, image_out=str(tmp_path / "n.zarr"),
                           targets_out=str(tmp_path / "t.zarr"), task=task, axes=None,
                           normalize=plan.cfg["normalize"], memory_gb=plan.cfg["train"]["memory_gb"],
                           patch_size=plan.cfg["train"]["patch_size"])


def test_good_test_data_passes_the_check(tmp_path, monkeypatch) -> None:
    plan = _plan(layout(tmp_path), tmp_path, monkeypatch)
    ids = plan.ids("test")
    stages.check_test_data([plan.test_samples[i].image for i in ids], [plan.test_samples[i].label for i in ids],
                           plan.task, None, 1.0, [False] * len(ids))


# --------------------------------------------------------------------------- expected failures


def test_disk_full_permissions_and_loops_become_one_line(tmp_path) -> None:
    with pytest.raises(OSError) as full:
        tifffile.imwrite("/dev/full", np.zeros((512, 512), np.uint16))
    error = expected_failure(full.value)
    assert isinstance(error, InputError) and "no space left" in str(error) and "rerun" in str(error)
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError) as checkpoint:
        torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    assert "no space left" in str(expected_failure(checkpoint.value))
    loop = tmp_path / "loop.tif"
    os.symlink(loop, loop)
    with pytest.raises(OSError) as looped:
        loop.read_bytes()
    assert str(expected_failure(looped.value)).startswith(f"{loop}: too many levels of symbolic links")
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out.tif"))
    assert "permission denied" in str(expected_failure(denied))
    assert expected_failure(ValueError("a bug")) is None  # a bug keeps its traceback


def test_a_stage_reports_an_expected_failure_without_library_frames(tmp_path) -> None:
    @stage
    def writes_to_a_full_disk() -> None:
        tifffile.imwrite("/dev/full", np.zeros((512, 512), np.uint16))

    with pytest.raises(BiapipeError) as caught:
        writes_to_a_full_disk(log=str(tmp_path / "job.log"))
    frames = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert "writes_to_a_full_disk" not in frames and len(frames) <= 2
    assert "\n" not in str(caught.value)
    assert "no space left" in (tmp_path / "job.log").read_text()

    @stage
    def has_a_bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError) as bug:
        has_a_bug()
    assert "has_a_bug" in [f.name for f in traceback.extract_tb(bug.value.__traceback__)]


# --------------------------------------------------------------------------- temporary files


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path) -> None:
    out = tmp_path / "pred.zarr"
    host = socket.gethostname()
    dead = tmp_path / f".pred.zarr.{host}~{2**22 + 12345}~deadbeef.tmp.zarr"  # no such process
    dead.mkdir()
    (dead / "chunk").write_bytes(b"x" * 100)
    live = tmp_path / f".pred.zarr.{host}~{os.getpid()}~cafecafe.tmp.zarr"
    live.mkdir()
    old_foreign = tmp_path / ".pred.zarr.otherhost~1~0000aaaa.tmp.zarr"
    old_foreign.mkdir()
    os.utime(old_foreign, (time.time() - 2 * 86400,) * 2)
    new_foreign = tmp_path / ".pred.zarr.otherhost~1~0000bbbb.tmp.zarr"
    new_foreign.mkdir()
    legacy = tmp_path / ".pred.zarr.0f1e2d3c.tmp.zarr"  # a temp name of earlier versions, fresh
    legacy.mkdir()
    imageio.write_zarr(out, np.zeros((4, 4), np.float32))
    assert not dead.exists() and not old_foreign.exists()
    assert live.exists() and new_foreign.exists() and legacy.exists()
    assert out.is_dir()


def test_a_folder_is_swept_once_per_process_not_once_per_output(tmp_path, monkeypatch) -> None:
    """Thousands of outputs of a batch job in one folder: listing it per output is quadratic."""
    listed: list[str] = []
    scandir = os.scandir
    monkeypatch.setattr(imageio.os, "scandir", lambda folder: listed.append(str(folder)) or scandir(folder))
    dead = tmp_path / f".a.tif.{socket.gethostname()}~{2**22 + 12345}~deadbeef.tmp.tif"
    dead.write_bytes(b"x")
    for i in range(20):
        imageio.write_tiff(tmp_path / f"{i}.tif", np.zeros((2, 2), np.uint8))
    assert listed == [str(tmp_path)] and not dead.exists()
    assert len(list(tmp_path.glob("*.tif"))) == 20


def _save_many(path: str, worker: int) -> None:
    for i in range(150):
        cache = ProbeCache(path)
        cache.entries[f"{worker}-{i}"] = [1, 2, [3], "|u1"]
        cache.dirty = True
        cache.save()


def test_two_processes_can_save_the_header_cache_at_once(tmp_path) -> None:
    path = str(tmp_path / "probe-cache.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert ProbeCache(path).entries  # a valid cache remains
    assert not [p for p in tmp_path.iterdir() if p.name != "probe-cache.json"]


# --------------------------------------------------------------------------- orphans


@pytest.mark.parametrize(("argv", "expected"), [
    (["/usr/bin/python3", "-m", "snakemake", "--cores", "2"], True),
    ([".venv/bin/snakemake", "--profile", "x"], True),
    (["/usr/bin/python3", "/home/u/.venv/bin/snakemake", "-n"], True),
    (["/bin/bash", "-c", "python /w/.snakemake/scripts/tmpab.train.py"], False),
    (["python", "/w/.snakemake/scripts/tmpab.train.py"], False),
])
def test_the_snakemake_ancestor_is_recognised(argv: list[str], expected: bool) -> None:
    assert is_snakemake(argv) is expected


def test_outside_snakemake_there_is_no_ancestor_to_watch() -> None:
    assert snakemake_ancestor() is None or is_snakemake(Path(f"/proc/{snakemake_ancestor()}/cmdline")
                                                         .read_bytes().decode().split("\0")[:-1])


def test_test_names_may_equal_training_names_in_the_plan(tmp_path, monkeypatch) -> None:
    cfg = layout(tmp_path)
    for f in (tmp_path / "test").rglob("test*.tif"):
        f.rename(f.with_name(f.name.replace("test", "train")))
    plan = _plan(cfg, tmp_path, monkeypatch)
    assert set(plan.ids("test")) == {"train0", "train1"} and set(plan.ids("train")) == {"train0", "train1"}
    assert plan.test_samples["train0"].image.endswith("test/images/train0.tif")
    assert get_task(plan.cfg).name == "semantic"
