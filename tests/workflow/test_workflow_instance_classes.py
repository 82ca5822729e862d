"""Real Snakemake runs of the instance workflow with a class per object (targets.instance.classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from conftest import TINY_TRAIN, planned_jobs, snakemake, tiny_config, write_config

from biapipe.core.imageio import read_label
from biapipe.data.demo import make_demo_data
from biapipe.tasks.instance.classes import object_classes, size_classes

pytestmark = pytest.mark.workflow


def classed_data(folder: Path, seed: int, n_test: int = 2) -> dict:
    """Demo nuclei in 2D, objects larger than the median class 2, smaller ones class 1."""
    make_demo_data(folder, 2, 3, 1, n_test, 48, seed=seed)
    labels = {path: read_label(path, 2) for path in folder.glob("*/labels/*.tif")}
    median = np.median(np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels.values()]))
    for path, lab in labels.items():
        (path.parent.parent / "classes").mkdir(exist_ok=True)
        tifffile.imwrite(path.parent.parent / "classes" / path.name, size_classes(lab, median))
    cfg = tiny_config(folder, "instance", "inst", 2, targets={"instance": {"channels": ["foreground", "contour"],
                                                                         "classes": 2}},
                      train={**TINY_TRAIN, "epochs": 3, "patch_size": [32, 32]}, evaluate={"iou_thresholds": [0.5]})
    cfg["seed"] = 4
    for split in ("train", "val", "test"):
        cfg["data"][split]["classes"] = str(folder / split / "classes")
    return cfg


def test_instance_with_classes(tmp_path):
    cfg = classed_data(tmp_path / "data", seed=6)
    cfg["postprocess"] = {"instance": {"tuned": True}}  # tuning reads the instance channels only
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "inst"
    # Otsu thresholds find objects in any model's maps: post-processing reruns, training does not
    cfg["postprocess"] = {"instance": {"seed_foreground": "otsu", "mask_threshold": "otsu", "seed_contour": 1.0}}
    cfgfile = write_config(tmp_path / "c2.yaml", cfg)
    plan = planned_jobs(tmp_path, cfgfile)
    assert "train" not in plan and "predict" not in plan and plan["postprocess"] == 2
    snakemake(tmp_path, cfgfile)
    metrics = pd.read_csv(out / "metrics.csv")
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    for image in ("test_000", "test_001"):
        labels = tifffile.imread(out / "labels" / f"{image}.tif")
        objects = pd.read_csv(out / "objects" / f"{image}.csv")
        class_map = tifffile.imread(out / "classes" / f"{image}.tif")
        # one class per object, the class map painted with it
        assert len(objects) == len(np.unique(labels[labels > 0])) and objects["class"].isin([1, 2]).all()
        for label, cls in zip(objects["label"], objects["class"]):
            assert set(np.unique(class_map[labels == label])) == {cls}
        assert not class_map[labels == 0].any()
        # per-class counts add up to the objects of each class on both sides
        row = metrics.set_index("image").loc[image]
        gt = read_label(tmp_path / "data" / "test" / "labels" / f"{image}.tif", 2)
        truth = object_classes(gt, read_label(tmp_path / "data" / "test" / "classes" / f"{image}.tif", 2), 2)
        for c in (1, 2):
            assert row[f"class{c}_tp"] + row[f"class{c}_fn"] == np.sum(truth == c)
            assert row[f"class{c}_tp"] + row[f"class{c}_fp"] == np.sum(objects["class"] == c)
        assert row["class_matched"] == row["tp@0.5"]
        assert row["class1_tp"] + row["class2_tp"] <= row["class_matched"]
    assert metrics["n_pred"].sum() > 0 and (metrics["class1_tp"] + metrics["class1_fn"]).sum() > 0
    assert (metrics["class2_tp"] + metrics["class2_fn"]).sum() > 0  # both classes in the truth
    # pooled per class from the summed counts
    tp, fp, fn = (metrics[f"class2_{k}"].sum() for k in ("tp", "fp", "fn"))
    assert summary["pooled_class2_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), nan_ok=True)
    assert {"pooled_class1_f1", "pooled_class_accuracy", "pooled_class_f1_mean", "pooled_f1@0.5"} <= set(summary.index)
    assert "thresholds" in (out / "tuning" / "instance_thresholds.json").read_text()
    # A class image is an input of the jobs that read it: editing a test image's rescores that
    # image only; editing a training image's prepares that image again and retrains.
    for split, name, expected in (("test", "test_001", {"postprocess": 1}), ("train", "train_000", {"prepare": 1})):
        path = tmp_path / "data" / split / "classes" / f"{name}.tif"
        classes = tifffile.imread(path)
        tifffile.imwrite(path, np.where(classes > 0, 3 - classes, 0).astype(classes.dtype))
        plan = planned_jobs(tmp_path, cfgfile)
        assert {k: plan.get(k) for k in expected} == expected
        assert ("train" in plan) == (split == "train")


def test_a_class_value_above_n_stops_the_run_before_training(tmp_path):
    cfg = classed_data(tmp_path / "data", seed=2, n_test=1)
    bad = tmp_path / "data" / "test" / "classes" / "test_000.tif"
    cls = tifffile.imread(bad)
    tifffile.imwrite(bad, np.where(cls > 0, 3, 0).astype(np.uint8))
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{bad}: class image holds value 3; classes are 1..2" in out
    assert "epoch" not in (tmp_path / "results" / "inst" / "logs" / "train.log").read_text()
    assert "Traceback" not in out


def test_a_class_image_of_another_shape_stops_the_plan(tmp_path):
    cfg = classed_data(tmp_path / "data", seed=2, n_test=1)
    bad = tmp_path / "data" / "train" / "classes" / "train_001.tif"
    tifffile.imwrite(bad, np.ones((48, 40), np.uint8))
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{bad}: class image of shape (48, 40) does not match" in out
    assert "Traceback" not in out


def test_a_sample_sheet_names_each_class_image(tmp_path):
    cfg = classed_data(tmp_path / "data", seed=3, n_test=1)
    rows = ["image,label,classes,split"]
    for split in ("train", "val", "test"):
        for image in sorted((tmp_path / "data" / split / "images").glob("*.tif")):
            rows.append(f"{split}/images/{image.name},{split}/labels/{image.name},{split}/classes/{image.name},{split}")
    sheet = tmp_path / "data" / "samples.csv"
    sheet.write_text("\n".join(rows) + "\n")
    cfg["data"] = {"samples": str(sheet)}
    cfgfile = write_config(tmp_path / "c.yaml", cfg)
    snakemake(tmp_path, cfgfile)
    # the targets carry the sheet's class image: one-hot class channels after the two maps
    targets = np.asarray(zarr.open_array(str(tmp_path / "results" / "inst" / "targets" / "train_000.zarr"), mode="r"))
    classes = tifffile.imread(tmp_path / "data" / "train" / "classes" / "train_000.tif")
    assert targets.shape == (*classes.shape, 4)  # YXC
    for c in (1, 2):
        assert targets[..., 1 + c][classes == c].min() == 1 and targets[..., 1 + c][classes == 3 - c].max() == 0
    assert (tmp_path / "results" / "inst" / "objects" / "test_000.csv").is_file()
    # a train row without its class image stops the plan, naming the sheet and the image
    sheet.write_text("\n".join(rows).replace(",train/classes/train_001.tif,", ",,") + "\n")
    proc = snakemake(tmp_path, cfgfile, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{sheet}: train image train_001.tif has no class image (column classes)" in out
    assert "Traceback" not in out
