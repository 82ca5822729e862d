"""Point detection: find the centre of every object, optionally with its class.

Ground truth is a points CSV per image (:mod:`biapipe.targets_points`); the network
learns one map per class, either balls around the points (BCE + Dice through a
sigmoid, whose logits carry a fixed prior offset, see PRIOR_PROBABILITY) or Gaussian
heat maps (MSE, regressed and clamped to [0, 1]). Peaks of
the predicted maps become the points (:mod:`biapipe.postprocess.detection`), which
are scored by one-to-one matching within a physical tolerance
(:mod:`biapipe.metrics.detection`).

Classes are the values of the CSV's ``class`` column listed in
``targets.detection.classes``; channel k is the k-th value, and the output CSV
writes the original values back, so predictions read like the annotations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from ...core import imageio
from ...core.errors import ConfigError, InputError
from ...large.plan import memory_bytes
from ...large.predict import plan_blocks
from ..base import Task
from .large import detection_table
from .metrics import (
    assignments_table,
    detection_metrics,
    match_points,
    summarize_detection,
)
from .points import (
    PointSet,
    class_key,
    coordinate_columns,
    point_targets,
    read_points,
    rounded_pixels,
    stencil_half_widths,
)
from .postprocess import DetectionParams, detect_points, tune_detection_threshold
from .ranking import class_matches, detection_ap, greedy_match
from .report import points_picture

#: Loss kinds trained through a sigmoid; the others (mse, l1) are regressed and clamped.
SIGMOID_KINDS = frozenset({"bce", "dice", "bce_dice"})
#: Loss per target kind when ``targets.detection.loss`` is null.
DEFAULT_LOSS = {"ball": "bce_dice", "gaussian": "mse"}
#: Sigmoid outputs start near this probability (the prior of RetinaNet, Lin et al. 2017).
#: Points cover ~1% of the pixels; a network starting at 0.5 everywhere spends its first
#: thousand Adam steps (each moves a bias by ~lr) only pushing the background down, and a
#: short training ends with every score near 0.5 and the rarer class channel never peaking.
PRIOR_PROBABILITY = 0.01
#: Decimals of the coordinates and scores in the output CSVs.
COORD_DECIMALS, SCORE_DECIMALS = 3, 6


def tuned_threshold_path(cfg: dict[str, Any]) -> Path:
    """Where the tuning step writes, and ``threshold: tuned`` reads, the detection threshold."""
    return Path(cfg["results"]) / cfg["experiment"] / "tuning" / "detection.json"


class DetectionTask(Task):
    name: ClassVar[str] = "detection"
    output_dir: ClassVar[str] = "points"
    output_suffix: ClassVar[str] = ".csv"
    large_output_suffix: ClassVar[str | None] = ".csv"
    label_kind: ClassVar[str] = "table"
    label_suffixes: ClassVar[tuple[str, ...]] = (".csv",)
    details_name: ClassVar[str | None] = "assignments"
    main_metric = "f1"
    main_score = "pooled_f1"
    main_score_name = "F1 of the points (pooled over images)"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        tcfg = cfg["targets"]["detection"]
        self.kind: str = tcfg["kind"]
        self.size = tcfg["radius"] if self.kind == "ball" else tcfg["sigma"]
        self.class_values: list[Any] | None = list(tcfg["classes"]) if tcfg["classes"] else None
        self.class_names: list[str] | None = _class_names(self.class_values)
        self.loss_kind: str = tcfg["loss"] or DEFAULT_LOSS[self.kind]
        #: added to the logits in both the loss and the activation: a fixed prior bias, so the
        #: model (shared by all tasks) needs no detection-specific initialisation
        self.logit_offset = math.log(PRIOR_PROBABILITY / (1 - PRIOR_PROBABILITY)) \
            if self.loss_kind in SIGMOID_KINDS else 0.0
        self.voxel_size: list[float] | None = cfg["data"]["voxel_size"]
        self.params = DetectionParams.from_config(cfg["postprocess"]["detection"])
        self.tolerance = float(cfg["evaluate"]["detection"]["tolerance"])
        self.axes: tuple[str, ...] = ("z", "y", "x")[3 - self.ndim:]
        _check_size(self.size, self.ndim, "radius" if self.kind == "ball" else "sigma")

    # ------------------------------------------------------------------ ground truth
    def read_label(self, path: str | Path, image_shape: tuple[int, ...] | None) -> PointSet:
        """The image's points, checked against its (Z)YX shape (skipped when None)."""
        return read_points(path, self.ndim, image_shape, self.class_values)

    # ------------------------------------------------------------------ training side
    def out_channels(self) -> int:
        return len(self.class_values) if self.class_values else 1

    def make_targets(self, label: PointSet, path: str | Path | None = None) -> np.ndarray:
        if label.shape is None:
            raise InputError(path, "points were read without their image's shape; cannot draw targets")
        return point_targets(label, label.shape, self.out_channels(), self.kind, self.size, self.voxel_size)

    def read_label_region(self, path: str | Path, region: tuple[slice, ...], image_shape: tuple[int, ...]) -> PointSet:
        """The points inside ``region``, in its coordinates (the region's shape as theirs)."""
        points = self.read_label(path, image_shape)
        start = np.array([r.start for r in region], dtype=np.float64)
        stop = np.array([r.stop for r in region], dtype=np.float64)
        pixels = rounded_pixels(points.coords, image_shape).reshape(-1, self.ndim).astype(np.float64)
        inside = np.all((pixels >= start) & (pixels < stop), axis=1)
        return PointSet(pixels[inside] - start, points.classes[inside],
                        shape=tuple(int(b - a) for a, b in zip(start, stop)))

    def target_halo(self) -> tuple[int, ...]:
        """A point's stencil reaches this far (ball radius, or the Gaussian's cut-off)."""
        return stencil_half_widths(self.kind, self.size, self.ndim, self.voxel_size)

    def check_label(self, path: str | Path, image_shape: tuple[int, ...]) -> None:
        self.read_label(path, image_shape)  # coordinates inside the image, classes known

    def foreground(self, target: np.ndarray) -> np.ndarray:
        return np.asarray(target).max(axis=-1) >= 0.5

    def loss(self) -> torch.nn.Module:
        from ...training.losses import OffsetLoss, PerChannelLoss

        weights = self.cfg["train"]["loss"]
        loss = PerChannelLoss([self.loss_kind] * self.out_channels(), bce_weight=weights["ce"],
                              dice_weight=weights["dice"])
        return OffsetLoss(loss, self.logit_offset)

    # ------------------------------------------------------------------ prediction side
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        if self.loss_kind in SIGMOID_KINDS:
            return torch.sigmoid(logits + self.logit_offset)
        return logits.clamp(0.0, 1.0)

    def postprocess(self, prediction: np.ndarray) -> PointSet:
        """The points as the output CSV stores them (coordinates to 3 decimals, scores to 6), so
        the workflow scores what a folder of outputs reads back (``biapipe evaluate``)."""
        points = detect_points(np.asarray(prediction), self.postprocess_params(), self.voxel_size)
        scores = None if points.scores is None else np.round(points.scores, SCORE_DECIMALS)
        return replace(points, coords=np.round(points.coords, COORD_DECIMALS), scores=scores)

    def postprocess_params(self) -> DetectionParams:
        """Config parameters, with ``threshold: tuned`` replaced by the tuned value."""
        if self.params.threshold != "tuned":
            return self.params
        path = tuned_threshold_path(self.cfg)
        if not path.is_file():
            raise InputError(path, "postprocess.detection.threshold is 'tuned' but the tuning file does not exist; "
                                   "run the tune_detection rule (needs validation images) first")
        return replace(self.params, threshold=float(imageio.read_json(path)["threshold"]))

    def write_output(self, path: str | Path, output: PointSet) -> None:
        imageio.write_csv(path, self.points_table(output))

    def output_value(self, output: PointSet) -> pd.DataFrame:
        return self.points_table(output)

    def points_table(self, points: PointSet) -> pd.DataFrame:
        """Columns (z,)y,x, score, class: integer pixels when they are, the class as annotated."""
        coords = np.round(points.coords, COORD_DECIMALS)
        integral = bool(np.all(coords == np.round(coords)))
        table = {a: (coords[:, i].astype(np.int64) if integral else coords[:, i]) for i, a in enumerate(self.axes)}
        table["score"] = np.round(points.scores, SCORE_DECIMALS) if points.scores is not None \
            else np.full(len(points), np.nan)
        labels = self.class_names or ["0"]
        table["class"] = [_native(labels[k]) for k in points.classes]
        return pd.DataFrame(table, columns=[*self.axes, "score", "class"])

    def read_output(self, path: str | Path) -> PointSet:
        return read_points(path, self.ndim, None, self.class_values)

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: PointSet, label: PointSet, path: str | Path | None = None) -> dict[str, float]:
        return detection_metrics(output.coords, output.classes, label.coords, label.classes, self.tolerance,
                                 self.voxel_size, self.class_names)

    def details(self, output: PointSet, label: PointSet, side: Mapping[str, str] | None = None) -> pd.DataFrame:
        """``metrics/{image}_assignments.csv``: every TP pair, FP and FN of the matching behind the
        metrics, and per prediction whether the score-ranked matching of average precision takes
        it (``ap_match``; ``ap_match_class`` within its class; see :mod:`.ranking`)."""
        match = match_points(output.coords, label.coords, self.tolerance, self.voxel_size)
        table = assignments_table(output.coords, output.classes, output.scores, label.coords, label.classes,
                                  match, self.axes)
        scores = output.scores if output.scores is not None else np.zeros(len(output))
        agnostic = greedy_match(output.coords, scores, label.coords, self.tolerance, self.voxel_size)
        within = class_matches(output.coords, output.classes, scores, label.coords, label.classes, self.tolerance,
                               self.voxel_size)
        rows = table["pred_row"].to_numpy()
        has_pred = rows >= 0
        for column, flags in (("ap_match", agnostic), ("ap_match_class", within)):
            values = np.full(len(table), np.nan)
            values[has_pred] = flags[rows[has_pred]]
            table[column] = values
        return table

    def summarize(self, metrics: pd.DataFrame, details: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Pooled and mean figures; with the assignments of every image also AP (class-agnostic),
        AP per class and mAP over classes, at the tolerance (:mod:`.ranking`)."""
        row = summarize_detection(metrics, self.class_names)
        if details:
            row.update(detection_ap(pd.concat(list(details.values()), ignore_index=True), self.class_names))
        return pd.DataFrame([row])

    @classmethod
    def classes_config(cls, values: Sequence[str]) -> dict[str, Any]:
        """``--classes 1 3``: the class column's values in channel order."""
        return {"targets": {"detection": {"classes": [_native(v) for v in values]}}}

    def label_ndim(self, path: str | Path) -> int:
        """2 or 3 from the coordinate columns of a points CSV."""
        try:
            columns = [str(c).strip().lower() for c in pd.read_csv(path, nrows=0).columns]
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read points CSV ({type(exc).__name__}: {exc})") from exc
        found = len(coordinate_columns(columns))
        if found not in (2, 3):
            raise InputError(path, f"has {found} coordinate columns; expected y,x or z,y,x (or napari's axis-0,...)")
        return found

    # ------------------------------------------------------------------ report
    def report_picture(self, image: Any, role: str, path: Path) -> Any:
        """Points on the image: true positives green, false positives red, missed points blue."""
        return points_picture(self, image, role, path)

    # ------------------------------------------------------------------ threshold tuning
    def tuning_file(self) -> str | None:
        """The tuning JSON when ``postprocess.detection.threshold`` is 'tuned' (the workflow then tunes first)."""
        return str(tuned_threshold_path(self.cfg)) if self.params.threshold == "tuned" else None

    def tuned_postprocess(self, tuned: dict[str, Any]) -> dict[str, Any]:
        return {"detection": {"threshold": float(tuned["threshold"])}}

    def tune(self, predictions: Sequence[np.ndarray], labels: Sequence[PointSet]) -> dict[str, Any]:
        """Peak threshold maximising F1 on validation predictions (activated, (Z)YXC)."""
        return tune_detection_threshold(predictions, labels, self.cfg)

    def tune_files(self, prediction_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                   out_json: str | Path) -> dict[str, Any]:
        """File-level tuning for the workflow: predictions (Zarr) and points CSVs -> the JSON.

        The prediction's spatial shape is the image's, so it is what points are checked against.
        """
        predictions = [imageio.read_array(p) for p in prediction_paths]
        labels = [self.read_label(lab, pred.shape[:-1]) for pred, lab in zip(predictions, label_paths)]
        result = self.tune(predictions, labels)
        imageio.write_json(out_json, result)
        return result

    # ------------------------------------------------------------------ samples and demo data
    def demo_label_folder(self) -> tuple[str, str]:
        return "points", ".csv"  # the demo's centroid tables

    # ------------------------------------------------------------------ large images
    def postprocess_large(self, pred_zarr: str | Path, out_path: str | Path, side: dict[str, str] | None,
                          image_path: str | None, segmented: tuple[str, list[str]] | None) -> None:
        """Points in global coordinates, block by block, as the whole-volume table would be."""
        import zarr

        pred = zarr.open_array(str(pred_zarr), mode="r")
        # peak finding holds about C + 3 float32 arrays of a grown block
        blocks = plan_blocks(tuple(pred.shape[:-1]), tuple(pred.chunks[:-1]), pred.shape[-1], 4,
                             memory_bytes(self.cfg["predict"]) / 2**30)
        imageio.write_csv(out_path, detection_table(pred, blocks, self))

    # ------------------------------------------------------------------ export
    def activation_spec(self) -> list[list[Any]]:
        # a fixed prior is added to the logits before the sigmoid
        entry = ["sigmoid", float(self.logit_offset)] if self.loss_kind in SIGMOID_KINDS else ["clamp", 0.0, 1.0]
        return [list(entry) for _ in range(self.out_channels())]

    def output_channel_names(self) -> list[str]:
        return [f"points_{n}" for n in self.class_names] if self.class_names else ["points"]


def _class_names(values: list[Any] | None) -> list[str] | None:
    """Canonical text of each configured class (1 and '1' are one class, so listing both is an error)."""
    if not values:
        return None
    names = [class_key(v) for v in values]
    if len(set(names)) != len(names):
        raise ConfigError("targets.detection.classes", f"lists a class twice: {names}")
    return names


def _check_size(size: Any, ndim: int, key: str) -> None:
    if np.ndim(size) != 0 and len(size) != ndim:
        raise ConfigError(f"targets.detection.{key}", f"has {len(size)} entries but ndim is {ndim}")


def _native(name: str) -> int | str:
    """Class labels that are integers are written as integers."""
    try:
        return int(name)
    except ValueError:
        return name
