# Config, samples and input functions shared by all rules; the logic lives in
# biapipe.workflow.smk (unit-tested), this file only names what the rules use.
import sys

from biapipe.workflow.slurm import reexec_group_job

reexec_group_job()  # SLURM group jobs: every image in this one process (docs/cluster.md)

from biapipe.core.errors import BiapipeError
from biapipe.workflow import smk, stages

try:
    PLAN = smk.make_plan(config, workflow.basedir)
except BiapipeError as exc:
    sys.exit(f"biapipe: {exc}")
CFG, TASK = PLAN.cfg, PLAN.task
# Scripts read the validated config, defaults included, as snakemake.config.
config.clear()
config.update(CFG)

OUT = PLAN.out
SAMPLES = PLAN.samples
TRAIN_IDS, VAL_IDS, TEST_IDS = PLAN.ids("train"), PLAN.ids("val"), PLAN.ids("test")
SCORED_IDS = PLAN.scored_ids
LARGE_IDS, SPLIT_IDS = PLAN.large_ids, PLAN.split_ids
AXES = CFG["data"]["axes"]
REPORT = smk.report_outputs(PLAN)


wildcard_constraints:
    image=r"[^/]+",


def image_of(wildcards):
    return SAMPLES[wildcards.image].image


def label_of(wildcards):
    """The label file as an input; none when labels are values (class names)."""
    label = SAMPLES[wildcards.image].label
    return label if label is not None and TASK.labels_are_files else []


def label_value(wildcards):
    """What stages receive as the label: its file, or the class name."""
    return SAMPLES[wildcards.image].label


TEST_IMAGE = smk.as_pattern(TEST_IDS, lambda i: SAMPLES[i].image, image_of)
TEST_LABEL = smk.as_pattern(TEST_IDS, lambda i: SAMPLES[i].label, label_of) if TASK.labels_are_files else []
# A class name is no file, so it reruns scoring as a param; label files are inputs already.
LABEL_PARAM = {} if TASK.labels_are_files else {"label": label_value}

# Float test images (the only ones that can hold NaN/Inf) are scanned by one job that training
# waits for, so bad input stops the run before compute is spent (rules/data.smk).
FLOAT_TEST_IDS = PLAN.float_test_ids
PIXEL_CHECK = [f"{OUT}/checks/test_pixels.ok"] if FLOAT_TEST_IDS else []
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


# The keyword arguments of the per-image stages (rules keep their run blocks to one call).
def prepare_args(input, output, wildcards):
    return dict(image=input.image, label=label_value(wildcards), image_out=output.image,
                targets_out=output.targets, task=TASK, axes=AXES, normalize=CFG["normalize"], stats=stats_of(input))


def predict_args(input, output, wildcards, threads):
    return dict(model=input.model, image=input.image, out=output[0], task=TASK, axes=AXES,
                normalize=CFG["normalize"], predict=CFG["predict"], threads=threads, stats=stats_of(input),
                large=wildcards.image in LARGE_IDS, echo=wildcards.image in LARGE_IDS)


def postprocess_args(input, output, wildcards):
    return dict(prediction=input.prediction, out=output.main, task=TASK, axes=AXES, image=image_of(wildcards),
                side=side_outputs(output), label=label_value(wildcards), metrics=output.metrics,
                image_id=wildcards.image, segmented=segmented_arg(input))


def report_args(output):
    return dict(task=TASK, results=OUT, samples=PLAN.ds.test, outputs=smk.test_outputs(PLAN), html_out=output.html,
                gallery=output.gallery, config_out=output.config)


def large_output(path):
    """A large image's output: a folder (Zarr) or a file (a points table)."""
    return directory(path) if path.endswith(".zarr") else path
