"""Automatic planning (``train.plan: auto``): the keys a config leaves unset, chosen from the data.

nnU-Net showed that most of what makes a segmentation network work on a new dataset follows
from a few properties of that dataset; Cellpose that the object scale is the one that
matters most. The planner reads a fingerprint of the training data (``data.fingerprint``:
image sizes, voxel size, object sizes and crowding, intensities, number of images,
channels) and the training budget, and fills every planned key the user did not write:
the object scale, patch size, network depth and width, batch size, epochs, learning-rate
schedule, normalization, 3D pooling, augmentation, and the task's own (targets,
post-processing: ``Task.planned``). A key written in the config always wins, even when it
equals a default: planning works on the config as written, before the schema fills in
defaults (``smk.load_config``).

The plan is made when the workflow is parsed and only from the fingerprint, the budget and
the config, never from the machine (a login node and a cluster node must plan the same), so
the planned values are ordinary config values: rule parameters, reruns and
``results/{experiment}/config.yaml`` see them as if they were written. Values are chosen on
coarse grids (powers of two, diameters on a 2^(1/4) grid), so a few images more or less do
not change the plan and retrain. Each choice and why goes to ``model/plan.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import Section
from ..data.fingerprint import fingerprint
from ..data.samples import Dataset
from ..data.scale import quantize_diameter
from ..models.pooling import resolve_pool_z
from ..tasks.base import Task

#: Where per-image fingerprint records are cached (by file size and mtime).
FINGERPRINT_CACHE = ".snakemake/biapipe/fingerprint-cache.json"

#: ``train.budget_minutes`` -> patches: the reference machine (2 CPU cores) trains the reference
#: network (2D U-Net, depth 3, width 16, 128x128 patches) at 9 patches/s. BiaPy's 40 minutes of
#: 2 cores are 21,600 such patches.
PATCHES_PER_MINUTE = 540
REFERENCE = {"voxels": 128 * 128, "width": 16, "depth": 3}

#: The working object scale: the training set's median diameter, within these bounds (pixels).
SCALE_BOUNDS = (16, 40)

#: Planned zoom augmentation: down to half the training scale (objects smaller than it stay at
#: their own size at test time), up to the schema's 1.4.
ZOOM_RANGE = (0.5, 1.4)

#: Planned epochs aim at about this many, each of a power-of-two number of patches.
TARGET_EPOCHS = 40


@dataclass
class PlanRecord:
    """What the planner decided: the fingerprint, each planned key with its value and reason, and
    the planned keys the config wrote itself (kept as written)."""

    mode: str
    fingerprint: dict[str, Any] | None = None
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    #: every planned key's value in the end, chosen or written
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.mode, "fingerprint": self.fingerprint, "choices": self.choices,
                "kept_as_written": sorted(self.written)}

    def meaning(self) -> dict[str, Any]:
        """What the plan amounts to: the data's fingerprint and the planned keys' values, whoever
        set them. The plan record is rewritten when this changes, not when a config spells out
        what was planned."""
        return {"plan": self.mode, "fingerprint": self.fingerprint, "values": self.values}


def written_keys(raw: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys present in a config as written (mappings and their keys)."""
    keys: set[str] = set()
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        keys.add(path)
        if isinstance(value, Mapping):
            keys |= written_keys(value, path)
    return keys


class Planner:
    """Fills planned keys into a validated config, one decision at a time, so that later
    decisions see earlier ones (the patch size the object scale, epochs the network)."""

    def __init__(self, cfg: Section, written: set[str], fp: dict[str, Any] | None, record: PlanRecord) -> None:
        self.cfg, self.written, self.fp, self.record = cfg, written, fp, record

    def get(self, key: str) -> Any:
        value: Any = self.cfg
        for part in key.split("."):
            value = value[part]
        return value

    def is_free(self, key: str) -> bool:
        """A key the plan may set: neither it nor a section above it was written (a whole
        section written as a value, e.g. ``augment: {}``, still leaves its keys free)."""
        return key not in self.written

    def keep(self, key: str) -> None:
        """A planned key the config wrote: kept, and its value recorded as the plan's."""
        self.record.written.append(key)
        self.record.values[key] = self.get(key)

    def choose(self, key: str, value: Any, why: str) -> None:
        if not self.is_free(key):
            self.keep(key)
            return
        self.cfg = self.cfg.with_value(key, value)
        self.record.choices[key] = {"value": value, "why": why}
        self.record.values[key] = value

    # ------------------------------------------------------------------ decisions
    @property
    def objects(self) -> dict[str, Any] | None:
        return (self.fp or {}).get("objects")

    def working_diameter(self) -> float | None:
        """Object diameter at the scale the network trains at, when known."""
        chosen = self.get("train.object_diameter")
        if chosen:
            return float(chosen)
        return float(self.objects["diameter_median"]) if self.objects else None

    def object_scale(self, task: Task) -> None:
        objects = self.objects
        if not (task.measures_objects and objects):
            return
        voxel = self.cfg["data"]["voxel_size"]
        anisotropy = float(voxel[0]) / float(min(voxel[1:])) if voxel and len(voxel) == 3 else 1.0
        if anisotropy > 2:
            why = (f"z spacing {anisotropy:g} times the YX spacing: zooming would cost the few z planes the stacks "
                   "have, so images keep their own scale")
            self.choose("train.object_diameter", None, why)
            self.choose("predict.rescale", False, why)
            return
        median = float(objects["diameter_median"])
        value = int(min(max(quantize_diameter(median), SCALE_BOUNDS[0]), SCALE_BOUNDS[1]))
        spread = float(objects["diameter_p90"]) / max(float(objects["diameter_p10"]), 1e-6)
        self.choose("train.object_diameter", value,
                    f"median object diameter of the training images {median:g} px (10th-90th percentile over "
                    f"images {objects['diameter_p10']:g}-{objects['diameter_p90']:g} px, a {spread:.1f}-fold "
                    f"range): every training image is zoomed so its objects measure {value} px (the median on a "
                    f"2^(1/4) grid, within {SCALE_BOUNDS[0]}-{SCALE_BOUNDS[1]} px), so the network learns one scale")
        self.choose("predict.rescale", True,
                    "test images are zoomed to the training object scale (their diameter estimated from a first "
                    "prediction) and their predictions zoomed back")

    def patch_and_network(self, task: Task) -> None:
        if task.whole_image:
            return
        ndim = int(self.cfg["ndim"])
        diameter = self.working_diameter()
        scale = self._image_zoom()
        sides = [int(s * scale) for s in (self.fp or {}).get("shape_median", [])]
        if self.is_free("train.patch_size"):
            if diameter is not None:
                side = _pow2(6 * diameter, 64, 256 if ndim == 2 else 128)
                why = f"about 6 object diameters ({diameter:g} px) per side, a power of two within 64-{256 if ndim == 2 else 128}"
            else:
                side = 128 if ndim == 2 else 64
                why = "no object sizes known: the standard patch"
            if sides and max(sides[-2:]) < side:
                side = max(_pow2_floor(max(sides[-2:])), 32)
                why += f"; cut to the median image side at training scale ({max(sides[-2:])} px)"
            patch = [side, side]
            if ndim == 3:
                patch = [self._patch_z(side, sides), side, side]
                why += f"; z: {patch[0]} from the voxel size"
            self.choose("train.patch_size", patch, why)
        else:
            self.keep("train.patch_size")
        patch = [int(p) for p in self.get("train.patch_size")]
        need = 3 * diameter if diameter else 48
        depth = next((d for d in range(2, 6) if receptive_field(d) >= need), 5)
        depth = max(1, min(depth, int(math.log2(min(patch[-2:]) / 8))))
        self.choose("train.model.depth", depth,
                    f"smallest depth whose receptive field ({receptive_field(depth)} px) covers 3 object diameters "
                    f"({need:g} px), with at least 8 px at the bottom of the {min(patch[-2:])} px patch")
        budget = float(self.cfg["train"]["budget_minutes"])
        self.choose("train.model.width", 32 if budget >= 120 else 16,
                    f"{'32' if budget >= 120 else '16'} feature maps at the first level for a budget of {budget:g} "
                    "reference minutes (wider networks pay off from about 2 hours)")
        if ndim == 3:
            flags = resolve_pool_z(self.get("train.model.pool_z"), int(self.get("train.model.depth")),
                                   self.cfg["data"]["voxel_size"], patch[0])
            self.choose("train.model.pool_z", flags,
                        f"z pooled at levels {[i + 1 for i, f in enumerate(flags) if f] or 'none'}: z is left alone "
                        "while its spacing is more than twice the YX spacing (data.voxel_size)")
        voxels = math.prod(patch)
        target = 8 * 128 * 128 if ndim == 2 else 2 * 32 * 64 * 64
        self.choose("train.batch_size", _pow2(target / voxels, 2, 32),
                    f"about {target:,} voxels per batch ({voxels:,} per patch)")

    def budget(self, task: Task) -> None:
        """Epochs (and patches per epoch) that spend ``train.budget_minutes`` of the reference machine."""
        tcfg = self.cfg["train"]
        minutes = float(tcfg["budget_minutes"])
        cost = self._patch_cost(task)
        total = minutes * PATCHES_PER_MINUTE / cost
        batch = int(tcfg["batch_size"])
        if task.whole_image:  # an epoch shows every training image once
            images = max(1, int((self.fp or {}).get("images") or 1))
            epochs = max(1, round(total / images))
            self.choose("train.epochs", epochs, f"{minutes:g} reference minutes = {total:,.0f} images of this "
                                                f"network and size, {images} training images per epoch")
            return
        if self.is_free("train.patches_per_epoch"):
            per_epoch = _pow2(total / TARGET_EPOCHS, max(64, batch), 1024)
            self.choose("train.patches_per_epoch", per_epoch,
                        f"about {TARGET_EPOCHS} epochs of a power-of-two number of patches (between "
                        f"{max(64, batch)} and 1024: a small budget gives fewer epochs)")
        else:
            self.keep("train.patches_per_epoch")
        per_epoch = int(self.get("train.patches_per_epoch"))
        epochs = max(1, round(total / per_epoch))
        self.choose("train.epochs", epochs,
                    f"{minutes:g} reference minutes ({PATCHES_PER_MINUTE} patches of the reference network a minute) "
                    f"= {total:,.0f} patches of this network and patch size (cost {cost:.2f} of the reference "
                    f"patch), in epochs of {per_epoch}")
        self.choose("train.val_patches", int(min(max(per_epoch // 4, 16), 128)),
                    "a quarter of an epoch, 16-128: a stable validation loss at a small share of the time")
        self.choose("train.early_stopping.patience", int(self.get("train.epochs")),
                    "no early stopping: the budget is fixed and the learning rate schedule runs to its end "
                    "(best.pt is still the epoch of lowest validation loss)")
        self.choose("train.optimizer.lr", 0.002, "AdamW at 2e-3 with cosine decay: the recipe of "
                                                 "benchmarks/bench_quality.py and bench_generalization.py")
        self.choose("train.warmup_epochs", 1 if int(self.get("train.epochs")) >= 4 else 0,
                    "one epoch of linear warm-up keeps the first steps of a fresh network stable")

    def normalization(self) -> None:
        fp = self.fp
        if fp is None:
            return
        floats = all(d.startswith("float") for d in fp["dtypes"])
        if floats and fp["intensity"]["p1"] < 0:
            self.choose("normalize.method", "zscore", "float images with negative values (already normalized or "
                                                      "background-subtracted): zero mean, unit variance")
            return
        self.choose("normalize.method", "percentile",
                    f"{'/'.join(fp['dtypes'])} images: each image's 1st and 99.8th percentiles to 0 and 1 (robust to "
                    "hot pixels and to the exposure differences between images)")
        self.choose("normalize.scope", "image", "per image: exposure and staining differ between acquisitions, "
                                                "and a test image of an unseen kind has its own range")

    def augmentation(self) -> None:
        self.choose("train.augment.scale", 0.3, "zoom in 30% of the patches: covers the error of the test-time "
                                                "object scale estimate")
        self.choose("train.augment.scale_range", list(ZOOM_RANGE),
                    f"zooms of {ZOOM_RANGE[0]:g}-{ZOOM_RANGE[1]:g}: an estimated diameter only zooms test images "
                    "down, so objects smaller than the training scale are segmented at their own size, down to "
                    "about half of it")
        for key, value in (("brightness", 0.3), ("contrast", 0.3), ("gamma", 0.3), ("gaussian_noise", 0.2)):
            self.choose(f"train.augment.{key}", value, "intensity changes and noise in a third of the patches: "
                                                       "dimmer, noisier and differently exposed images than the "
                                                       "training ones")

    # ------------------------------------------------------------------ helpers
    def _image_zoom(self) -> float:
        """How much training images are zoomed (training scale over their median diameter)."""
        chosen, objects = self.get("train.object_diameter"), self.objects
        if not (chosen and objects):
            return 1.0
        return float(chosen) / max(float(objects["diameter_median"]), 1e-6)

    def _patch_z(self, side: int, sides: list[int]) -> int:
        voxel = self.cfg["data"]["voxel_size"]
        anisotropy = float(voxel[0]) / float(min(voxel[1:])) if voxel else 1.0
        z = _pow2(side / anisotropy, 8, side)
        if sides:
            z = min(z, max(_pow2_floor(sides[0]), 8))
        return z

    def _patch_cost(self, task: Task) -> float:
        """Training cost of one patch of the planned network relative to the reference patch:
        convolution work per voxel is about width² x levels (2D: every level costs the same;
        3D: each level half the one above, and a 3x3x3 kernel 3 times a 3x3 one)."""
        tcfg = self.cfg["train"]
        patch, width, depth = [int(p) for p in tcfg["patch_size"]], int(tcfg["model"]["width"]), \
            int(tcfg["model"]["depth"])
        per_voxel = (width / REFERENCE["width"]) ** 2
        if len(patch) == 2:
            levels = (depth + 1) / (REFERENCE["depth"] + 1)
        else:
            levels = 3 * sum(0.5**k for k in range(depth + 1)) / (REFERENCE["depth"] + 1)
        return math.prod(patch) / REFERENCE["voxels"] * per_voxel * levels


def receptive_field(depth: int) -> int:
    """Receptive field (pixels) of a U-Net with two 3x3 convolutions per level and 2x pooling:
    each level's convolutions see 4 * 2^level more, on the way down and up, plus the pools."""
    return 14 * 2**depth - 10


def _pow2(value: float, low: int, high: int) -> int:
    """The power of two nearest to ``value`` (in log scale) within [low, high]."""
    return int(min(max(2 ** round(math.log2(max(value, 1e-9))), low), high))


def _pow2_floor(value: float) -> int:
    return int(2 ** math.floor(math.log2(max(value, 1.0))))


def plan_experiment(raw: Mapping[str, Any], cfg: Section, ds: Dataset, task: Task,
                    cache_path: str | Path | None = FINGERPRINT_CACHE) -> tuple[Section, PlanRecord]:
    """The config with every free planned key chosen, and the record of the choices. Demo data
    is planned without a fingerprint (its files are written by the workflow itself, and the
    plan must not change once they exist)."""
    if cfg["train"]["plan"] != "auto":
        return cfg, PlanRecord(str(cfg["train"]["plan"]))
    fp = None
    if not cfg["data"]["demo"]:
        fp = fingerprint(ds.train + ds.val, int(cfg["ndim"]), cfg["data"]["axes"], cfg["data"]["voxel_size"],
                         task.label_stats if task.measures_objects else None, cache_path)
    return plan_config(raw, cfg, fp, task, bool(ds.val))


def plan_config(raw: Mapping[str, Any], cfg: Section, fp: dict[str, Any] | None, task: Task,
                has_validation: bool) -> tuple[Section, PlanRecord]:
    """The planned config from a fingerprint (None: nothing known about the data)."""
    record = PlanRecord("auto", fp)
    planner = Planner(cfg, written_keys(raw), fp, record)
    planner.object_scale(task)
    planner.patch_and_network(task)
    planner.budget(task)
    if task.plans_appearance:
        planner.normalization()
        if not task.whole_image:
            planner.augmentation()
    for key, value, why in task.planned(fp, planner.cfg, has_validation):
        planner.choose(key, value, why)
    return planner.cfg, record
