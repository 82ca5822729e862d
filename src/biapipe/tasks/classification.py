"""Image classification: one class per image, from class folders to a confusion matrix.

A sample's label is its class name (see :mod:`biapipe.classify` for the input layout
and how names map to indices). The generic stages carry it through unchanged:

- targets: ``targets/{image}.zarr`` holds the class index (one integer), so the
  training rule and its inputs are those of every other workflow;
- train: the generic loop, fed by :meth:`ClassificationTask.build_datasets` with whole
  images resized to ``train.patch_size`` and a (class-weighted) cross-entropy;
- predict: :meth:`ClassificationTask.predict_array` runs one forward pass per image (no
  tiling) and stores the class probabilities as a 1-D ``predictions/{image}.zarr``;
- postprocess: ``classes/{image}.csv`` with the predicted class and probabilities,
  gathered into ``classes.csv``;
- evaluate: one row per image (true and predicted class, correct or not); the dataset
  figures (accuracy, balanced accuracy, per-class and macro precision/recall/F1) are
  computed by :meth:`ClassificationTask.summarize` from the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from .. import imageio
from ..errors import ConfigError, InputError
from ..metrics.classification import classification_metrics, confusion_matrix
from .base import Task


@dataclass(frozen=True)
class ClassPrediction:
    """The post-processed output of one image: the most probable class and all probabilities."""

    index: int
    name: str
    probabilities: np.ndarray

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.index])


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    output_dir: ClassVar[str] = "classes"
    output_suffix: ClassVar[str] = ".csv"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        classes = cfg.get("targets", {}).get("classification", {}).get("classes")
        self._class_names: list[str] | None = [str(c) for c in classes] if classes else None
        #: training images per class, recorded by build_datasets for 'balanced' class weights
        self.class_counts: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names in index order; resolved from the data when the workflow is parsed."""
        if not self._class_names:
            raise ConfigError("targets.classification.classes",
                              "unknown: list the classes, or let the workflow find them in the class folders")
        return self._class_names

    # ------------------------------------------------------------------ ground truth
    def read_label(self, path: str | Path, image_shape: tuple[int, ...] | None = None) -> str:
        """A label is a class name (``path`` is kept as the parameter name of the interface)."""
        name = str(path)
        if name not in self.class_names:
            raise InputError(None, f"class '{name}' is not one of the model's classes ({', '.join(self.class_names)})")
        return name

    # ------------------------------------------------------------------ training side
    def out_channels(self) -> int:
        return len(self.class_names)

    def make_targets(self, label: str, path: str | Path | None = None) -> np.ndarray:
        """The class index as a one-element int64 array (what targets/{image}.zarr stores)."""
        return np.array([self.class_names.index(self.read_label(label))], dtype=np.int64)

    def foreground(self, target: np.ndarray) -> np.ndarray:
        """Not used: classification trains on whole images, never on foreground-centred patches."""
        return np.ones(np.asarray(target).shape[:-1], dtype=bool)

    def build_datasets(self, cfg: dict[str, Any], train_pairs: Sequence[tuple[str | Path, str | Path]],
                       val_pairs: Sequence[tuple[str | Path, str | Path]]) -> Any:
        """Whole images resized to train.patch_size (the training loop calls this instead of
        drawing patches); remembers the class counts for balanced loss weights."""
        from ..classify import build_classify_datasets

        data = build_classify_datasets(cfg, self.out_channels(), train_pairs, val_pairs)
        self.class_counts = data.class_counts
        return data

    def loss(self) -> torch.nn.Module:
        from ..classify import ClassificationLoss, class_weights

        setting = self.cfg["train"]["loss"].get("class_weights")
        return ClassificationLoss(class_weights(setting, self.class_counts, self.out_channels()))

    # ------------------------------------------------------------------ prediction side
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)

    def predict_array(self, model_path: str | Path, image: np.ndarray, out_zarr: str | Path) -> None:
        """One forward pass of the whole (resized) normalized image; writes the K class probabilities."""
        from ..predict import load_predictor

        pcfg = self.cfg["predict"]
        predictor = load_predictor(model_path, pcfg["device"])
        spec = predictor.spec
        self._check_model(model_path, spec)
        image = np.asarray(image, dtype=np.float32)
        if image.shape[-1] != spec["in_channels"]:
            raise InputError(out_zarr, f"input image has {image.shape[-1]} channels but the model expects {spec['in_channels']}")
        import torch

        from ..classify import class_probabilities

        torch.set_num_threads(int(pcfg["threads"]))
        probs = class_probabilities(predictor.model, image, spec["input_size"], predictor.device)
        imageio.write_zarr(out_zarr, probs, attrs={"classes": list(spec["classes"]), "checkpoint": str(model_path),
                                                   "epoch": predictor.meta.get("epoch"),
                                                   "input_size": list(spec["input_size"])})

    def _check_model(self, model_path: str | Path, spec: dict[str, Any]) -> None:
        if "classes" not in spec or "input_size" not in spec:
            raise InputError(model_path, "is not an image-classification model (no class names in the checkpoint)")
        if list(spec["classes"]) != self.class_names:
            raise InputError(model_path, f"model classes ({', '.join(spec['classes'])}) differ from the data's "
                                         f"({', '.join(self.class_names)}); retrain")

    def postprocess(self, prediction: np.ndarray) -> ClassPrediction:
        probs = np.asarray(prediction, dtype=np.float32).reshape(-1)
        if probs.size != self.out_channels():
            raise InputError(None, f"prediction has {probs.size} class probabilities, expected {self.out_channels()}")
        index = int(np.argmax(probs))
        return ClassPrediction(index, self.class_names[index], probs)

    def write_output(self, path: str | Path, output: ClassPrediction) -> None:
        """One row: predicted_class, confidence (its probability), probability_<class> for every class."""
        row: dict[str, Any] = {"predicted_class": output.name, "confidence": round(output.confidence, 6)}
        row.update({probability_column(c): round(float(p), 6) for c, p in zip(self.class_names, output.probabilities)})
        imageio.write_csv(path, pd.DataFrame([row]))

    def read_output(self, path: str | Path) -> ClassPrediction:
        table = pd.read_csv(path, dtype={"predicted_class": str}, keep_default_na=False)
        columns = [probability_column(c) for c in self.class_names]
        missing = [c for c in ["predicted_class", *columns] if c not in table.columns]
        if len(table) != 1 or missing:
            raise InputError(path, f"not a classification output of these classes (missing {missing or 'one row'})")
        name = table.loc[0, "predicted_class"]
        if name not in self.class_names:
            raise InputError(path, f"predicted class '{name}' is not one of {', '.join(self.class_names)}")
        probs = table.loc[0, columns].to_numpy(dtype=np.float32)
        return ClassPrediction(self.class_names.index(name), name, probs)

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: ClassPrediction, label: str, path: str | Path | None = None) -> dict[str, Any]:
        """Per-image row: true and predicted class (names and indices), correct (0/1), probabilities."""
        true_index = self.class_names.index(self.read_label(label))
        return {"true_class": label, "predicted_class": output.name, "correct": int(output.index == true_index),
                "true_index": true_index, "predicted_index": output.index, "confidence": output.confidence,
                "probability_true": float(output.probabilities[true_index])}

    def confusion(self, metrics: pd.DataFrame) -> np.ndarray:
        """Confusion matrix of a per-image metrics table (rows true, columns predicted)."""
        return confusion_matrix(metrics["true_index"].astype(int), metrics["predicted_index"].astype(int),
                                self.out_channels())

    def summarize(self, metrics: pd.DataFrame) -> pd.DataFrame:
        """Accuracy, balanced accuracy, macro and per-class precision/recall/F1 (see metrics.classification)."""
        row = classification_metrics(self.confusion(metrics), self.class_names)
        row["mean_confidence"] = float(metrics["confidence"].mean()) if len(metrics) else float("nan")
        return pd.DataFrame([row])


# --------------------------------------------------------------------------- experiment-level tables


def write_classes_table(per_image_csvs: Sequence[str | Path], out_csv: str | Path) -> None:
    """``classes.csv``: image, predicted_class, confidence, probability_<class> for every test image."""
    from ..classify import classes_table

    imageio.write_csv(out_csv, classes_table(per_image_csvs))


def write_confusion_matrix(metrics_csv: str | Path, out_csv: str | Path, out_png: str | Path,
                           cfg: dict[str, Any]) -> None:
    """``confusion_matrix.csv`` (true_class, then one column per predicted class) and its PNG."""
    from ..metrics.classification import confusion_table, plot_confusion_matrix

    task = ClassificationTask(cfg)
    table = pd.read_csv(metrics_csv)
    cm = task.confusion(table) if len(table) else np.zeros((task.out_channels(),) * 2, dtype=np.int64)
    # PNG first: the CSV is the rule's first output, so when it exists the figure does too
    plot_confusion_matrix(out_png, cm, task.class_names, title=f"{cfg['experiment']}: {int(cm.sum())} images")
    imageio.write_csv(out_csv, confusion_table(cm, task.class_names))


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_csv: str | Path) -> pd.DataFrame:
    """``biapipe evaluate --workflow classification``: score a folder of per-image outputs
    (``classes/{image}.csv``) against a folder of class folders (``<class>/{image}.tif``).

    The classes are read from the outputs' probability columns (the model's classes);
    writes the per-image table to ``out_csv``, the summary beside it (``*_summary.csv``)
    and the confusion matrix (``*_confusion_matrix.csv``); returns the summary.
    """
    from ..classify import class_folders, folder_samples
    from ..metrics.classification import confusion_table

    outputs = {p.name[: -len(".csv")]: p for p in sorted(Path(pred_dir).glob("*.csv"))}
    if not outputs:
        raise InputError(pred_dir, "no per-image classification outputs (*.csv)")
    header = pd.read_csv(next(iter(outputs.values())), nrows=0).columns
    prefix = probability_column("")
    classes = [c[len(prefix):] for c in header if c.startswith(prefix)]
    if not class_folders(gt_dir):
        raise InputError(gt_dir, "no class folders (expected <class>/<image>.tif)")
    task = ClassificationTask({"ndim": 2, "targets": {"classification": {"classes": classes}}})
    rows = []
    for sample in folder_samples("test", {"images": str(gt_dir)}):
        if sample.id not in outputs:
            raise InputError(pred_dir, f"no output for ground-truth image {sample.image}")
        if sample.label not in classes:
            raise InputError(Path(sample.image).parent, f"class '{sample.label}' is not one of the outputs' "
                                                        f"classes ({', '.join(classes)})")
        rows.append({"image": sample.id, **task.evaluate(task.read_output(outputs[sample.id]), sample.label)})
    table = pd.DataFrame(rows).sort_values("image", kind="stable").reset_index(drop=True)
    out = Path(out_csv)
    imageio.write_csv(out, table)
    summary = task.summarize(table)
    imageio.write_csv(out.with_name(f"{out.stem}_summary.csv"), summary)
    imageio.write_csv(out.with_name(f"{out.stem}_confusion_matrix.csv"), confusion_table(task.confusion(table), classes))
    return summary


def probability_column(name: str) -> str:
    """The classes.csv column holding the probability of class ``name``."""
    return f"probability_{name}"
