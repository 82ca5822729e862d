"""Real Snakemake runs of the instance workflow (2D with tuned thresholds, 3D)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import TINY_TRAIN, ReportPage, evaluate_like_the_workflow, planned_jobs, snakemake, tiny_config, write_config

from biapipe.data.demo import make_demo_data

pytestmark = pytest.mark.workflow


def instance_config(data, ndim=2, **sections):
    defaults = {
        "targets": {"instance": {"channels": ["foreground", "contour"]}},
        "train": {**TINY_TRAIN, "epochs": 3, "patch_size": [32, 32] if ndim == 2 else [8, 16, 16]},
        "evaluate": {"iou_thresholds": [0.5, 0.75]},
    }
    for key, value in defaults.items():
        sections[key] = {**value, **sections.get(key, {})}
    cfg = tiny_config(data, "instance", "inst", ndim, **sections)
    cfg["seed"] = 4
    return cfg


def test_instance_2d_with_tuning(tmp_path):
    make_demo_data(tmp_path / "data", 2, 3, 1, 2, 48, seed=6)
    cfgfile = write_config(tmp_path / "c.yaml", instance_config(tmp_path / "data", postprocess={"instance": {"tuned": True}}))
    snakemake(tmp_path, cfgfile)
    out = tmp_path / "results" / "inst"
    tuned = (out / "tuning" / "instance_thresholds.json").read_text()
    assert "thresholds" in tuned
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["image"]) == ["test_000", "test_001"]
    for col in ("tp@0.5", "fp@0.5", "fn@0.5", "f1@0.5", "accuracy@0.5", "pq@0.5", "f1@0.75"):
        assert col in metrics.columns
    n_gt = metrics["n_gt"].to_numpy()
    assert (metrics["tp@0.5"] + metrics["fn@0.5"] == n_gt).all()
    labels = tifffile.imread(out / "labels" / "test_000.tif")
    assert labels.dtype == np.uint16 and labels.shape == (48, 48)
    objects = pd.read_csv(out / "objects" / "test_000.csv")
    assert len(objects) == len(np.unique(labels[labels > 0]))
    summary = pd.read_csv(out / "summary.csv")
    assert {"pooled_f1@0.5", "mean_f1@0.5"} <= set(summary.columns)
    # COCO AP from the object scores (mean foreground probability) beside the DSB accuracy
    assert objects["score"].between(0, 1).all()
    matches = pd.read_csv(out / "metrics" / "test_000_matches.csv")
    assert list(matches.columns) == ["label", "score", "iou"] and len(matches) == len(objects)
    assert {"ap@0.5:0.95", "ap@0.5", "ap@0.75", "pooled_accuracy@0.5"} <= set(summary.columns)
    assert 0 <= summary.loc[0, "ap@0.75"] <= summary.loc[0, "ap@0.5"] <= 1
    # biapipe evaluate gives the workflow's numbers, AP too (it finds objects/ beside labels/)
    ours = evaluate_like_the_workflow(out, out / "labels", tmp_path / "data" / "test" / "labels", "instance",
                                      "--iou-thresholds", "0.5", "0.75")
    for column in ("ap@0.5:0.95", "ap@0.5", "pooled_f1@0.5"):
        assert ours.loc[0, column] == pytest.approx(summary.loc[0, column], nan_ok=True)
    page = ReportPage((out / "report.html").read_text())
    assert [section for section, _ in page.images].count("gallery") >= 1
    assert "ap@0.5:0.95" in page.frame("summary-table")["figure"].tolist()
    # a post-processing change reruns post-processing and scoring, not training or tuning
    cfg2 = instance_config(tmp_path / "data", postprocess={"instance": {"tuned": True, "min_size": 3}})
    plan = planned_jobs(tmp_path, write_config(tmp_path / "c2.yaml", cfg2))
    assert "train" not in plan and "predict" not in plan
    assert plan["postprocess"] == 2 and "evaluate" not in plan and plan["tune"] == 1


def test_instance_3d(tmp_path):
    make_demo_data(tmp_path / "data", 3, 2, 1, 1, 32, seed=7)
    cfg = instance_config(
        tmp_path / "data", ndim=3,
        targets={"instance": {"channels": ["foreground", "contour", "distance"]}},
    )
    cfg["data"]["voxel_size"] = [2.0, 1.0, 1.0]
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "inst"
    labels = tifffile.imread(out / "labels" / "test_000.tif")
    assert labels.ndim == 3
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.loc[0, "n_gt"] > 0
