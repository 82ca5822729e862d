"""Large images through the real workflow: split into block jobs, block-wise post-processing
into OME-Zarr, block-wise scores; results equal to the whole-image path on the same volume."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from conftest import ReportPage, planned_jobs, snakemake, tiny_config, write_config

from biapipe.data.demo import make_demo_data

BLOCKS = 4


def large_config(data, workflow: str, **sections) -> dict:
    """test_000 goes block by block (4 jobs of 8x16x16-voxel chunks); test_copy, the same
    volume under another name, goes the ordinary way."""
    predict = {"large_images": ["test_000"], "whole_images": ["test_copy"], "split": BLOCKS, "chunks": [8, 16, 16],
               "memory_gb": 0.01, "halo": 6}
    train = {"epochs": 30, "patches_per_epoch": 16, "batch_size": 4, **sections.pop("train", {})}  # seconds
    return tiny_config(data, workflow, "big", 3, predict=predict, train=train, **sections)


def with_copy(data) -> None:
    for kind in ("images", "labels"):
        shutil.copy(data / "test" / kind / "test_000.tif", data / "test" / kind / "test_copy.tif")


def as_zarr(data) -> None:
    """The large test image as OME-Zarr (CZYX, chunked) and its label as a Zarr v2 array."""
    from biapipe.core.omezarr import create_ome_zarr

    image_tif, label_tif = (data / "test" / kind / "test_000.tif" for kind in ("images", "labels"))
    image = tifffile.imread(image_tif)
    level = create_ome_zarr(image_tif.with_name("test_000.ome.zarr"), (1, *image.shape), image.dtype,
                            (1, 4, 16, 16), "czyx", [2.0, 0.5, 0.5])
    level[0] = image
    label = tifffile.imread(label_tif)
    zarr.create_array(store=str(label_tif.with_name("test_000.zarr")), data=label, chunks=(4, 16, 16), zarr_format=2)
    image_tif.unlink()
    label_tif.unlink()


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("large_semantic")
    make_demo_data(work / "data", 3, 2, 1, 1, 48, seed=4)
    with_copy(work / "data")
    as_zarr(work / "data")
    cfgfile = write_config(work / "cfg.yaml", large_config(work / "data", "semantic", targets={"binarize": True}))
    plan = planned_jobs(work, cfgfile)
    snakemake(work, cfgfile)
    return work, cfgfile, plan


def test_a_large_image_becomes_block_jobs(semantic_run):
    work, _, plan = semantic_run
    assert plan["predict_store"] == 1 and plan["predict_block"] == BLOCKS
    assert plan["predict"] == 1 and plan["postprocess_large"] == 1 and plan["postprocess"] == 1
    markers = sorted(p.name for p in (work / "results" / "big" / "large" / "test_000" / "predict").iterdir())
    assert markers == [f"{b}.done" for b in range(BLOCKS)]


def test_block_wise_equals_whole_image(semantic_run):
    work, _, _ = semantic_run
    out = work / "results" / "big"
    store = zarr.open_group(str(out / "masks" / "test_000.ome.zarr"), mode="r")
    assert store.attrs["multiscales"][0]["axes"][0]["name"] == "z"  # NGFF metadata for viewers
    big = np.asarray(store["0"])
    whole = tifffile.imread(out / "masks" / "test_copy.tif")
    assert big.shape == whole.shape and big.any()
    assert np.array_equal(big > 0, whole > 0)
    pred_big = np.asarray(zarr.open_array(str(out / "predictions" / "test_000.zarr"), mode="r"))
    pred_whole = np.asarray(zarr.open_array(str(out / "predictions" / "test_copy.zarr"), mode="r"))
    np.testing.assert_allclose(pred_big, pred_whole, atol=1e-5)
    metrics = pd.read_csv(out / "metrics.csv").set_index("image")
    for column in ("foreground_iou", "pixel_accuracy", "n_pixels"):
        assert metrics.loc["test_000", column] == pytest.approx(metrics.loc["test_copy", column])


def test_report_pictures_the_large_image_and_block_jobs_log_progress(semantic_run):
    work, _, _ = semantic_run
    out = work / "results" / "big"
    page = ReportPage((out / "report.html").read_text())
    gallery = sorted(alt.split(": ")[1] for section, alt in page.images if section == "gallery")
    assert gallery == ["test_000", "test_copy"]  # the OME-Zarr output over the OME-Zarr image, and the TIFF one
    assert "; 2 test images predicted" in (out / "report.html").read_text()
    assert "test_000.ome.zarr: block 1/1 (100%)" in (out / "logs" / "predict" / "test_000" / "0.log").read_text()


def test_a_killed_block_reruns_alone(semantic_run, tmp_path):
    """As if the job of block 2 had been killed: no marker, so nothing after it ran either."""
    work, cfgfile, _ = semantic_run
    out = work / "results" / "big"
    (out / "large" / "test_000" / "predict" / "2.done").unlink()
    shutil.rmtree(out / "masks" / "test_000.ome.zarr")
    (out / "metrics" / "test_000.csv").unlink()
    plan = planned_jobs(work, cfgfile)
    assert plan == {"predict_block": 1, "postprocess_large": 1, "aggregate": 1, "report": 1, "all": 1}


def instance_block_run(tmp_path, classes: int | None = None) -> tuple:
    """A trained instance model on demo volumes, test_000 predicted and segmented by block jobs,
    test_copy (the same volume) whole; returns (results folder, block labels, whole labels)."""
    make_demo_data(tmp_path / "data", 3, 2, 1, 1, 48, seed=5)
    with_copy(tmp_path / "data")
    cfg = large_config(tmp_path / "data", "instance", evaluate={"iou_thresholds": [0.5]},
                       targets={"instance": {"channels": ["foreground", "contour"], "classes": classes}},
                       postprocess={"instance": {"min_size": 4, "seed_contour": 0.5}},
                       train={"epochs": 80, "patches_per_epoch": 16, "batch_size": 4, "optimizer": {"lr": 0.003}})
    if classes:
        from biapipe.tasks.instance.classes import size_classes

        for label in sorted((tmp_path / "data").glob("*/labels/*.tif")):
            (label.parent.parent / "classes").mkdir(exist_ok=True)
            tifffile.imwrite(label.parent.parent / "classes" / label.name, size_classes(tifffile.imread(label), 120))
        for split in ("train", "val", "test"):
            cfg["data"][split]["classes"] = str(tmp_path / "data" / split / "classes")
    cfg["predict"]["memory_gb"] = 0.002  # segmentation blocks of one or two chunks
    cfgfile = write_config(tmp_path / "c.yaml", cfg)
    plan = planned_jobs(tmp_path, cfgfile)
    assert plan["predict_block"] == BLOCKS and plan["segment_block"] > 1 and plan["postprocess_large"] == 1
    snakemake(tmp_path, cfgfile)
    out = tmp_path / "results" / "big"
    big = np.asarray(zarr.open_group(str(out / "labels" / "test_000.ome.zarr"), mode="r")["0"])
    whole = tifffile.imread(out / "labels" / "test_copy.tif")
    from biapipe.tasks.instance.metrics import matching_metrics

    assert whole.max() > 1
    assert matching_metrics(big, whole, [0.5])["f1@0.5"] == 1.0
    return out, big, whole


def test_instance_labels_merge_across_block_jobs(tmp_path):
    out, big, _ = instance_block_run(tmp_path)
    objects = pd.read_csv(out / "objects" / "test_000.csv")
    assert len(objects) == len(np.unique(big)) - 1
    assert sorted(objects["volume"]) == sorted(np.bincount(big.ravel())[1:][np.bincount(big.ravel())[1:] > 0])


def test_chunks_beyond_the_memory_budget_stop_before_compute(tmp_path):
    make_demo_data(tmp_path / "data", 3, 2, 1, 1, 48, seed=4)
    as_zarr(tmp_path / "data")
    cfg = large_config(tmp_path / "data", "semantic", targets={"binarize": True})
    cfg["predict"]["memory_gb"] = 1e-6  # one 1x4x16x16 chunk of uint16 is 2 KiB, the budget about 1 KiB
    proc = snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "test_000.ome.zarr: one storage chunk" in proc.stdout + proc.stderr
    assert "rechunk" in proc.stdout + proc.stderr


def test_detection_points_of_block_jobs_equal_whole_image(tmp_path):
    make_demo_data(tmp_path / "data", 3, 2, 1, 1, 48, seed=6)
    for kind in ("images", "points"):
        suffix = ".tif" if kind == "images" else ".csv"
        shutil.copy(tmp_path / "data" / "test" / kind / f"test_000{suffix}", tmp_path / "data" / "test" / kind / f"test_copy{suffix}")
    cfg = large_config(tmp_path / "data", "detection", labels="points")
    cfg["targets"] = {"detection": {"kind": "ball", "radius": 2.0}}
    cfg["postprocess"] = {"detection": {"threshold": 0.3}}
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "big"
    big, whole = (pd.read_csv(out / "points" / f"{i}.csv") for i in ("test_000", "test_copy"))
    assert len(whole) > 0
    pd.testing.assert_frame_equal(big, whole)
    metrics = pd.read_csv(out / "metrics.csv").set_index("image")
    assert metrics.loc["test_000"].equals(metrics.loc["test_copy"])


def test_2d_large_image_split_auto_equals_whole_image(tmp_path):
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 96, seed=7)
    with_copy(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data", "semantic", "big", 2, targets={"binarize": True},
                      train={"epochs": 30, "patches_per_epoch": 16, "batch_size": 4},
                      predict={"large_images": ["test_000"], "whole_images": ["test_copy"], "split": "auto",
                               "chunks": [32, 32], "memory_gb": 0.0001})
    cfgfile = write_config(tmp_path / "c.yaml", cfg)
    plan = planned_jobs(tmp_path, cfgfile)
    assert plan["predict_block"] > 1  # auto: one job per memory-sized block
    snakemake(tmp_path, cfgfile)
    out = tmp_path / "results" / "big"
    big = np.asarray(zarr.open_group(str(out / "masks" / "test_000.ome.zarr"), mode="r")["0"])
    whole = tifffile.imread(out / "masks" / "test_copy.tif")
    assert whole.any() and np.array_equal(big > 0, whole > 0)


def test_a_volume_over_the_memory_budget_goes_block_by_block_without_being_told(tmp_path):
    """No large-image key set: a test volume whose whole-image path would exceed predict.memory_gb
    (estimated from its header) is predicted and post-processed block by block, and the plan says
    why; a small one still goes whole."""
    make_demo_data(tmp_path / "data", 3, 2, 1, 1, 48, seed=4)
    big = np.tile(tifffile.imread(tmp_path / "data" / "test" / "images" / "test_000.tif"), (2, 2, 2))
    tifffile.imwrite(tmp_path / "data" / "test" / "images" / "big.tif", big)
    tifffile.imwrite(tmp_path / "data" / "test" / "labels" / "big.tif",
                     np.tile(tifffile.imread(tmp_path / "data" / "test" / "labels" / "test_000.tif"), (2, 2, 2)))
    cfg = tiny_config(tmp_path / "data", "semantic", "auto", 3, targets={"binarize": True},
                      predict={"memory_gb": 0.005, "chunks": [8, 32, 32]})
    cfgfile = write_config(tmp_path / "c.yaml", cfg)
    proc = snakemake(tmp_path, cfgfile, "-n")
    assert "biapipe: big 24x96x96 goes block by block: about 0.01 GB whole, over predict.memory_gb = 0.005" \
        in proc.stderr, proc.stderr[-2000:]
    assert "test_000" not in proc.stderr.split("goes block by block")[0]
    snakemake(tmp_path, cfgfile)
    out = tmp_path / "results" / "auto"
    assert (out / "masks" / "big.ome.zarr").is_dir() and (out / "masks" / "test_000.tif").is_file()
    assert set(pd.read_csv(out / "metrics.csv")["image"]) == {"big", "test_000"}


def test_instance_classes_go_block_by_block_and_equal_the_whole_image(tmp_path):
    """With a class per object, a large image still goes block by block: its class map, object
    classes and per-class scores equal those of the same volume predicted whole."""
    out, big, _ = instance_block_run(tmp_path, classes=2)
    big_classes, whole_classes = (tifffile.imread(out / "classes" / f"{i}.tif") for i in ("test_000", "test_copy"))
    objects = pd.read_csv(out / "objects" / "test_000.csv")
    assert len(objects) == len(np.unique(big)) - 1 > 1 and set(objects["class"]) <= {1, 2}
    for obj, cls in zip(objects["label"], objects["class"]):
        inside = big == obj
        assert set(np.unique(big_classes[inside])) == {cls}
        assert cls == np.bincount(whole_classes[inside]).argmax()  # the class of the same object predicted whole
    big_row, whole_row = (pd.read_csv(out / "metrics" / f"{i}.csv").iloc[0] for i in ("test_000", "test_copy"))
    counted = [c for c in whole_row.index if c.startswith("class")]
    assert "class_accuracy" in counted and big_row["class_matched"] > 1
    pd.testing.assert_series_equal(big_row[counted], whole_row[counted], check_names=False)
