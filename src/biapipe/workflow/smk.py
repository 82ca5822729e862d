"""What the Snakefile needs at parse time: the validated config, the samples, and the
patterns, regexes, parameters and resources of its rules. Plain Python, unit-tested.

Planning cost grows with every input item and input function of every per-image job
(Snakemake searches a producer for each input file and inspects each function's
signature), so per-image rules list only the files whose change must rerun them, as
patterns where the folder layout allows (docs/architecture.md, "planning cost").
"""

from __future__ import annotations

import functools
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.config import Section, merge, rerun_key, training_keys
from ..core.errors import ConfigError, InputError
from ..data.samples import Dataset, Sample, discover
from ..data.validate import check_dataset
from ..large.plan import is_large, memory_bytes, plan_for_shape, whole_image_bytes
from ..large.volumes import open_raw
from ..models.info import ModelInfo, read_model_info
from ..tasks import Task, get_task
from ..tasks.from_model import config_with_model, model_layer
from .planning import PlanRecord, plan_experiment

#: Where parse-time header checks are cached (by file size and mtime).
PROBE_CACHE = ".snakemake/biapipe/probe-cache.json"

#: predict.* keys that change the predictions (threads, device and the large-image plan do not).
PREDICT_KEYS = ("mode", "tile_size", "overlap", "blend", "precision", "trim", "tta", "rescale")


def raw_config(given: Mapping[str, Any], basedir: str | Path) -> dict[str, Any]:
    """The experiment config as written: config/config.yaml unless --configfile gave an experiment."""
    if "experiment" in given:
        return dict(given)
    default = Path("config/config.yaml")
    if not default.is_file():
        default = Path(basedir).parent / "config" / "config.yaml"
    return merge(yaml.safe_load(default.read_text()), dict(given))


def load_config(given: Mapping[str, Any], basedir: str | Path) -> Section:
    """The validated experiment config (defaults filled in, with what its model brings; nothing
    planned yet)."""
    return config_with_model(raw_config(given, basedir))


@dataclass
class Plan:
    """Everything the rules are built from, worked out once per parse."""

    cfg: Section
    task: Task
    ds: Dataset
    large_ids: list[str] = field(default_factory=list)
    split_ids: list[str] = field(default_factory=list)
    #: split large images: prediction block ids, and (segmentation split too) segmentation block ids
    blocks: dict[str, list[int]] = field(default_factory=dict)
    segment_blocks: dict[str, list[int]] = field(default_factory=dict)
    #: batch name -> test image ids predicted and post-processed by one job each (empty: one job per image)
    batches: dict[str, list[str]] = field(default_factory=dict)
    #: canonical (Z)YXC shape and dtype of every test image, from its header (empty for demo data)
    headers: dict[str, tuple[tuple[int, ...], Any]] = field(default_factory=dict)
    #: one line per image sent block by block, saying why (printed when the workflow is parsed)
    routing: list[str] = field(default_factory=list)
    #: what automatic planning chose and why (train.plan; written to model/plan.json)
    planning: PlanRecord | None = None

    @property
    def out(self) -> str:
        return f"{self.cfg['results']}/{self.cfg['experiment']}"

    @property
    def predict_only(self) -> bool:
        """A run that predicts with a given model (``model:``) and trains nothing."""
        return bool(self.cfg["model"])

    @property
    def model_file(self) -> str:
        """The model prediction jobs load: the given one, else the experiment's own best.pt."""
        return str(self.cfg["model"]) if self.predict_only else f"{self.out}/model/best.pt"

    @property
    def model_info(self) -> ModelInfo | None:
        return read_model_info(self.cfg["model"]) if self.predict_only else None

    @functools.cached_property
    def train_samples(self) -> dict[str, Sample]:
        return self.ds.training()

    @functools.cached_property
    def test_samples(self) -> dict[str, Sample]:
        """Test samples by id, built once: looked up per image (a property that rebuilt it made
        the plan quadratic in the number of test images)."""
        return self.ds.testing()

    def ids(self, split: str) -> list[str]:
        return [s.id for s in getattr(self.ds, split)]

    @property
    def scored_ids(self) -> list[str]:
        return [s.id for s in self.ds.test if s.label is not None]


def discover_dataset(cfg: Section) -> Dataset:
    """The samples of an experiment by split, as its task finds them (no training images needed
    to predict with a given model)."""
    return discover(cfg["data"], cfg["train"], cfg["seed"], get_task(cfg), need_train=not cfg["model"])


def make_plan(given: Mapping[str, Any], basedir: str | Path) -> Plan:
    """Config, samples, the planned keys (``train.plan: auto``, from the config as written) and
    header checks; a large image's block plan from its header."""
    raw = raw_config(given, basedir)
    cfg = config_with_model(raw)
    ds = discover_dataset(cfg)
    if cfg["model"] and (ds.train or ds.val):
        raise ConfigError("model", "predicts with a trained model, but the config has training images: to train "
                                   "starting from the model, set train.init instead")
    cfg = get_task(cfg).settled_config(ds)
    if cfg["model"]:  # the model's config was planned when it was trained
        planning = PlanRecord("model")
    else:
        cfg, planning = plan_experiment(merge(model_layer(raw), raw), cfg, ds, get_task(cfg))
    task = get_task(cfg)
    if cfg["predict"]["rescale"] and not task.measures_objects:
        raise ConfigError("predict.rescale", f"the {cfg['workflow']} workflow has no objects to measure; "
                                             "set it to false")
    plan = Plan(cfg, task, ds, planning=planning)
    if not cfg["data"]["demo"]:
        plan.headers = check_dataset(ds, cfg, task.label_kind, cache_path=PROBE_CACHE,
                                     check_label=task.check_label_header)
    if plan.predict_only:
        check_model_channels(plan)
    if task.tuning_file() and not ds.val:
        raise ConfigError(f"postprocess.{cfg['workflow']}", "asks for tuned thresholds, which need validation "
                                                            "images (data.val or train.val_fraction > 0)")
    if task.large_output_suffix is not None:
        _plan_large(plan)
    large = set(plan.large_ids)
    plan.batches = plan_batches([i for i in plan.ids("test") if i not in large], cfg["predict"]["batch_images"])
    return plan


def check_model_channels(plan: Plan) -> None:
    """Test images must have the channels the given model takes (every image has the same)."""
    info = plan.model_info
    for image_id, (shape, _) in plan.headers.items():
        if shape[-1] != info.in_channels:
            raise InputError(plan.test_samples[image_id].image, f"has {shape[-1]} channel(s) but the model "
                                                                 f"{info.path} takes {info.in_channels}")
        return


def _plan_large(plan: Plan) -> None:
    """Test images that go block by block, and their block jobs, from headers alone: every image
    whose whole-image path would not fit ``predict.memory_gb`` (``large_voxels`` and
    ``large_images`` add more). A chunk beyond the budget stops here, before any compute."""
    cfg, pcfg, task = plan.cfg, plan.cfg["predict"], plan.task
    budget = memory_bytes(pcfg)
    for image_id in plan.ids("test"):
        path = plan.test_samples[image_id].image
        header = plan.headers.get(image_id)
        # the grid the network predicts on (a super-resolution output is larger than its input)
        need = (whole_image_bytes(task.network_shape(header[0]), header[1], task.out_channels(),
                                  task.postprocess_bytes_per_voxel) if header else 0)
        if image_id in pcfg["whole_images"]:
            continue
        if need > budget:
            why = f"about {need / 2**30:.2f} GB whole, over predict.memory_gb = {pcfg['memory_gb']:g}"
        elif image_id in pcfg["large_images"]:
            why = "listed in predict.large_images"
        elif header and is_large(task.network_shape(header[0])[:-1], image_id, pcfg):
            why = f"at least predict.large_voxels = {pcfg['large_voxels']} voxels"
        elif not header and pcfg["large_voxels"] and is_large(task.network_shape(_shape(path, cfg))[:-1], image_id, pcfg):
            why = f"at least predict.large_voxels = {pcfg['large_voxels']} voxels"
        else:
            continue
        image = open_raw(path, cfg["ndim"], cfg["data"]["axes"], pcfg)
        shape = task.network_shape(image.shape)
        plan.large_ids.append(image_id)
        plan.routing.append(f"{image_id} {'x'.join(map(str, image.shape[:-1]))} goes block by block: {why}")
        if pcfg["split"] == 1:
            continue
        plan.split_ids.append(image_id)
        plan.blocks[image_id] = [b.index for b in plan_for_shape(shape, plan.task.out_channels(), pcfg)[1]]
        if plan.task.splits_segmentation:
            plan.segment_blocks[image_id] = plan.task.segment_block_ids(shape)


# --------------------------------------------------------------------------- batches

#: ``batch_images: auto``: one image per job up to this many test images (a job costs Snakemake
#: about 0.2 s of CPU, more than predicting a small image) ...
AUTO_SINGLE_UP_TO = 32
#: ... else about this many images per job ...
AUTO_BATCH_IMAGES = 100
#: ... in at least this many jobs, so that post-processing jobs still run side by side.
AUTO_MIN_BATCHES = 4


def batch_count(n_images: int, batch_images: int | str) -> int:
    """How many batches ``n_images`` go into: a power of two near n / batch_images, so the count
    (and with it every image's batch) stays put while the dataset grows, until it doubles."""
    if batch_images == "auto":
        if n_images <= AUTO_SINGLE_UP_TO:
            return n_images
        return max(AUTO_MIN_BATCHES, batch_count(n_images, AUTO_BATCH_IMAGES))
    per_job = int(batch_images)
    if per_job <= 1 or n_images <= per_job:
        return n_images if per_job <= 1 else 1
    return 2 ** max(0, round(math.log2(n_images / per_job)))


def batch_name(image_id: str, n_batches: int) -> str:
    """The batch of an image: a hash of its name, so it does not depend on the other images."""
    return f"b{zlib.crc32(image_id.encode()) % n_batches:05d}"


def plan_batches(ids: Sequence[str], batch_images: int | str) -> dict[str, list[str]]:
    """Batch name -> image ids, or {} when every image gets jobs of its own."""
    n = batch_count(len(ids), batch_images)
    if n >= len(ids):
        return {}
    batches: dict[str, list[str]] = {}
    for image_id in ids:
        batches.setdefault(batch_name(image_id, n), []).append(image_id)
    return dict(sorted(batches.items()))


def drop_incomplete_batches(plan: Plan, marker_of: Callable[[str], str], outputs_of: Callable[[str], list[str]]) -> int:
    """Remove the marker of every batch one of whose per-image outputs is missing, so Snakemake
    reruns that batch (it only sees the marker). One folder listing per output folder, not a
    file test per image. Returns the number of batches reopened."""
    listed: dict[str, set[str]] = {}
    reopened = 0
    for name, ids in plan.batches.items():
        marker = Path(marker_of(name))
        if not marker.exists():
            continue
        for path in (p for i in ids for p in outputs_of(i)):
            folder, file = os.path.split(path)
            if folder not in listed:
                listed[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if file not in listed[folder]:
                marker.unlink()
                reopened += 1
                break
    return reopened


# --------------------------------------------------------------------------- rule parameters


def train_params(cfg: Section) -> dict[str, str]:
    """What changes the trained weights, as canonical text (key order never reruns a job)."""
    return {"train": rerun_key(training_keys(cfg["train"])), "workflow": cfg["workflow"], "seed": str(cfg["seed"]),
            "targets": targets_key(cfg), "ndim": str(cfg["ndim"])}


def targets_key(cfg: Section) -> str:
    """The targets section as this workflow reads it: its shared keys and its own subsection
    (``targets.instance`` for instance, ...), not the other workflows' subsections, so a new
    workflow's defaults in the schema never retrain an existing experiment."""
    targets = cfg["targets"]
    return rerun_key({k: v for k, v in targets.items() if not isinstance(v, Mapping) or k == cfg["workflow"]})


def predict_params(cfg: Section) -> str:
    """What changes the predictions: the predict keys and the test images' object diameter."""
    return rerun_key({**{k: cfg["predict"][k] for k in PREDICT_KEYS},
                      "object_diameter": cfg["data"]["object_diameter"]})


def train_resources(cfg: Section) -> dict[str, Any]:
    """One GPU as the `gpu` resource (what profiles count and limit per job); several
    (train.gpus, data-parallel) as a SLURM gres, since the profiles cap `gpu` at one per job
    so that grouped predict jobs never ask for more (docs/cluster.md)."""
    gpus = int(cfg["train"]["gpus"])
    return {"gpu": 1} if gpus == 1 else {"gpu": 0, "gres": f"gpu:{gpus}"}


# --------------------------------------------------------------------------- patterns


def as_pattern(ids: Sequence[str], path_of: Callable[[str], str | None], fallback: Any) -> Any:
    """``{folder}/{image}{suffix}`` when every id's file follows it (folder layouts do), else
    ``fallback`` (an input function, e.g. for sample sheets): a pattern costs Snakemake nothing
    per job, a function a call and a signature inspection for each of thousands of jobs."""
    paths = [path_of(i) for i in ids]
    if not ids or any(p is None for p in paths):
        return fallback
    first = Path(paths[0])
    folder, suffix = first.parent, first.name[len(ids[0]):]
    if not first.name.startswith(ids[0]) or "{" in str(first) or "}" in str(first):
        return fallback
    if all(p == str(folder / f"{i}{suffix}") for i, p in zip(ids, paths)):
        return str(folder / f"{{image}}{suffix}")
    return fallback


def id_regex(ids: Sequence[str], exclude: bool = False, suffixes: Sequence[str] = ()) -> str:
    """A wildcard regex for exactly ``ids``, or for every image but them. Snakemake embeds it
    in each output pattern of the rule, so the exclusion looks ahead to the ``suffixes`` that
    follow the wildcard in those patterns and the end of the path."""
    alternatives = "|".join(re.escape(i) for i in ids)
    if not exclude:
        return rf"(?:{alternatives})"
    if not ids:
        return r"[^/]+"
    ends = "|".join(re.escape(s) for s in suffixes)
    return rf"(?!(?:{alternatives})(?:{ends})$)[^/]+"


def _shape(path: str, cfg: Section) -> tuple[int, ...]:
    return open_raw(path, cfg["ndim"], cfg["data"]["axes"], cfg["predict"]).shape


def final_outputs(plan: Plan) -> list[str]:
    """What `all` asks for: every test image's output (or its batch's marker), and the report with
    what it is made from."""
    return list(dict.fromkeys([*test_image_outputs(plan), *report_inputs(plan), report_outputs(plan)["html"]]))


def test_image_outputs(plan: Plan) -> list[str]:
    """Each test image's output, or for images predicted in batches, the batch's marker."""
    large = set(plan.large_ids)
    batched = {i for ids in plan.batches.values() for i in ids}
    outs = [output_path(plan, i, i in large) for i in plan.ids("test") if i not in batched]
    return outs + [batch_marker(plan, "postprocess", name) for name in plan.batches]


def report_inputs(plan: Plan) -> list[str]:
    """What the report is made from: the model, the tables, and the outputs of the test images
    without ground truth (of batched images: their batches' markers). Scored images' outputs reach
    it through metrics.csv (post-processing writes output and scores together), so the report job
    lists no per-image files for them: each input is a producer lookup when Snakemake plans
    (docs/architecture.md, "planning cost")."""
    out, task = plan.out, plan.task
    large, scored = set(plan.large_ids), set(plan.scored_ids)
    batched = {i for ids in plan.batches.values() for i in ids}
    outs = [plan.model_file] if plan.predict_only else \
        [f"{out}/model/best.pt", f"{out}/model/model.pt", f"{out}/model/training_curve.png",
         f"{out}/model/plan.json"]
    outs += [output_path(plan, i, i in large) for i in plan.ids("test") if i not in scored and i not in batched]
    outs += [batch_marker(plan, "postprocess", name) for name, ids in plan.batches.items()
             if any(i not in scored for i in ids)]
    if plan.scored_ids:
        outs += [f"{out}/metrics.csv", f"{out}/summary.csv"]
        outs += [f"{out}/{p}" for p in task.metrics_tables.values()]
    if plan.ids("test"):
        outs += [f"{out}/{p}" for p in task.outputs_tables.values()]
    return outs


def batch_marker(plan: Plan, stage: str, name: str) -> str:
    """The file a batch job leaves when every image of its batch is done."""
    return f"{plan.out}/batches/{stage}/{name}.done"


def report_outputs(plan: Plan) -> dict[str, str]:
    """The report's files: the page, its gallery PNGs (a folder) and the run's config."""
    return {"html": f"{plan.out}/report.html", "gallery": f"{plan.out}/report/gallery",
            "config": f"{plan.out}/config.yaml"}


def test_outputs(plan: Plan) -> dict[str, str]:
    """Test image id -> its post-processed output (large images: their large format)."""
    large = set(plan.large_ids)
    return {i: output_path(plan, i, i in large) for i in plan.ids("test")}


def output_path(plan: Plan, image_id: str, large: bool) -> str:
    """The post-processed output of one test image (large ones in the task's large format)."""
    task = plan.task
    suffix = task.large_output_suffix if large and task.large_output_suffix else task.output_suffix
    return f"{plan.out}/{task.output_dir}/{image_id}{suffix}"

