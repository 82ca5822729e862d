"""train.plan: auto through real Snakemake: the plan and its reasons land in model/plan.json and
the run's config.yaml, training images are zoomed to the planned object scale and the model
records it, test images are predicted at it, and the planned config plans nothing new."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
import zarr
from conftest import planned_jobs, snakemake, tiny_config, write_config

from biapipe.data.demo import make_demo_data

pytestmark = pytest.mark.workflow


def test_an_instance_run_is_planned_from_its_data(tmp_path):
    make_demo_data(tmp_path / "data", 2, 3, 1, 2, 64, seed=5)
    cfg = tiny_config(tmp_path / "data", "instance", "auto")
    cfg["train"] = {"plan": "auto", "budget_minutes": 0.1, "model": {"depth": 2, "width": 4}, "threads": 1}
    cfg["evaluate"] = {"iou_thresholds": [0.5]}
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "auto"

    plan = json.loads((out / "model" / "plan.json").read_text())
    assert plan["plan"] == "auto" and plan["fingerprint"]["images"] == 4  # 3 training + 1 validation image
    choices = plan["choices"]
    assert {"train.object_diameter", "train.patch_size", "train.epochs", "predict.rescale",
            "postprocess.instance.tuned"} <= set(choices)
    assert {"train.model.depth", "train.model.width"} <= set(plan["kept_as_written"])
    settled = yaml.safe_load((out / "config.yaml").read_text())
    for key, choice in choices.items():
        value = settled
        for part in key.split("."):
            value = value[part]
        assert value == choice["value"], key
    assert settled["train"]["model"]["depth"] == 2  # written: kept
    # the budget: 0.1 reference minutes = 54 patches of 128² of the reference network
    epochs = pd.read_csv(out / "model" / "history.csv")
    assert len(epochs) == settled["train"]["epochs"]

    # training images were zoomed to the planned diameter; the model records the scale it learned
    diameter = settled["train"]["object_diameter"]
    attrs = [dict(zarr.open_array(str(p), mode="r").attrs) for p in sorted((out / "targets").glob("*.zarr"))]
    zoomed = [a for a in attrs if a["scale"] != 1.0]
    assert zoomed and all(a["source_shape"] == [64, 64] for a in attrs)
    for a in zoomed:
        assert a["object_diameter"] * a["scale"] == pytest.approx(diameter)
    ckpt = torch.load(out / "model" / "best.pt", weights_only=True)
    assert ckpt["data"]["object_diameter"] == pytest.approx(diameter, rel=0.16)
    # test predictions are on the test image's grid and say at which scale they were made
    prediction = zarr.open_array(str(out / "predictions" / "test_000.zarr"), mode="r")
    assert prediction.shape[:2] == (64, 64) and "scale" in prediction.attrs
    assert prediction.attrs["training_diameter"] == pytest.approx(ckpt["data"]["object_diameter"])

    # the run's config (planned values spelled out) as a config: nothing to do
    assert planned_jobs(tmp_path, out / "config.yaml") == {}
    # turning rescaling off predicts again, without training again
    cfg["predict"]["rescale"] = False
    jobs = planned_jobs(tmp_path, write_config(tmp_path / "c2.yaml", cfg))
    assert "train" not in jobs and "prepare" not in jobs and jobs["predict"] == 2
