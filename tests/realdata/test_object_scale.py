"""Object scale through the real workflow: a model trained at one scale segments the same test
images shown at half and twice their size about as well as at their own size, once test
images are brought to the training scale (predict.rescale), and never worse than without it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from conftest import planned_jobs, snakemake, write_config

from biapipe.data.scale import resize_image, resize_labels, scaled_shape

pytestmark = [pytest.mark.realdata, pytest.mark.workflow, pytest.mark.slow]

ZOOMS = {"x1": 1.0, "x05": 0.5, "x2": 2.0}


def small_nuclei(shared, n: int) -> list[str]:
    """256x256 DSB images with nuclei of 12-18 px (one scale for the whole training set)."""
    meta = pd.read_csv(shared / "dsb2018_train_fluo" / "metadata.csv").sort_values("filename")
    names = []
    for name in meta.loc[(meta["height"] == 256) & (meta["width"] == 256), "filename"]:
        label = tifffile.imread(shared / "dsb2018_train_fluo" / "labels" / name)
        areas = np.bincount(label.ravel())[1:]
        diameter = 2 * np.sqrt(np.median(areas[areas > 0]) / np.pi)
        if 12 <= diameter <= 18 and len(areas) >= 10:
            names.append(name)
        if len(names) == n:
            break
    return names


def pooled_f1(metrics: pd.DataFrame, suffix: str) -> float:
    rows = metrics[metrics["image"].str.endswith(f"_{suffix}")]
    tp, fp, fn = (rows[f"{k}@0.5"].sum() for k in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn)


def test_a_model_trained_at_one_scale_segments_zoomed_images(shared_data, tmp_path):
    root = shared_data / "dsb2018_train_fluo"
    names = small_nuclei(shared_data, 16)
    test = tmp_path / "test"
    for name in names[12:]:
        image, label = tifffile.imread(root / "images" / name), tifffile.imread(root / "labels" / name)
        for suffix, zoom in ZOOMS.items():
            shape = scaled_shape(image.shape, zoom)
            stem = f"{name[:8]}_{suffix}.tif"
            (test / "images").mkdir(parents=True, exist_ok=True)
            (test / "labels").mkdir(parents=True, exist_ok=True)
            zoomed = resize_image(image[..., None].astype(np.float32), shape)[..., 0]
            tifffile.imwrite(test / "images" / stem, np.clip(np.round(zoomed), 0, 255).astype(np.uint8))
            tifffile.imwrite(test / "labels" / stem, resize_labels(label, shape))
    rows = ["image,label,split"] + [f"{root}/images/{n},{root}/labels/{n},{s}"
                                    for n, s in zip(names[:12], ["train"] * 10 + ["val"] * 2)]
    rows += [f"{p},{test / 'labels' / p.name},test" for p in sorted((test / "images").glob("*.tif"))]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "experiment": "scale", "workflow": "instance", "ndim": 2, "seed": 0,
        "data": {"samples": str(tmp_path / "s.csv")},
        "train": {"plan": "none", "model": {"depth": 3, "width": 8}, "patch_size": [96, 96], "batch_size": 4,
                  "epochs": 12, "patches_per_epoch": 48, "val_patches": 8, "early_stopping": {"patience": 12},
                  "optimizer": {"lr": 0.003}, "augment": {"scale": 0.0}, "threads": 2},
        "predict": {"tile_size": [256, 256], "threads": 2, "rescale": True},
        "postprocess": {"instance": {"tuned": True}},
        "evaluate": {"iou_thresholds": [0.5]},
    }
    snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg))
    out = tmp_path / "results" / "scale"
    metrics = pd.read_csv(out / "metrics.csv")
    rescaled = {s: pooled_f1(metrics, s) for s in ZOOMS}
    # the estimated scale of the zoomed copies: about half and twice the training diameter
    scale = {s: zarr.open_array(str(out / "predictions" / f"{names[12][:8]}_{s}.zarr"), mode="r").attrs["scale"]
             for s in ZOOMS}
    assert scale["x1"] == 1.0
    # an estimate zooms down only (inference/rescale.py): the 0.5x copies stay at their own scale
    assert scale["x05"] == 1.0 and 0.38 <= scale["x2"] <= 0.65, scale

    cfg["predict"]["rescale"] = False  # predictions only: the model is not trained again
    config = write_config(tmp_path / "c2.yaml", cfg)
    assert "train" not in planned_jobs(tmp_path, config) and planned_jobs(tmp_path, config)["predict"] == 12
    snakemake(tmp_path, config)
    plain = {s: pooled_f1(pd.read_csv(out / "metrics.csv"), s) for s in ZOOMS}

    # measured (seed 0, 2 CPU threads): rescaled 0.861 / 0.849 / 0.867 at 1x / 0.5x / 2x, plain 0.861 /
    # 0.839 / 0.839. Nuclei of 7-9 and 25-36 px are still within what this network copes with, so
    # rescaling gains only 1-3 points here; it must keep every zoom within a few points of 1x and
    # never cost anything against predicting at the image's own scale.
    assert rescaled["x1"] >= 0.75, rescaled
    assert rescaled["x05"] >= rescaled["x1"] - 0.05 and rescaled["x2"] >= rescaled["x1"] - 0.05, (rescaled, plain)
    assert rescaled["x05"] >= plain["x05"] - 0.02 and rescaled["x2"] >= plain["x2"] - 0.02, (rescaled, plain)
