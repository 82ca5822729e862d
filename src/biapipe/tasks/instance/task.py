"""Instance segmentation: every object gets its own label id.

The model predicts per-pixel maps chosen in ``targets.instance.channels`` (foreground,
contour, distances, centroids, touching areas); a marker-controlled watershed turns
them back into objects, and objects are scored by one-to-one IoU matching.

Activation follows the loss of each channel, so what is stored is what the loss
trained: ``bce``/``dice``/``bce_dice`` channels are trained through a sigmoid and are
activated by one; ``l1``/``mse`` channels are regressed on the raw output and are only
clamped to their range ([0, 1], or [-1, 1] for the signed distance). A tanh on a
regressed signed distance would squash values the network already learned (0.76 for 1).
"""

from __future__ import annotations

import warnings

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from ...core import imageio
from ...core.errors import ConfigError, InputError
from ...data.blocks import Block
from ...data.lazy import open_lazy
from ...data.scale import blob_diameter, median_diameter, object_stats
from ...large.plan import halo
from ...large.volumes import SpatialView, open_raw, scoring_pair
from .class_files import ClassedSamples, ClassFiles
from .classes import (
    ClassedLabels,
    check_class_shape,
    class_matching,
    classes_from_map,
    one_hot,
    summarize_classes,
    vote,
)
from .classes_large import classed_metrics_blocks, lookup, vote_blocks, write_class_volume
from .large import (
    create_raw_labels,
    instance_metrics_blocks,
    merge_segmented,
    segment_all_blocks,
    segment_block_ids,
    segment_block_job,
)
from .metrics import matching_metrics, summarize_matching, threshold_key
from .objects import object_table_blocks
from .planning import plan_instance
from .postprocess import InstanceParams, instance_postprocess, label_dtype, object_mask, object_table
from .ranking import coco_ap, matches_table
from .targets import (
    BINARY_CHANNELS,
    CHANNEL_RANGES,
    TargetSpec,
    instance_targets,
    prepare_labels,
)
from .tuning import tune_thresholds

#: Loss of each channel when ``targets.instance.loss`` is not given.
DEFAULT_LOSS = {"foreground": "bce_dice", "contour": "bce_dice", "centroid": "bce_dice", "touching": "bce_dice",
                "distance": "l1", "signed_distance": "l1"}
SIGMOID_KINDS = frozenset({"bce", "dice", "bce_dice"})


def tuned_thresholds_path(cfg: dict[str, Any]) -> Path:
    """Where the tuning step writes, and ``postprocess.instance.tuned`` reads, the thresholds."""
    return Path(cfg["results"]) / cfg["experiment"] / "tuning" / "instance_thresholds.json"


class InstanceTask(ClassedSamples):
    name: ClassVar[str] = "instance"
    output_dir: ClassVar[str] = "labels"
    side_outputs: ClassVar[dict[str, str]] = {"objects": "objects/{image}.csv"}
    splits_segmentation: ClassVar[bool] = True
    #: the watershed holds about a dozen float/int temporaries per voxel
    postprocess_bytes_per_voxel: ClassVar[int] = 64
    details_name: ClassVar[str | None] = "matches"
    measures_objects: ClassVar[bool] = True

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        tcfg = cfg["targets"]["instance"]
        self.voxel_size: list[float] | None = cfg["data"]["voxel_size"]
        self.spec = TargetSpec.from_config(tcfg, self.voxel_size)
        self.channels: tuple[str, ...] = self.spec.channels
        self.loss_kinds = _loss_kinds(self.channels, tcfg["loss"])
        self.loss_weights = _loss_weights(self.channels, tcfg["loss_weights"])
        self.pp_cfg: dict[str, Any] = cfg["postprocess"]["instance"]
        self.params = InstanceParams.from_config(self.pp_cfg)
        self.iou_thresholds: list[float] = list(cfg["evaluate"]["iou_thresholds"])
        # the headline: F1 at IoU 0.5 when it is scored, else at the first threshold
        key = threshold_key(0.5 if 0.5 in self.iou_thresholds else self.iou_thresholds[0])
        self.main_metric, self.main_score = f"f1@{key}", f"pooled_f1@{key}"
        self.main_score_name = f"F1 of the objects at IoU {key} (pooled over images)"
        self.n_classes: int | None = tcfg["classes"]
        if self.n_classes:  # tasks/instance/classes.py
            self.class_files = ClassFiles(cfg["data"])
            self.side_outputs = {**self.side_outputs, "classes": "classes/{image}.tif"}

    # ------------------------------------------------------------------ training side
    def out_channels(self) -> int:
        return len(self.channels) + (self.n_classes or 0)

    def make_targets(self, label: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """The channel maps, and with classes the one-hot class channels (``label`` may be zoomed
        or a block of the label file: :meth:`pixel_classes`)."""
        labels = prepare_labels(label, path)
        maps = instance_targets(labels, self.spec)
        if not self.n_classes:
            return maps
        return np.concatenate([maps, one_hot(self.pixel_classes(label, labels, path), self.n_classes)], axis=-1)

    def target_halo(self) -> tuple[int, ...]:
        """Distance maps and contours need whole objects: the context block-wise post-processing uses."""
        return halo(self.cfg["predict"], self.ndim)

    def check_label(self, path: str | Path, image_shape: tuple[int, ...]) -> None:
        label = prepare_labels(self.read_label(path, image_shape), path)
        self.true_classes(label, path)

    def foreground(self, target: np.ndarray) -> np.ndarray:
        for name, level in (("foreground", 0.5), ("signed_distance", 0.0), ("distance", 0.0)):
            if name in self.channels:
                return target[..., self.channels.index(name)] > level
        raise AssertionError("check_channels guarantees a foreground-like channel")

    def loss(self) -> torch.nn.Module:
        from ...training.losses import PerChannelLoss

        weights = self.cfg["train"]["loss"]
        maps = PerChannelLoss(self.loss_kinds, self.loss_weights, bce_weight=weights["ce"], dice_weight=weights["dice"])
        if not self.n_classes:
            return maps
        from ...training.losses import ClassedLoss

        return ClassedLoss(maps, len(self.channels), self.cfg["targets"]["instance"]["class_weight"])

    def object_counts(self, prediction: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
        """Objects at IoU 0.5 of the watershed on the prediction against the watershed on the
        target (which turns it back into the objects it was made from), with the configured
        ``postprocess.instance`` values (tuned thresholds need a trained model)."""
        k = len(self.channels)
        pred = quiet(instance_postprocess, prediction[..., :k], self.channels, self.params, self.voxel_size)
        true = quiet(instance_postprocess, target[..., :k], self.channels, self.params, self.voxel_size)
        m = matching_metrics(pred, true, [0.5])
        return int(m["tp@0.5"]), int(m["fp@0.5"]), int(m["fn@0.5"])

    def label_diameter(self, label: np.ndarray, path: str | Path | None = None) -> float | None:
        return median_diameter(prepare_labels(label, path), self.spec.sampling(self.ndim))

    def prediction_diameter(self, prediction: np.ndarray) -> float | None:
        """Of the growth mask with the configured thresholds, never the tuned ones: prediction must
        not depend on whether the tuning job has run yet."""
        maps = prediction[..., :len(self.channels)]
        return median_diameter(object_mask(maps, self.channels, self.params), self.spec.sampling(self.ndim))

    def image_diameter(self, image: np.ndarray) -> float | None:
        """Of the bright blobs of the channels' mean (nuclei, cells in fluorescence)."""
        return blob_diameter(np.asarray(image, dtype=np.float32).mean(axis=-1), self.spec.sampling(self.ndim))

    def label_stats(self, label: np.ndarray, path: str | Path | None = None) -> dict[str, float] | None:
        return object_stats(prepare_labels(label, path), self.spec.sampling(self.ndim))

    def planned(self, fingerprint: dict[str, Any] | None, cfg: dict[str, Any],
                has_validation: bool) -> list[tuple[str, Any, str]]:
        return plan_instance(fingerprint, cfg, has_validation)

    # ------------------------------------------------------------------ prediction side
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        parts = []
        for c, (name, kind) in enumerate(zip(self.channels, self.loss_kinds)):
            x = logits[:, c:c + 1]
            if kind in SIGMOID_KINDS:
                parts.append(torch.sigmoid(x))
            else:
                low, high = CHANNEL_RANGES[name]
                parts.append(x.clamp(low, high))
        if self.n_classes:
            parts.append(torch.softmax(logits[:, len(self.channels):], dim=1))
        return torch.cat(parts, dim=1)

    def postprocess(self, prediction: np.ndarray) -> np.ndarray | ClassedLabels:
        """Labels from the channel maps; with classes each object's class by majority vote."""
        k = len(self.channels)
        labels = instance_postprocess(prediction[..., :k], self.channels, self.postprocess_params(), self.voxel_size)
        if not self.n_classes:
            return labels
        return ClassedLabels(labels, vote(labels, np.asarray(prediction[..., k:])))

    def postprocess_params(self) -> InstanceParams:
        """Config thresholds, replaced by the tuned ones when ``postprocess.instance.tuned`` is set."""
        if not self.pp_cfg["tuned"]:
            return self.params
        path = tuned_thresholds_path(self.cfg)
        if not path.is_file():
            raise InputError(path, "postprocess.instance.tuned is true but the tuned thresholds file does not "
                                   "exist; run the tuning step on validation data first")
        tuned = imageio.read_json(path)
        if list(tuned.get("channels", [])) != list(self.channels):
            raise InputError(path, f"thresholds were tuned for channels {tuned.get('channels')} but "
                                   f"targets.instance.channels is {list(self.channels)}; tune again")
        return self.params.with_thresholds(tuned["thresholds"])

    def write_output(self, path: str | Path, output: np.ndarray) -> None:
        output = np.asarray(output)
        imageio.write_tiff(path, output.astype(label_dtype(int(output.max(initial=0))), copy=False))

    def read_output(self, path: str | Path) -> np.ndarray | ClassedLabels:
        """The label image; with classes also its class map, found as post-processing writes it
        (``classes/`` beside the labels folder)."""
        labels = imageio.read_label(path, self.ndim)
        if not self.n_classes:
            return labels
        found = Path(path).parent.parent / "classes" / Path(path).name
        if not found.is_file():
            raise InputError(found, "class map of a classed instance output not found")
        return ClassedLabels(labels, classes_from_map(labels, imageio.read_label(found, self.ndim)))

    def tuning_file(self) -> str | None:
        return str(tuned_thresholds_path(self.cfg)) if self.pp_cfg["tuned"] else None

    def tuned_postprocess(self, tuned: dict[str, Any]) -> dict[str, Any]:
        if list(tuned.get("channels", [])) != list(self.channels):
            raise ConfigError("targets.instance.channels", f"is {list(self.channels)} but the model's thresholds were "
                                                           f"tuned for {tuned.get('channels')}")
        return {"instance": {"tuned": False, **{k: float(v) for k, v in tuned["thresholds"].items()}}}

    def write_side_outputs(self, paths: dict[str, str], output: np.ndarray, image: np.ndarray | None,
                           prediction: np.ndarray | None = None) -> None:
        score = self.score_map(prediction) if prediction is not None else None
        table = self.objects(np.asarray(output), image, score)
        if isinstance(output, ClassedLabels):
            table.insert(1, "class", output.classes[table["label"].to_numpy(np.intp)])
            imageio.write_tiff(paths["classes"], output.class_map())
        imageio.write_csv(paths["objects"], table)

    def objects(self, labels: np.ndarray, image: np.ndarray | None = None,
                score: np.ndarray | None = None) -> pd.DataFrame:
        """Per-object table (label, size, centroid, bounding box, mean intensity when ``image`` is
        given, mean of the ``score`` map when given)."""
        return object_table(labels, image, self.voxel_size, score)

    def score_map(self, prediction: Any) -> np.ndarray:
        """(Z)YX map whose mean over an object is its score: the foreground probability, else the
        signed distance mapped from [-1, 1] to [0, 1], else the distance (all are highest inside
        objects the network is sure of)."""
        for name in ("foreground", "signed_distance", "distance"):
            if name in self.channels:
                channel = np.asarray(prediction[..., self.channels.index(name)], dtype=np.float32)
                return (channel + 1) / 2 if name == "signed_distance" else channel
        raise AssertionError("check_channels guarantees a foreground-like channel")

    # ------------------------------------------------------------------ threshold tuning
    def tune(self, predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, Any]:
        """Tune seed/mask thresholds on validation predictions (activated, (Z)YXC) and their labels."""
        gts = [prepare_labels(lab) for lab in labels]
        return tune_thresholds(predictions, gts, self.channels, self.params, self.voxel_size)

    def tune_files(self, prediction_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                   out_json: str | Path) -> dict[str, Any]:
        """File-level tuning for the workflow: reads predictions (Zarr) and labels, writes the JSON."""
        predictions = [imageio.read_array(p) for p in prediction_paths]
        labels = [prepare_labels(imageio.read_label(p, self.ndim), p) for p in label_paths]
        for pred, lab, path in zip(predictions, labels, prediction_paths):
            if pred.shape[:-1] != lab.shape:
                raise InputError(path, f"prediction of shape {pred.shape[:-1]} does not match its label {lab.shape}")
        predictions = [p[..., :len(self.channels)] for p in predictions]
        result = tune_thresholds(predictions, labels, self.channels, self.params, self.voxel_size)
        imageio.write_json(out_json, result)
        return result

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: np.ndarray | ClassedLabels, label: np.ndarray,
                 path: str | Path | None = None) -> dict[str, float]:
        """Matching figures; with classes and a class image also per-class ones (classes.py)."""
        output_in = output
        gt = prepare_labels(label, path)
        output = np.asarray(output)
        if output.shape != gt.shape:
            raise InputError(path, f"prediction of shape {output.shape} does not match ground truth of shape "
                                   f"{gt.shape}")
        row = matching_metrics(output, gt, self.iou_thresholds)
        truth = self.true_classes(label, path)
        if isinstance(output_in, ClassedLabels) and truth is not None:
            row.update(class_matching(output, output_in.classes, gt, truth, self.n_classes))
        return row

    def details(self, output: np.ndarray, label: np.ndarray,
                side: Mapping[str, str] | None = None) -> pd.DataFrame | None:
        """``metrics/{image}_matches.csv``: each predicted object's score (from the object table,
        ``side['objects']``) and IoU of its match, for the COCO AP of the data set (:mod:`.ranking`);
        None without an object table (outputs scored outside the workflow have no scores)."""
        path = (side or {}).get("objects")
        if not path:
            return None
        return matches_table(np.asarray(output), prepare_labels(label), pd.read_csv(path))

    def summarize(self, metrics: pd.DataFrame, details: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Pooled figures (summed TP/FP/FN over images) and per-image means, per IoU threshold;
        with the matches of every image also COCO's AP at IoU 0.5:0.95, 0.5 and 0.75."""
        row = summarize_matching(metrics, self.iou_thresholds)
        if details:
            row.update(coco_ap(metrics, details))
        if self.n_classes:
            row.update(summarize_classes(metrics, self.n_classes))
        return pd.DataFrame([row])

    # ------------------------------------------------------------------ large images
    def segment_blocks(self, pred: Any, out: Any, blocks: list[Block], work: Path,
                       segmented: tuple[str, list[str]] | None) -> int:
        if segmented is not None:  # segmented by block jobs: only the seam merge is left
            return merge_segmented(out, blocks, segmented, self.postprocess_params())
        return segment_all_blocks(pred, out, blocks, work, self.cfg["predict"], self.channels,
                                  self.postprocess_params(), self.voxel_size)

    def segment_block_ids(self, image_shape: Sequence[int]) -> list[int]:
        return segment_block_ids(image_shape, self.out_channels(), self.cfg["predict"])

    def create_segment_store(self, pred_zarr: str | Path, store: str | Path) -> None:
        create_raw_labels(pred_zarr, store)

    def segment_block(self, pred_zarr: str | Path, store: str | Path, block: int, record: str | Path) -> None:
        segment_block_job(pred_zarr, store, block, record, self.cfg["predict"], self.channels,
                          self.postprocess_params(), self.voxel_size)

    def write_side_outputs_large(self, side: dict[str, str], labels: Any, blocks: list[Block], n: int,
                                 image_path: str | None, prediction: Any = None) -> None:
        image = open_raw(image_path, self.ndim, self.cfg["data"]["axes"], self.cfg["predict"]) if image_path else None
        score = (lambda region: self.score_map(prediction[region])) if prediction is not None else None
        table = object_table_blocks(labels, blocks, n, image, self.voxel_size, score)
        if self.n_classes and prediction is not None:
            votes = vote_blocks(labels, prediction, blocks, len(self.channels), self.n_classes)
            table.insert(1, "class", lookup(*votes, table["label"].to_numpy()))
            write_class_volume(side["classes"], labels, blocks, votes, self.voxel_size)
        imageio.write_csv(side["objects"], table)

    def evaluate_large(self, output_path: str | Path, label_path: str | Path) -> dict[str, float]:
        """With classes and a class image, the per-class figures too, read from the class map
        post-processing wrote (:func:`.classes_large.classed_metrics_blocks`)."""
        found = self.class_files.path_for(label_path) if self.n_classes else None
        if found is None:
            return super().evaluate_large(output_path, label_path)
        pred, gt, blocks = scoring_pair(output_path, label_path, self.ndim, self.cfg["predict"], CLASSED_SCORE_BYTES)
        truth = SpatialView(open_lazy(found, self.ndim))
        check_class_shape(truth.shape, gt.shape, found)
        class_map = class_map_path(output_path)
        predicted = SpatialView(open_lazy(class_map, self.ndim))
        return classed_metrics_blocks(pred, gt, predicted, truth, blocks, self.iou_thresholds, self.n_classes,
                                      (label_path, class_map, found))

    def score_blocks(self, pred: Any, gt: Any, blocks: list[Block], label_path: str | Path) -> dict[str, float]:
        return instance_metrics_blocks(pred, gt, blocks, self.iou_thresholds,
                                       lambda g: np.asarray(g).astype(np.uint32, copy=False))

    # ------------------------------------------------------------------ export
    def activation_spec(self) -> list[list[Any]]:
        return [["sigmoid"] if kind in SIGMOID_KINDS else ["clamp", *CHANNEL_RANGES[ch]]
                for ch, kind in zip(self.channels, self.loss_kinds)] + [["softmax_group"]] * (self.n_classes or 0)

    def output_channel_names(self) -> list[str]:
        return list(self.channels) + [f"class_{c}" for c in range(1, (self.n_classes or 0) + 1)]


#: bytes per voxel of scoring a block with classes: labels, class images and their uint64 vote keys
CLASSED_SCORE_BYTES = 64


def class_map_path(output: str | Path) -> Path:
    """Where post-processing writes the class map of a block-wise instance output:
    ``classes/{image}.tif`` beside its labels folder (a BigTIFF)."""
    return Path(output).parent.parent / "classes" / f"{imageio.image_id(output)}.tif"


def _loss_kinds(channels: Sequence[str], kinds: Sequence[str] | None) -> list[str]:
    key = "targets.instance.loss"
    if kinds is None:
        return [DEFAULT_LOSS[c] for c in channels]
    kinds = list(kinds)
    if len(kinds) != len(channels):
        raise ConfigError(key, f"has {len(kinds)} entries but targets.instance.channels has {len(channels)}")
    for name, kind in zip(channels, kinds):
        if name == "signed_distance" and kind in SIGMOID_KINDS:
            raise ConfigError(key, f"'{kind}' cannot fit signed_distance (values in [-1, 1]); use l1 or mse")
        if name in BINARY_CHANNELS and kind not in SIGMOID_KINDS | {"l1", "mse"}:
            raise ConfigError(key, f"unknown loss '{kind}' for channel {name}")
    return kinds


def _loss_weights(channels: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(channels)
    if len(weights) != len(channels):
        raise ConfigError("targets.instance.loss_weights",
                          f"has {len(weights)} entries but targets.instance.channels has {len(channels)}")
    return [float(w) for w in weights]


def quiet(fn: Any, *args: Any, category: type[Warning] = UserWarning) -> Any:
    """``fn(*args)`` with warnings of ``category`` silenced (early models often yield none of
    what post-processing looks for, and say so once per patch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        return fn(*args)
