"""Real Snakemake runs of the semantic workflow on tiny generated data (2D and 3D)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ReportPage, evaluate_like_the_workflow, planned_jobs, snakemake, tiny_config, write_config, write_tif

from biapipe.data.demo import make_demo_data

pytestmark = pytest.mark.workflow

def folder_config(data: Path, ndim: int = 2, **sections) -> dict:
    return tiny_config(data, "semantic", "tiny", ndim, targets={"classes": 2, "binarize": True, **sections.pop("targets", {})}, **sections)


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    """One finished 2D run that later tests plan changes against."""
    work = tmp_path_factory.mktemp("wf2d")
    make_demo_data(work / "data", 2, 3, 1, 2, 48, seed=5)
    cfgfile = write_config(work / "cfg.yaml", folder_config(work / "data"))
    snakemake(work, cfgfile)
    return work, cfgfile


def test_end_to_end_outputs(run2d):
    work, _ = run2d
    out = work / "results" / "tiny"
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["image"]) == ["test_000", "test_001"]
    assert metrics["foreground_iou"].between(0, 1).all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "n_images"] == 2
    history = pd.read_csv(out / "model" / "history.csv")
    assert len(history) == 2 and np.isfinite(history["train_loss"]).all()
    ckpt = torch.load(out / "model" / "best.pt", weights_only=True)
    assert ckpt["model"]["out_channels"] == 2
    mask_files = sorted(p.name for p in (out / "masks").iterdir())
    assert mask_files == ["test_000.tif", "test_001.tif"]
    assert (out / "model" / "training_curve.png").stat().st_size > 1000
    assert not (out / "model" / "checkpoint" / "resume.pt").exists()
    assert (out / "benchmarks" / "train.tsv").is_file()
    assert (out / "logs" / "train.log").is_file()
    for log in ("predict/test_000", "postprocess/test_001"):  # per-image jobs log their time instead
        assert "done in" in (out / "logs" / f"{log}.log").read_text()


def test_report_evaluate_and_summary_of_a_run(run2d, capsys):
    """The page a person opens, the evaluate command on the run's outputs, the three-line summary."""
    from biapipe.cli import main

    work, _ = run2d
    out = work / "results" / "tiny"
    page = ReportPage((out / "report.html").read_text())
    assert {"summary", "per-image", "gallery", "training", "runtime", "config"} <= set(page.sections)
    assert "foreground_iou" in page.tables["metrics-table"] and "stage" in page.tables["stages-table"]
    gallery = [alt for section, alt in page.images if section == "gallery"]
    assert len(gallery) == 2 and gallery[0].startswith("best: ")  # 2 test images: best and worst
    assert ("training", "training curve") in page.images
    stages = page.frame("stages-table").set_index("stage")
    assert stages.loc["postprocess", "jobs"] == "2" and float(stages.loc["train", "benchmark_s"]) > 0
    evaluate_like_the_workflow(out, out / "masks", work / "data" / "test" / "labels", "semantic", "--binarize")
    capsys.readouterr()
    assert main(["summary", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("tiny: semantic workflow, 2D; trained 2 epochs on 3 images")
    score = pd.read_csv(out / "summary.csv").loc[0, "pooled_foreground_iou"]
    assert f"foreground IoU (pooled over pixels) = {score:.4f}" in lines[1]


def test_snakemake_report_gathers_the_flagged_outputs(run2d):
    work, cfgfile = run2d
    proc = snakemake(work, cfgfile, "--report", str(work / "snakemake_report.html"))
    log = proc.stdout + proc.stderr
    for name in ("training_curve.png", "metrics.csv", "summary.csv", "report.html", "0_best_test_"):
        assert f"Adding {name}" in log, name
    assert (work / "snakemake_report.html").stat().st_size > 100_000  # Snakemake's page, scripts inlined


def test_nothing_to_do_after_a_run(run2d):
    work, cfgfile = run2d
    assert planned_jobs(work, cfgfile) == {}


def test_postprocess_change_reruns_only_postprocess_and_evaluation(run2d, tmp_path):
    work, cfgfile = run2d
    cfg = folder_config(work / "data", postprocess={"threshold": 0.7})
    plan = planned_jobs(work, write_config(tmp_path / "c.yaml", cfg))
    assert plan == {"postprocess": 2, "aggregate": 1, "report": 1, "all": 1}


def test_train_change_retrains(run2d, tmp_path):
    work, _ = run2d
    cfg = folder_config(work / "data", train={"epochs": 3})
    plan = planned_jobs(work, write_config(tmp_path / "c.yaml", cfg))
    assert plan.get("train") == 1 and plan.get("predict") == 2 and "prepare" not in plan


def test_thread_count_does_not_retrain(run2d, tmp_path):
    work, _ = run2d
    cfg = folder_config(work / "data", train={"threads": 2}, predict={"threads": 2})
    assert planned_jobs(work, write_config(tmp_path / "c.yaml", cfg)) == {}


def test_new_test_image_runs_only_that_image(run2d, tmp_path):
    work, cfgfile = run2d
    data = work / "data" / "test"
    shutil.copy(data / "images" / "test_000.tif", data / "images" / "test_new.tif")
    shutil.copy(data / "labels" / "test_000.tif", data / "labels" / "test_new.tif")
    try:
        plan = planned_jobs(work, cfgfile)
        assert plan == {"predict": 1, "postprocess": 1, "aggregate": 1, "report": 1, "all": 1}
    finally:
        (data / "images" / "test_new.tif").unlink()
        (data / "labels" / "test_new.tif").unlink()


def test_same_seed_gives_identical_metrics(run2d, tmp_path):
    work, cfgfile = run2d
    other = tmp_path / "again"
    other.mkdir()
    proc = snakemake(other, cfgfile)
    # training's progress on the console (one line per epoch, with the time left) and in its log
    assert "[train] epoch 1/2  train_loss" in proc.stderr and "ETA" in proc.stderr
    assert "epoch 2/2" in (other / "results" / "tiny" / "logs" / "train.log").read_text()
    first = (work / "results" / "tiny" / "metrics.csv").read_bytes()
    second = (other / "results" / "tiny" / "metrics.csv").read_bytes()
    assert first == second


def test_semantic_3d_end_to_end(tmp_path):
    make_demo_data(tmp_path / "data", 3, 2, 1, 1, 32, seed=2)
    cfg = folder_config(tmp_path / "data", ndim=3, postprocess={"z_median": 3}, normalize={"scope": "dataset"})
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "tiny"
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["image"]) == ["test_000"]
    assert (out / "normalize" / "stats.json").is_file()
    import tifffile

    mask = tifffile.imread(out / "masks" / "test_000.tif")
    label = tifffile.imread(tmp_path / "data" / "test" / "labels" / "test_000.tif")
    assert mask.shape == label.shape and mask.ndim == 3


def test_default_demo_config_dry_run(tmp_path):
    """The shipped default config plans the whole chain from demo data (no files needed yet)."""
    from conftest import REPO

    shutil.copytree(REPO / "config", tmp_path / "config")
    plan = planned_jobs(tmp_path, None)
    assert plan["demo_data"] == 1 and plan["train"] == 1 and plan["predict"] == 4 and plan["aggregate"] == 1


# ---------------------------------------------------------------- bad input through the workflow


def test_nan_pixels_stop_before_training(tmp_path):
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 32, seed=1)
    bad = tmp_path / "data" / "test" / "images" / "test_000.tif"
    arr = np.zeros((32, 32), np.float32)
    arr[3, 4] = np.nan
    write_tif(bad, arr)
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", folder_config(tmp_path / "data")), check=False)
    assert proc.returncode != 0
    assert f"{bad}: contains 1 NaN/Inf pixels" in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / "tiny" / "model" / "best.pt").exists()


def test_bad_config_key_stops_at_parse(tmp_path):
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 32, seed=1)
    cfg = folder_config(tmp_path / "data", train={"learning_rate": 0.1})
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), check=False)
    assert proc.returncode != 0
    assert "config key 'train.learning_rate': unknown key" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_label_stops_at_parse(tmp_path):
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 32, seed=1)
    (tmp_path / "data" / "train" / "labels" / "train_001.tif").unlink()
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", folder_config(tmp_path / "data")), check=False)
    assert proc.returncode != 0
    assert "train/images/train_001.tif: has no label" in proc.stdout + proc.stderr


def test_label_out_of_class_range_stops_before_training(tmp_path):
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 32, seed=1)
    cfg = folder_config(tmp_path / "data", targets={"binarize": False})
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), check=False)
    assert proc.returncode != 0
    assert "outside the class range" in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / "tiny" / "model" / "best.pt").exists()
