# Config, samples and input functions shared by all rules; the logic lives in
# biapipe.workflow.smk (unit-tested), this file only names what the rules use.
import sys

from biapipe.workflow.slurm import reexec_group_job

reexec_group_job()  # SLURM group jobs: every image in this one process (docs/cluster.md)

from snakemake.jobs import GroupJob
from snakemake.logging import logger

from biapipe.core.errors import BiapipeError
from biapipe.workflow import smk, stages


# Snakemake 9 drops the message of a failed group job (GroupJob.log_error ignores it), so a
# group that SLURM refused showed "message: None"; print the executor's message (sbatch's own
# reason, e.g. "More processors requested than permitted") before Snakemake's summary.
def _log_group_error(job, msg=None, aux_logs=None, **kwargs):
    if msg:
        logger.error(f"Error in group {job.groupid}: {msg}")
    _LOG_GROUP_ERROR(job, msg, aux_logs, **kwargs)


if not hasattr(GroupJob, "_biapipe_log_error"):
    GroupJob._biapipe_log_error = _LOG_GROUP_ERROR = GroupJob.log_error
    GroupJob.log_error = _log_group_error
_LOG_GROUP_ERROR = GroupJob._biapipe_log_error

try:
    PLAN = smk.make_plan(config, workflow.basedir)
except BiapipeError as exc:
    sys.exit(f"biapipe: {exc}")
CFG, TASK = PLAN.cfg, PLAN.task
# Scripts read the validated config, defaults included, as snakemake.config.
config.clear()
config.update(CFG)

OUT = PLAN.out
# Training/validation and test images are named apart: a test image may share a training image's name.
TRAIN_SAMPLES, TEST_SAMPLES = PLAN.train_samples, PLAN.test_samples
TRAIN_IDS, VAL_IDS, TEST_IDS = PLAN.ids("train"), PLAN.ids("val"), PLAN.ids("test")
SCORED_IDS = PLAN.scored_ids
LARGE_IDS, SPLIT_IDS = PLAN.large_ids, PLAN.split_ids
AXES = CFG["data"]["axes"]


wildcard_constraints:
    image=r"[^/]+",


def _label_file(sample):
    """A label as an input file; none when labels are values (class names)."""
    return sample.label if sample.label is not None and TASK.labels_are_files else []


def train_image_of(wildcards):
    return TRAIN_SAMPLES[wildcards.image].image


def train_label_of(wildcards):
    return _label_file(TRAIN_SAMPLES[wildcards.image])


def train_label_value(wildcards):
    """What stages receive as the label: its file, or the class name."""
    return TRAIN_SAMPLES[wildcards.image].label


def image_of(wildcards):
    return TEST_SAMPLES[wildcards.image].image


def label_of(wildcards):
    return _label_file(TEST_SAMPLES[wildcards.image])


def label_value(wildcards):
    return TEST_SAMPLES[wildcards.image].label


TEST_IMAGE = smk.as_pattern(TEST_IDS, lambda i: TEST_SAMPLES[i].image, image_of)
TEST_LABEL = smk.as_pattern(TEST_IDS, lambda i: TEST_SAMPLES[i].label, label_of) if TASK.labels_are_files else []
# A class name is no file, so it reruns scoring as a param; label files are inputs already.
LABEL_PARAM = {} if TASK.labels_are_files else {"label": label_value}
TRAIN_LABEL_PARAM = {} if TASK.labels_are_files else {"label": train_label_value}

# Test images and labels are read by one job that training waits for, so bad test data stops
# the run before compute is spent (rules/data.smk).
TEST_CHECK = [f"{OUT}/checks/test_data.ok"] if TEST_IDS else []
STATS_INPUT = [f"{OUT}/normalize/stats.json"] if CFG["normalize"]["scope"] == "dataset" else []
NORMALIZE_KEY = smk.rerun_key(CFG["normalize"])
PREDICT_KEY = smk.predict_params(CFG)
TUNING_INPUT = [TASK.tuning_file()] if TASK.tuning_file() else []
# Post-processing reads the raw image only for side outputs (per-object mean intensities).
IMAGE_FOR_POSTPROCESS = image_of if TASK.side_outputs else []
SIDE_OUTPUTS = {name: f"{OUT}/{path}" for name, path in TASK.side_outputs.items()}

NOT_SPLIT = smk.id_regex(SPLIT_IDS, True, [".zarr"])  # predictions/{image}.zarr
# postprocess outputs: {output_dir}/{image}{suffix}, metrics/{image}.csv, side tables *.csv
NOT_LARGE = smk.id_regex(LARGE_IDS, True, sorted({TASK.output_suffix, ".csv"}))


def segmented_of(wildcards):
    """Split images segmented by block jobs: the id store and the block records the merge reads."""
    ids = PLAN.segment_blocks.get(wildcards.image)
    if ids is None:
        return []
    return [f"{OUT}/large/{wildcards.image}/segments.zarr"] + [
        f"{OUT}/large/{wildcards.image}/segment/{b}.npz" for b in ids]


def segmented_arg(input):
    """(id store, block records) from a postprocess_large job's inputs, or None."""
    files = list(input.get("segmented", []))
    return (files[0], files[1:]) if files else None


def block_markers(wildcards):
    """Split large images: one marker per prediction block job (rules/large.smk)."""
    return [f"{OUT}/large/{wildcards.image}/predict/{b}.done" for b in PLAN.blocks.get(wildcards.image, [])]


def side_outputs(output):
    return {name: output[name] for name in SIDE_OUTPUTS}


def stats_of(input):
    """The dataset normalization statistics among a job's inputs, when normalize.scope is dataset."""
    return input.stats[0] if input.stats else None


# Class names are no files: a changed test class reruns the check as a param.
LABEL_VALUES = {} if TASK.labels_are_files else {"labels": [TEST_SAMPLES[i].label for i in TEST_IDS]}


# The keyword arguments of the stages (rules keep their run blocks to one call).
def check_test_args(output):
    return dict(images=[TEST_SAMPLES[i].image for i in TEST_IDS], labels=[TEST_SAMPLES[i].label for i in TEST_IDS],
                out=output[0], task=TASK, axes=AXES, memory_gb=CFG["predict"]["memory_gb"],
                large=[i in LARGE_IDS for i in TEST_IDS])



def prepare_args(input, output, wildcards):
    return dict(image=input.image, label=train_label_value(wildcards), image_out=output.image,
                targets_out=output.targets, task=TASK, axes=AXES, normalize=CFG["normalize"], stats=stats_of(input))


def predict_args(input, output, wildcards, threads):
    return dict(model=input.model, image=input.image, out=output[0], task=TASK, axes=AXES,
                normalize=CFG["normalize"], predict=CFG["predict"], threads=threads, stats=stats_of(input),
                large=wildcards.image in LARGE_IDS)


def postprocess_args(input, output, wildcards):
    return dict(prediction=input.prediction, out=output.main, task=TASK, axes=AXES, image=image_of(wildcards),
                side=side_outputs(output), label=label_value(wildcards), metrics=output.metrics,
                image_id=wildcards.image, segmented=segmented_arg(input))


def large_output(path):
    """A large image's output: a folder (Zarr) or a file (a points table)."""
    return directory(path) if path.endswith(".zarr") else path
