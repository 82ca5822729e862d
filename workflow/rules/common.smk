# Config validation, sample discovery and input functions shared by all rules.
import os
import re
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
    FLOAT_IDS = [] if CFG["data"]["demo"] else check_dataset(DS, CFG, cache_path=".snakemake/biapipe/probe-cache.json")
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


def _train_resources():
    """One GPU as the `gpu` resource (what profiles count and limit per job); several
    (train.gpus, data-parallel) as a SLURM gres, since the profiles cap `gpu` at one per job
    so that grouped predict jobs never ask for more (docs/cluster.md)."""
    gpus = int(CFG["train"].get("gpus", 1))
    return {"gpu": 1} if gpus == 1 else {"gpu": 0, "gres": f"gpu:{gpus}"}


def _train_params():
    """Everything that changes the trained weights (threads and device placement do not)."""
    params = {k: v for k, v in CFG["train"].items() if k not in ("threads", "device", "num_workers", "gpus")}
    params["augment"] = {k: v for k, v in params["augment"].items() if k != "debug_samples"}
    return params


# Planning cost grows with every input item and input function of every per-image job
# (Snakemake searches a producer for each input file and inspects each function's signature),
# so per-image rules list only the files whose change must rerun them, as patterns where the
# folder layout allows (benchmarks/bench_dag.py measures this).


def image_of(wildcards):
    return SAMPLES[wildcards.image].image


def label_of(wildcards):
    """The label file as an input; none for classification, whose label is a class name."""
    label = SAMPLES[wildcards.image].label
    return label if label is not None and labels_are_files(CFG["workflow"]) else []


def label_value(wildcards):
    """What stages receive as the label: its file, or for classification the class name."""
    return SAMPLES[wildcards.image].label


def _as_pattern(ids, path_of, fallback):
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


TEST_IMAGE = _as_pattern(TEST_IDS, lambda i: SAMPLES[i].image, image_of)
TEST_LABEL = _as_pattern(TEST_IDS, lambda i: SAMPLES[i].label, label_of) if labels_are_files(CFG["workflow"]) else []


# A class name is no file, so for classification it reruns evaluation as a param; label files
# are inputs already (and a function param per job would only slow planning).
LABEL_PARAM = {} if labels_are_files(CFG["workflow"]) else {"label": label_value}


# Test images are normalized inside predict, after training; float ones (the only ones that can
# hold NaN/Inf) get their pixels scanned by one job that training waits for, so bad input
# still stops the run before compute is spent (rules/data.smk).
_FLOAT = set(FLOAT_IDS)
FLOAT_TEST_IDS = [i for i in TEST_IDS if i in _FLOAT]
PIXEL_CHECK = [f"{OUT}/checks/test_pixels.ok"] if FLOAT_TEST_IDS else []
STATS_INPUT = [f"{OUT}/normalize/stats.json"] if CFG["normalize"]["scope"] == "dataset" else []
# What changes predictions (threads, device and the large-image memory plan do not).
PREDICT_PARAMS = {k: CFG["predict"][k] for k in ("mode", "tile_size", "overlap", "blend", "precision", "trim", "tta")}

# Large images (predict.large_voxels / large_images) are predicted and post-processed block
# by block (biapipe.large); with predict.split they are also split across jobs (rules/large.smk).
# Block plans come from the image headers, so they are known when the DAG is built.
try:  # headers only; a chunk beyond predict.memory_gb stops here, before any compute
    LARGE_IDS = [i for i in TEST_IDS if stages.is_large_image(SAMPLES[i].image, i, CFG)] if TASK.name != "classification" else []
    for i in LARGE_IDS:
        stages.check_large_input(SAMPLES[i].image, CFG)
    SPLIT_IDS = [i for i in LARGE_IDS if CFG["predict"]["split"] != 1]
    BLOCKS = {i: stages.block_ids(SAMPLES[i].image, CFG) for i in SPLIT_IDS}
    # instance segmentation of split images is split too: one watershed job per block, then the seam merge
    SEGMENT_BLOCKS = {i: stages.segment_block_ids(SAMPLES[i].image, CFG) for i in SPLIT_IDS} if TASK.name == "instance" else {}
except BiapipeError as exc:
    sys.exit(f"biapipe: {exc}")


def _id_regex(ids, exclude=False, suffixes=()):
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


_LARGE = set(LARGE_IDS)
NOT_SPLIT = _id_regex(SPLIT_IDS, True, [".zarr"])  # predictions/{image}.zarr
# postprocess outputs: {output_dir}/{image}{suffix}, metrics/{image}.csv, side tables *.csv
NOT_LARGE = _id_regex(LARGE_IDS, True, sorted({TASK.output_suffix, ".csv"}))
# Large segmentation outputs are OME-Zarr (NGFF viewers open them lazily); points stay CSV.
LARGE_SUFFIX = ".ome.zarr" if TASK.output_suffix == ".tif" else TASK.output_suffix


def output_path(image_id):
    """The post-processed output of one test image (large ones are OME-Zarr)."""
    suffix = LARGE_SUFFIX if image_id in _LARGE else TASK.output_suffix
    return f"{OUT}/{TASK.output_dir}/{image_id}{suffix}"


def segmented_of(wildcards):
    """Split instance images: the raw-id store and the block records the seam merge reads."""
    ids = SEGMENT_BLOCKS.get(wildcards.image)
    if ids is None:
        return []
    return [f"{OUT}/large/{wildcards.image}/raw_labels.zarr"] + [
        f"{OUT}/large/{wildcards.image}/segment/{b}.npz" for b in ids]


def block_markers(wildcards):
    """Split large images: one marker per prediction block job (rules/large.smk)."""
    ids = BLOCKS.get(wildcards.image, [])
    return [f"{OUT}/large/{wildcards.image}/predict/{b}.done" for b in ids]
TUNING_INPUT = [TASK.tuning_file()] if TASK.tuning_file() else []
# Post-processing reads the raw image only for side outputs (per-object mean intensities).
IMAGE_FOR_POSTPROCESS = image_of if TASK.side_outputs else []


def side_outputs(output):
    return {name: output[name] for name in TASK.side_outputs}


def segmented_args(input):
    """(raw-id store, block records) from a postprocess_large job's inputs, or None."""
    files = list(input.segmented)
    return (files[0], files[1:]) if files else None


def postprocess_args(input, output, wildcards):
    """Arguments of stages.postprocess for one image: prediction, outputs, raw image, label."""
    return (input.prediction, output.main, CFG, image_of(wildcards), side_outputs(output),
            label_value(wildcards), output.metrics, wildcards.image)


def final_outputs():
    task = TASK
    outs = [f"{OUT}/model/best.pt", f"{OUT}/model/training_curve.png"]
    outs += [output_path(i) for i in TEST_IDS]
    if SCORED_IDS:
        outs += [f"{OUT}/metrics.csv", f"{OUT}/summary.csv"]
    if CFG["workflow"] == "classification":  # rules/classification.smk
        outs += [f"{OUT}/classes.csv"] if TEST_IDS else []
        outs += [f"{OUT}/confusion_matrix.csv", f"{OUT}/confusion_matrix.png"] if SCORED_IDS else []
    return outs
