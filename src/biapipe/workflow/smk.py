"""What the Snakefile needs at parse time: the validated config, the samples, and the
patterns, regexes, parameters and resources of its rules. Plain Python, unit-tested.

Planning cost grows with every input item and input function of every per-image job
(Snakemake searches a producer for each input file and inspects each function's
signature), so per-image rules list only the files whose change must rerun them, as
patterns where the folder layout allows (docs/architecture.md, "planning cost").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.config import Section, merge, rerun_key, validate_config
from ..core.errors import ConfigError
from ..data.samples import Dataset, Sample, discover
from ..data.validate import check_dataset
from ..large.plan import is_large, plan_for_shape
from ..large.volumes import open_raw
from ..tasks import Task, get_task

#: Where parse-time header checks are cached (by file size and mtime).
PROBE_CACHE = ".snakemake/biapipe/probe-cache.json"

#: train.* keys that change speed or side outputs, not the trained weights.
TRAIN_RUNTIME_KEYS = ("threads", "device", "num_workers", "gpus")
#: predict.* keys that change the predictions (threads, device and the large-image plan do not).
PREDICT_KEYS = ("mode", "tile_size", "overlap", "blend", "precision", "trim", "tta")


def load_config(given: Mapping[str, Any], basedir: str | Path) -> Section:
    """The validated experiment config: config/config.yaml unless --configfile gave an experiment."""
    if "experiment" in given:
        return validate_config(dict(given))
    default = Path("config/config.yaml")
    if not default.is_file():
        default = Path(basedir).parent / "config" / "config.yaml"
    return validate_config(merge(yaml.safe_load(default.read_text()), dict(given)))


@dataclass
class Plan:
    """Everything the rules are built from, worked out once per parse."""

    cfg: Section
    task: Task
    ds: Dataset
    float_ids: list[str] = field(default_factory=list)
    large_ids: list[str] = field(default_factory=list)
    split_ids: list[str] = field(default_factory=list)
    #: split large images: prediction block ids, and (segmentation split too) segmentation block ids
    blocks: dict[str, list[int]] = field(default_factory=dict)
    segment_blocks: dict[str, list[int]] = field(default_factory=dict)

    @property
    def out(self) -> str:
        return f"{self.cfg['results']}/{self.cfg['experiment']}"

    @property
    def samples(self) -> dict[str, Sample]:
        return self.ds.by_id()

    def ids(self, split: str) -> list[str]:
        return [s.id for s in getattr(self.ds, split)]

    @property
    def scored_ids(self) -> list[str]:
        return [s.id for s in self.ds.test if s.label is not None]

    @property
    def float_test_ids(self) -> list[str]:
        floats = set(self.float_ids)
        return [i for i in self.ids("test") if i in floats]


def discover_dataset(cfg: Section) -> Dataset:
    """The samples of an experiment by split, as its task finds them."""
    return discover(cfg["data"], cfg["train"], cfg["seed"], get_task(cfg))


def make_plan(given: Mapping[str, Any], basedir: str | Path) -> Plan:
    """Config, samples and header checks; a large image's block plan from its header."""
    cfg = load_config(given, basedir)
    ds = discover_dataset(cfg)
    cfg = get_task(cfg).settled_config(ds)
    task = get_task(cfg)
    floats = [] if cfg["data"]["demo"] else check_dataset(ds, cfg, task.label_kind, cache_path=PROBE_CACHE,
                                                          check_label=task.check_label_header)
    plan = Plan(cfg, task, ds, floats)
    if task.tuning_file() and not ds.val:
        raise ConfigError(f"postprocess.{cfg['workflow']}", "asks for tuned thresholds, which need validation "
                                                            "images (data.val or train.val_fraction > 0)")
    if task.large_output_suffix is not None:
        _plan_large(plan)
    return plan


def _plan_large(plan: Plan) -> None:
    """Large test images (predict.large_voxels / large_images): which, and their block jobs.
    Headers only; a chunk beyond predict.memory_gb stops here, before any compute."""
    cfg, pcfg = plan.cfg, plan.cfg["predict"]
    if not pcfg["large_voxels"] and not pcfg["large_images"]:
        return  # no header read: this runs for every test image at every parse
    samples = plan.samples
    for image_id in plan.ids("test"):
        path = samples[image_id].image
        if image_id not in pcfg["large_images"] and not pcfg["large_voxels"]:
            continue
        image = open_raw(path, cfg["ndim"], cfg["data"]["axes"], pcfg)
        shape = plan.task.network_shape(image.shape)  # the grid the network predicts on
        if not is_large(shape[:-1], image_id, pcfg):
            continue
        plan.large_ids.append(image_id)
        if pcfg["split"] == 1:
            continue
        plan.split_ids.append(image_id)
        plan.blocks[image_id] = [b.index for b in plan_for_shape(shape, plan.task.out_channels(), pcfg)[1]]
        if plan.task.splits_segmentation:
            plan.segment_blocks[image_id] = plan.task.segment_block_ids(shape)


# --------------------------------------------------------------------------- rule parameters


def train_params(cfg: Section) -> dict[str, str]:
    """What changes the trained weights, as canonical text (key order never reruns a job)."""
    train = {k: v for k, v in cfg["train"].items() if k not in TRAIN_RUNTIME_KEYS}
    train["augment"] = {k: v for k, v in train["augment"].items() if k != "debug_samples"}
    return {"train": rerun_key(train), "workflow": cfg["workflow"], "seed": str(cfg["seed"]),
            "targets": rerun_key(cfg["targets"]), "ndim": str(cfg["ndim"])}


def predict_params(cfg: Section) -> str:
    return rerun_key({k: cfg["predict"][k] for k in PREDICT_KEYS})


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


def final_outputs(plan: Plan) -> list[str]:
    """What `all` asks for: the model, every test image's output, the tables."""
    out, task = plan.out, plan.task
    large = set(plan.large_ids)
    outs = [f"{out}/model/best.pt", f"{out}/model/training_curve.png"]
    outs += [output_path(plan, i, i in large) for i in plan.ids("test")]
    if plan.scored_ids:
        outs += [f"{out}/metrics.csv", f"{out}/summary.csv"]
        outs += [f"{out}/{p}" for p in task.metrics_tables.values()]
    if plan.ids("test"):
        outs += [f"{out}/{p}" for p in task.outputs_tables.values()]
    return outs


def output_path(plan: Plan, image_id: str, large: bool) -> str:
    """The post-processed output of one test image (large ones in the task's large format)."""
    task = plan.task
    suffix = task.large_output_suffix if large and task.large_output_suffix else task.output_suffix
    return f"{plan.out}/{task.output_dir}/{image_id}{suffix}"

