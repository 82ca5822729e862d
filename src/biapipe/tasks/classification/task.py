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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from ...core import imageio
from ...core.errors import ConfigError, InputError
from ...data.samples import Dataset, Sample
from ..base import Task
from ..gallery import Picture, ReportImage
from .demo import make_classification_demo
from .metrics import classification_metrics, confusion_matrix
from .report import misclassified_gallery
from .samples import (
    classification_demo_samples,
    folder_samples,
    resolve_classes,
    split_validation_by_class,
)
from .tables import (
    classes_table,
    output_classes,
    probability_column,
    score_class_folders,
    write_confusion_matrix,
)

#: Decimals of the probabilities in the per-image outputs.
STORED_DECIMALS = 6


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
    label_kind: ClassVar[str] = "class"
    whole_image: ClassVar[bool] = True
    scores_patches: ClassVar[bool] = False
    outputs_tables: ClassVar[dict[str, str]] = {"classes": "classes.csv"}
    metrics_tables: ClassVar[dict[str, str]] = {"csv": "confusion_matrix.csv", "png": "confusion_matrix.png"}
    main_metric = "correct"
    main_score = "accuracy"
    main_score_name = "accuracy (share of test images classified right)"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        classes = cfg["targets"]["classification"]["classes"]
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

    # ------------------------------------------------------------------ samples (parse time: no torch)
    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        return folder_samples(split, spec)

    def sheet_label_column(self) -> str:
        return "class"

    def demo_samples(self) -> list[Sample]:
        return classification_demo_samples(self.cfg["data"]["demo"])

    def write_demo(self) -> None:
        """Class folders; ``n_*`` count images per class."""
        d = self.cfg["data"]["demo"]
        make_classification_demo(d["folder"], self.ndim, d["n_train"], d["n_val"], d["n_test"], d["size"],
                                 self.cfg["seed"])

    def finish_dataset(self, ds: Dataset) -> None:
        ds.classes = resolve_classes(ds, self.cfg)

    def split_validation(self, train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
        return split_validation_by_class(train, fraction, seed)

    def settled_config(self, ds: Dataset) -> dict[str, Any]:
        """The config with ``targets.classification.classes`` set to the discovered class names,
        so every job (targets, train, predict) maps a name to the same index."""
        return self.cfg.with_value("targets.classification.classes", list(ds.classes or []))

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

    def build_datasets(self, train_pairs: Sequence[tuple[str | Path, str | Path]],
                       val_pairs: Sequence[tuple[str | Path, str | Path]], augment_on_device: bool = False) -> Any:
        """Whole images resized to train.patch_size (instead of patches); remembers the class
        counts for balanced loss weights."""
        from .data import build_classify_datasets

        data = build_classify_datasets(self.cfg, self.out_channels(), train_pairs, val_pairs)
        self.class_counts = data.class_counts
        return data

    def model_spec(self, in_channels: int) -> dict[str, Any]:
        """A residual CNN classifier at ``train.patch_size`` (see models/classifier.py)."""
        from ...models.classifier import classifier_spec

        return classifier_spec(self.cfg["train"]["model"], self.ndim, in_channels, self.class_names,
                               self.cfg["train"]["patch_size"])

    def loss(self) -> torch.nn.Module:
        from .data import ClassificationLoss, class_weights

        setting = self.cfg["train"]["loss"]["class_weights"]
        return ClassificationLoss(class_weights(setting, self.class_counts, self.out_channels()))

    # ------------------------------------------------------------------ prediction side
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)

    def activation_spec(self) -> list[list[Any]]:
        return [["softmax"]]

    def predict_whole(self, predictor: Any, image: np.ndarray) -> np.ndarray:
        """One forward pass of the whole (resized) normalized image: the K class probabilities."""
        import torch

        from .data import class_probabilities

        spec = predictor.spec
        self._check_model(predictor.path, spec)
        torch.set_num_threads(int(self.cfg["predict"]["threads"]))
        return class_probabilities(predictor.model, np.asarray(image, dtype=np.float32), spec["input_size"],
                                   predictor.device)

    def prediction_attrs(self) -> dict[str, Any]:
        return {"classes": self.class_names, "input_size": list(self.cfg["train"]["patch_size"])}

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
        # as stored (6 decimals), so the workflow scores what a folder of outputs reads back
        stored = np.array([round(float(p), STORED_DECIMALS) for p in probs])
        return ClassPrediction(index, self.class_names[index], stored)

    def write_output(self, path: str | Path, output: ClassPrediction) -> None:
        """One row: predicted_class, confidence (its probability), probability_<class> for every class."""
        row: dict[str, Any] = {"predicted_class": output.name,
                               "confidence": round(output.confidence, STORED_DECIMALS)}
        row.update({probability_column(c): round(float(p), STORED_DECIMALS)
                    for c, p in zip(self.class_names, output.probabilities)})
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
        probs = table.loc[0, columns].to_numpy(dtype=np.float64)
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

    def summarize(self, metrics: pd.DataFrame, details: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Accuracy, balanced accuracy, macro and per-class precision/recall/F1 (see metrics.classification)."""
        row = classification_metrics(self.confusion(metrics), self.class_names)
        row["mean_confidence"] = float(metrics["confidence"].mean()) if len(metrics) else float("nan")
        return pd.DataFrame([row])

    # ------------------------------------------------------------------ experiment tables
    def write_outputs_tables(self, per_image_outputs: Sequence[str | Path], paths: dict[str, str]) -> None:
        """``classes.csv``: image, predicted_class, confidence, probability_<class> for every test image."""
        imageio.write_csv(paths["classes"], classes_table(per_image_outputs))

    def write_metrics_tables(self, metrics_csv: str | Path, paths: dict[str, str]) -> None:
        write_confusion_matrix(metrics_csv, paths["csv"], paths["png"], self, self.cfg["experiment"])

    def for_outputs(self, pred_dir: str | Path) -> ClassificationTask:
        """The task of the classes in the outputs' probability columns (the model's classes)."""
        classes = output_classes(pred_dir)
        return self.__class__(self.cfg.with_value("targets.classification.classes", classes))

    def score_folders(self, pred_dir: str | Path, gt_dir: str | Path,
                      ndim: int | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """Per-image outputs (``classes/{image}.csv``) against class folders (``<class>/{image}.tif``)."""
        return score_class_folders(pred_dir, gt_dir, self), {}

    # ------------------------------------------------------------------ report
    def report_gallery(self, images: Sequence[ReportImage], folder: Path) -> list[Picture]:
        """The misclassified test images (the confusion matrix is a metrics table the report shows)."""
        return misclassified_gallery(self, images, folder)
