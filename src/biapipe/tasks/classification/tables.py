"""Classification tables: ``classes.csv`` of every test image, the confusion matrix, and
scoring of any two folders (``biapipe evaluate --workflow classification``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...core import imageio
from ...core.errors import InputError
from .metrics import confusion_table, plot_confusion_matrix
from .samples import class_folders, folder_samples


def classes_table(per_image_csvs: Sequence[str | Path]) -> pd.DataFrame:
    """``classes.csv``: one row per image (named by its file), predicted class and probabilities."""
    rows = []
    for path in per_image_csvs:
        row = pd.read_csv(path, dtype={"predicted_class": str}, keep_default_na=False)
        row.insert(0, "image", Path(path).name[: -len(".csv")])
        rows.append(row)
    if not rows:
        return pd.DataFrame({"image": [], "predicted_class": []})
    return pd.concat(rows, ignore_index=True).sort_values("image", kind="stable").reset_index(drop=True)


def write_confusion_matrix(metrics_csv: str | Path, out_csv: str | Path, out_png: str | Path, task: Any,
                           experiment: str) -> None:
    """``confusion_matrix.csv`` (true_class, then one column per predicted class) and its PNG."""
    table = pd.read_csv(metrics_csv)
    cm = task.confusion(table) if len(table) else np.zeros((task.out_channels(),) * 2, dtype=np.int64)
    # PNG first: the CSV is the rule's first output, so when it exists the figure does too
    plot_confusion_matrix(out_png, cm, task.class_names, title=f"{experiment}: {int(cm.sum())} images")
    imageio.write_csv(out_csv, confusion_table(cm, task.class_names))


def output_classes(pred_dir: str | Path) -> list[str]:
    """The class names of a folder of per-image outputs: their probability columns."""
    outputs = sorted(Path(pred_dir).glob("*.csv"))
    if not outputs:
        raise InputError(pred_dir, "no per-image classification outputs (*.csv)")
    prefix = probability_column("")
    return [c[len(prefix):] for c in pd.read_csv(outputs[0], nrows=0).columns if c.startswith(prefix)]


def score_class_folders(pred_dir: str | Path, gt_dir: str | Path, task: Any) -> pd.DataFrame:
    """Per-image rows of a folder of outputs (``classes/{image}.csv``) against a folder of class
    folders (``<class>/{image}.tif``), scored by ``task`` (set up with the outputs' classes)."""
    outputs = {p.name[: -len(".csv")]: p for p in sorted(Path(pred_dir).glob("*.csv"))}
    if not class_folders(gt_dir):
        raise InputError(gt_dir, "no class folders (expected <class>/<image>.tif)")
    classes = task.class_names
    rows = []
    for sample in folder_samples("test", {"images": str(gt_dir), "labels": None}):
        if sample.id not in outputs:
            raise InputError(pred_dir, f"no output for ground-truth image {sample.image}")
        if sample.label not in classes:
            raise InputError(Path(sample.image).parent, f"class '{sample.label}' is not one of the outputs' "
                                                        f"classes ({', '.join(classes)})")
        rows.append({"image": sample.id, **task.evaluate(task.read_output(outputs[sample.id]), sample.label)})
    return pd.DataFrame(rows).sort_values("image", kind="stable").reset_index(drop=True)


def probability_column(name: str) -> str:
    """The classes.csv column holding the probability of class ``name``."""
    return f"probability_{name}"
