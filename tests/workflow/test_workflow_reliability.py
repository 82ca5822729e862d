"""Reliability through real Snakemake runs: a reordered config plans nothing, bad test data stops
the run before training in one line, test images may share training images' names, a
killed Snakemake does not leave its training running, stale temporaries are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    REPO,
    TINY_TRAIN,
    planned_jobs,
    snakemake,
    tiny_config,
    write_config,
)

from biapipe.core.config import validate_config
from biapipe.data.demo import make_demo_data

pytestmark = pytest.mark.workflow


def _reordered(value: object) -> object:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    return value


def test_a_reordered_config_with_defaults_spelled_out_plans_nothing(tmp_path: Path) -> None:
    """Every rule with dict parameters (demo data, dataset statistics, prepare, train, predict,
    tuning, post-processing, aggregation) keeps its results when the same experiment is written
    with its keys in another order and every default spelled out."""
    cfg = {"experiment": "order", "workflow": "instance", "ndim": 2, "seed": 2,
           "data": {"demo": {"folder": "data/demo", "n_train": 3, "n_val": 1, "n_test": 2, "size": 48}},
           "normalize": {"scope": "dataset"},
           "train": {**TINY_TRAIN, "patch_size": [32, 32]},
           "predict": {"tile_size": [32, 32], "threads": 1},
           "postprocess": {"instance": {"tuned": True}},
           "evaluate": {"iou_thresholds": [0.5]}}
    first = write_config(tmp_path / "first.yaml", cfg)
    snakemake(tmp_path, first)
    spelled_out = validate_config(cfg)
    text = yaml.safe_dump(_reordered(yaml.safe_load(yaml.safe_dump(dict(spelled_out), sort_keys=True))),
                          sort_keys=False)
    assert text.splitlines()[0] != yaml.safe_dump(cfg, sort_keys=False).splitlines()[0]
    second = tmp_path / "second.yaml"
    second.write_text(text)
    assert planned_jobs(tmp_path, second) == {}
    # and a change of meaning still reruns what it must
    cfg["postprocess"] = {"instance": {"tuned": True, "min_size": 4}}
    plan = planned_jobs(tmp_path, write_config(tmp_path / "third.yaml", cfg))
    assert plan.get("postprocess") == 2 and "train" not in plan


def _run_with_a_truncated_image(tmp_path: Path, image: str) -> tuple[Path, int, str]:
    """A semantic run whose ``image`` (e.g. "test/images/test_001.tif") lost two thirds of its
    bytes: (that file, Snakemake's exit status, its console output)."""
    make_demo_data(tmp_path / "data", 2, 2, 1, 2, 48, seed=1)
    bad = tmp_path / "data" / image
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(bad, tifffile.imread(bad))  # uncompressed, so the header outlives the cut
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    cfg = tiny_config(tmp_path / "data", "semantic", "trunc", targets={"binarize": True})
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), check=False)
    return bad, proc.returncode, proc.stdout + proc.stderr


def test_a_truncated_test_image_stops_the_run_before_training(tmp_path: Path) -> None:
    bad, status, out = _run_with_a_truncated_image(tmp_path, "test/images/test_001.tif")
    assert status != 0
    assert f"{bad}: cannot read the file (truncated" in out
    assert not (tmp_path / "results" / "trunc" / "model" / "best.pt").exists()
    assert "epoch" not in (tmp_path / "results" / "trunc" / "logs" / "train.log").read_text()  # no training started
    assert "Traceback" not in out and out.count('  File "') == 0


def test_a_truncated_training_image_stops_its_job_with_one_line(tmp_path: Path) -> None:
    """Found while preparing (a ``run:`` job, past planning): the message, not Snakemake's frames."""
    bad, status, out = _run_with_a_truncated_image(tmp_path, "train/images/train_001.tif")
    assert status != 0
    assert f"{bad}: cannot read the file (truncated or corrupt?" in out
    assert "Error in rule prepare" in out
    assert not (tmp_path / "results" / "trunc" / "model" / "best.pt").exists()
    assert "Traceback" not in out and out.count('  File "') == 0


def test_test_images_may_have_the_training_images_names(tmp_path: Path) -> None:
    make_demo_data(tmp_path / "data", 2, 2, 1, 2, 48, seed=3)
    for folder in ("images", "labels"):
        for i, path in enumerate(sorted((tmp_path / "data" / "test" / folder).glob("*.tif"))):
            path.rename(path.with_name(f"train_{i:03d}.tif"))
    cfg = tiny_config(tmp_path / "data", "semantic", "names", targets={"binarize": True})
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "names"
    assert list(pd.read_csv(out / "metrics.csv")["image"]) == ["train_000", "train_001"]
    assert (out / "normalized" / "train_000.zarr").is_dir() and (out / "predictions" / "train_000.zarr").is_dir()


def test_a_symlink_loop_among_the_images_is_one_line(tmp_path: Path) -> None:
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 32, seed=3)
    loop = tmp_path / "data" / "train" / "images" / "train_009.tif"
    os.symlink(loop, loop)
    (tmp_path / "data" / "train" / "labels" / "train_009.tif").symlink_to(
        tmp_path / "data" / "train" / "labels" / "train_000.tif")
    cfg = tiny_config(tmp_path / "data", "semantic", "loop", targets={"binarize": True})
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"biapipe: {loop}: too many levels of symbolic links" in out
    assert "Traceback" not in out


def _training_processes(workdir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if ".snakemake/scripts" in cmd and "train" in cmd and cwd == str(workdir):
            found.append(int(entry.name))
    return found


def test_killing_snakemake_stops_its_training_and_the_rerun_resumes(tmp_path: Path) -> None:
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 48, seed=5)
    cfg = tiny_config(tmp_path / "data", "semantic", "orphan", targets={"binarize": True},
                      train={"epochs": 400, "early_stopping": {"patience": 400}})
    cfgfile = write_config(tmp_path / "c.yaml", cfg)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(cfgfile), "--cores", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "results" / "orphan" / "logs" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and "epoch 2/" in log.read_text()):
        time.sleep(0.5)
    assert "epoch 2/" in log.read_text(), "training did not start"
    assert _training_processes(tmp_path), "no training process found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _training_processes(tmp_path):
        time.sleep(0.5)
    assert not _training_processes(tmp_path), "training outlived Snakemake"
    assert "Snakemake (pid" in log.read_text()
    # the lock a killed run leaves is what --unlock is for; then the run resumes
    snakemake(tmp_path, cfgfile, "--unlock")
    short = tiny_config(tmp_path / "data", "semantic", "orphan", targets={"binarize": True},
                        train={"epochs": 400, "early_stopping": {"patience": 400}})
    assert planned_jobs(tmp_path, write_config(tmp_path / "c.yaml", short)).get("train") == 1
    assert (tmp_path / "results" / "orphan" / "model" / "checkpoint" / "resume.pt").is_file()
