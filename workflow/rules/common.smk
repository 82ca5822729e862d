# Config validation, sample discovery and input functions shared by all rules.
import sys
from pathlib import Path

import yaml

from biapipe import stages
from biapipe.config import merge, validate_config
from biapipe.errors import BiapipeError
from biapipe.samples import discover
from biapipe.validate import check_dataset


def _load_config(given):
    """Use config/config.yaml only when no --configfile gave an experiment."""
    if "experiment" in given:
        return dict(given)
    default = Path("config/config.yaml")
    if not default.is_file():
        default = Path(workflow.basedir).parent / "config" / "config.yaml"
    return merge(yaml.safe_load(default.read_text()), dict(given))


try:
    CFG = validate_config(_load_config(config))
    DS = discover(CFG)
    if not CFG["data"]["demo"]:
        check_dataset(DS, CFG, cache_path=".snakemake/biapipe/probe-cache.json")
except BiapipeError as exc:
    sys.exit(f"biapipe: {exc}")
# Scripts read the validated config, defaults included, as snakemake.config.
config.clear()
config.update(CFG)

OUT = f"{CFG['results']}/{CFG['experiment']}"
SAMPLES = DS.by_id()
TRAIN_IDS = [s.id for s in DS.train]
VAL_IDS = [s.id for s in DS.val]
TEST_IDS = [s.id for s in DS.test]
SCORED_IDS = [s.id for s in DS.test if s.label is not None]


wildcard_constraints:
    image=r"[^/]+",


TASK = stages.get_task(CFG)
if TASK.tuning_file() and not VAL_IDS:
    sys.exit(f"biapipe: config key 'postprocess.{CFG['workflow']}.tuned': tuning needs validation images (data.val or train.val_fraction > 0)")


def _train_params():
    """Everything that changes the trained weights (threads and device placement do not)."""
    return {k: v for k, v in CFG["train"].items() if k not in ("threads", "device", "num_workers")}


def image_of(wildcards):
    return SAMPLES[wildcards.image].image


def label_of(wildcards):
    return SAMPLES[wildcards.image].label


def stats_input(wildcards):
    return [f"{OUT}/normalize/stats.json"] if CFG["normalize"]["scope"] == "dataset" else []


def tuning_input(wildcards):
    """The tuned-thresholds file, when post-processing is configured to use one."""
    path = TASK.tuning_file()
    return [path] if path else []


def side_outputs(output):
    return {name: output[name] for name in TASK.side_outputs}


def final_outputs():
    task = TASK
    outs = [f"{OUT}/model/best.pt", f"{OUT}/model/training_curve.png"]
    outs += [f"{OUT}/{task.output_dir}/{i}{task.output_suffix}" for i in TEST_IDS]
    if SCORED_IDS:
        outs += [f"{OUT}/metrics.csv", f"{OUT}/summary.csv"]
    return outs
