"""Runs that start from a model, through real Snakemake: predict-only (``model:``) and
``biapipe predict``. A trained experiment's model.pt must reproduce its own outputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TINY_TRAIN, planned_jobs, snakemake, tiny_config, write_config

from biapipe.cli import main
from biapipe.data.demo import make_demo_data

pytestmark = pytest.mark.workflow

TRAINING_RULES = {"train", "train_inputs", "prepare", "normalize_stats", "normalize_stats_inputs", "tune",
                  "predict_for_tuning", "package_model"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished instance experiment with tuned thresholds and dataset-scope normalization."""
    work = tmp_path_factory.mktemp("src")
    make_demo_data(work / "data", 2, 3, 1, 3, 48, seed=6)
    cfg = tiny_config(work / "data", "instance", "src", targets={"instance": {"channels": ["foreground", "contour"]}},
                      postprocess={"instance": {"tuned": True}}, normalize={"scope": "dataset"},
                      train={**TINY_TRAIN, "epochs": 10, "patches_per_epoch": 16, "batch_size": 4,
                             "model": {"depth": 2, "width": 8}, "optimizer": {"lr": 0.01}, "patch_size": [32, 32]}, evaluate={"iou_thresholds": [0.5]})
    snakemake(work, write_config(work / "c.yaml", cfg))
    return work


def predict_only(work: Path, model: Path, name: str = "again", **extra) -> Path:
    cfg = {"experiment": name, "model": str(model), "seed": 3,
           "data": {"test": {"images": str(work / "data" / "test" / "images"),
                             "labels": str(work / "data" / "test" / "labels")}},
           "predict": {"tile_size": [32, 32], "threads": 1}, "evaluate": {"iou_thresholds": [0.5]}, **extra}
    return write_config(work / f"{name}.yaml", cfg)


def test_model_pt_carries_the_run(trained: Path) -> None:
    ckpt = torch.load(trained / "results" / "src" / "model" / "model.pt", weights_only=True)
    tuned = (trained / "results" / "src" / "tuning" / "instance_thresholds.json").read_text()
    assert ckpt["tuned"]["thresholds"] == json.loads(tuned)["thresholds"]
    assert ckpt["config"]["workflow"] == "instance" and ckpt["config"]["targets"]["instance"]["channels"] == \
           ["foreground", "contour"]
    stats = ckpt["config"]["normalize"]["stats"]  # the training images' statistics
    assert stats["method"] == "percentile" and len(stats["low"]) == 1 and stats["low"][0] < stats["high"][0]


def test_predict_only_reproduces_the_experiment(trained: Path) -> None:
    src = trained / "results" / "src"
    cfgfile = predict_only(trained, src / "model" / "model.pt")
    plan = planned_jobs(trained, cfgfile)
    assert not TRAINING_RULES & set(plan), plan
    assert plan["predict"] == plan["postprocess"] == 3
    snakemake(trained, cfgfile)
    out = trained / "results" / "again"
    for i in ("test_000", "test_001", "test_002"):
        np.testing.assert_array_equal(tifffile.imread(out / "labels" / f"{i}.tif"),
                                      tifffile.imread(src / "labels" / f"{i}.tif"))
    metrics = pd.read_csv(out / "metrics.csv")
    pd.testing.assert_frame_equal(metrics, pd.read_csv(src / "metrics.csv"))
    assert metrics["tp@0.5"].sum() > 0  # a model that finds objects
    assert planned_jobs(trained, cfgfile) == {}

    # the model file changing reruns prediction, even with an older time (its stamp is a parameter)
    model = src / "model" / "model.pt"
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    try:
        assert planned_jobs(trained, cfgfile).get("predict") == 3
    finally:
        os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    # another model file: prediction reruns; a post-processing key: post-processing only
    other = trained / "other.pt"
    shutil.copy2(model, other)
    assert planned_jobs(trained, predict_only(trained, other)).get("predict") == 3
    plan = planned_jobs(trained, predict_only(trained, model, postprocess={"instance": {"min_size": 4}}))
    assert plan.get("postprocess") == 3 and "predict" not in plan


def test_models_that_do_not_fit_stop_before_any_job(trained: Path) -> None:
    src = trained / "results" / "src"
    # best.pt is saved before tuning: the thresholds are in model.pt
    proc = snakemake(trained, predict_only(trained, src / "model" / "best.pt", "bad1"), "-n", check=False)
    assert proc.returncode != 0 and "carries none: give the experiment's model/model.pt" in proc.stderr
    # another workflow than the model's
    proc = snakemake(trained, predict_only(trained, src / "model" / "model.pt", "bad2", workflow="semantic"), "-n",
                     check=False)
    assert proc.returncode != 0 and "config key 'workflow': is semantic but the model" in proc.stderr
    # images with other channels than the model takes: the file is named
    rgb = trained / "rgb" / "images"
    rgb.mkdir(parents=True)
    tifffile.imwrite(rgb / "c.tif", np.zeros((40, 40, 3), np.uint8))
    cfg = predict_only(trained, src / "model" / "model.pt", "bad3")
    cfg.write_text(cfg.read_text().replace(str(trained / "data" / "test" / "images"), str(rgb))
                   .replace(str(trained / "data" / "test" / "labels"), "null"))
    proc = snakemake(trained, cfg, "-n", check=False)
    assert proc.returncode != 0 and f"{rgb / 'c.tif'}: has 3 channel(s) but the model" in proc.stderr
    assert "Traceback" not in proc.stderr
    # training images beside a model: that is train.init's job
    proc = snakemake(trained, predict_only(trained, src / "model" / "model.pt", "bad4",
                                           data={"train": {"images": str(trained / "data" / "train" / "images"),
                                                           "labels": str(trained / "data" / "train" / "labels")}}),
                     "-n", check=False)
    assert proc.returncode != 0 and "set train.init instead" in proc.stderr


def test_biapipe_predict_command(trained: Path, capsys: pytest.CaptureFixture) -> None:
    """A folder, a glob or files, no config written by hand; the same outputs as the run's."""
    src = trained / "results" / "src"
    images = trained / "data" / "test" / "images"
    out = trained / "cli_run"
    assert main(["predict", str(src / "model" / "model.pt"), str(images / "test_00[01].tif"), str(images / "test_002.tif"),
                 "--out", str(out), "--labels", str(trained / "data" / "test" / "labels"),
                 "--set", "predict.tile_size=[32, 32]", "--set", "evaluate.iou_thresholds=[0.5]", "--cores", "2"]) == 0
    for i in ("test_000", "test_001", "test_002"):
        np.testing.assert_array_equal(tifffile.imread(out / "labels" / f"{i}.tif"),
                                      tifffile.imread(src / "labels" / f"{i}.tif"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), pd.read_csv(src / "metrics.csv"))
    assert "model: " in (out / "predict.yaml").read_text() and (out / "report.html").is_file()
    printed = capsys.readouterr().out  # the run ends on its headline, as `biapipe summary` gives it
    assert main(["summary", str(out)]) == 0
    headline = capsys.readouterr().out
    assert "model " in headline and printed.endswith(headline)
    assert main(["predict", str(src / "model" / "model.pt"), str(images), "--out", str(out), "-n",
                 "--set", "predict.tile_size=[32, 32]"]) == 0  # a folder: planned from the folder, no sheet
