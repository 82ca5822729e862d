# Config validation, sample discovery and input functions shared by all rules.
import os
import sys
from pathlib import Path


def _slurm_group_in_one_process(argv):
    """On SLURM, run a group job's jobs in this one Snakemake process (docs/cluster.md).

    The executor plugin starts a group job's Snakemake with `--executor slurm-jobstep
    --jobs 1`, which runs every image of the group as its own `srun` + Snakemake process,
    one after another (snakemake-executor-plugin-slurm issue 469): torch imported and the
    model loaded once per image. Re-exec as the local executor with threads instead (the
    workflow profile is not read in --mode remote); --cores and the job's GPUs bound it.
    """
    if not os.environ.get("SLURM_JOB_ID") or "--target-jobs" not in argv or "--executor" not in argv:
        return
    if argv[argv.index("--executor") + 1] != "slurm-jobstep":
        return
    targets = argv[argv.index("--target-jobs") + 1 :]
    if len(next((targets[:i] for i, a in enumerate(targets) if a.startswith("-")), targets)) < 2:
        return  # a single job (train): keep the plugin's srun step
    drop = {"--executor": 2, "--jobs": 2, "--slurm-jobstep-pass-command-as-script": 1}
    args, i = [], 0
    while i < len(argv):
        if argv[i] in drop:
            i += drop[argv[i]]
        else:
            args.append(argv[i])
            i += 1
    args.append("--force-use-threads")
    gpus = os.environ.get("SLURM_GPUS_ON_NODE")
    if gpus and "--resources" not in args:
        args += ["--resources", f"gpu={gpus}"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *args])


_slurm_group_in_one_process(sys.argv[1:])

import yaml

from biapipe import stages
from biapipe.config import merge, validate_config
from biapipe.errors import BiapipeError
from biapipe.samples import discover, labels_are_files, with_classes
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
    CFG = with_classes(CFG, DS)  # classification: class names from the folders, same in every job
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
    sys.exit(f"biapipe: config section 'postprocess.{CFG['workflow']}' asks for tuned thresholds, which need validation images (data.val or train.val_fraction > 0)")


def _train_params():
    """Everything that changes the trained weights (threads and device placement do not)."""
    params = {k: v for k, v in CFG["train"].items() if k not in ("threads", "device", "num_workers")}
    params["augment"] = {k: v for k, v in params["augment"].items() if k != "debug_samples"}
    return params


def image_of(wildcards):
    return SAMPLES[wildcards.image].image


def label_of(wildcards):
    """The label file as an input; none for classification, whose label is a class name."""
    label = SAMPLES[wildcards.image].label
    return label if labels_are_files(CFG["workflow"]) else []


def label_value(wildcards):
    """What stages receive as the label: its file, or for classification the class name."""
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
    if CFG["workflow"] == "classification":  # rules/classification.smk
        outs += [f"{OUT}/classes.csv"] if TEST_IDS else []
        outs += [f"{OUT}/confusion_matrix.csv", f"{OUT}/confusion_matrix.png"] if SCORED_IDS else []
    return outs
