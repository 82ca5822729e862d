# Config, samples and input functions shared by all rules; the logic lives in
# biapipe.workflow (smk: the plan; wiring: input functions and stage arguments), unit-tested.
import runpy
import sys

from biapipe.workflow.slurm import reexec_group_job

reexec_group_job()  # SLURM group jobs: every image in this one process (docs/cluster.md)

from biapipe.core.errors import BiapipeError
from biapipe.workflow import smk, stages
from biapipe.workflow.wiring import Wiring

runpy.run_path(f"{workflow.basedir}/snakemake_fixes.py")["apply"]()  # group errors, scheduler wake-ups, one-line input errors

try:
    PLAN = smk.make_plan(config, workflow.basedir)
except BiapipeError as exc:
    sys.exit(f"biapipe: {exc}")
CFG, TASK, OUT, W = PLAN.cfg, PLAN.task, PLAN.out, Wiring(PLAN)
for line in PLAN.routing:  # which test images go block by block, and why
    print(f"biapipe: {line}", file=sys.stderr)
# Scripts read the validated config, defaults included, as snakemake.config.
config.clear()
config.update(CFG)

TRAIN_IDS, VAL_IDS, TEST_IDS = PLAN.ids("train"), PLAN.ids("val"), PLAN.ids("test")
SCORED_IDS, LARGE_IDS, SPLIT_IDS, BATCHES = PLAN.scored_ids, PLAN.large_ids, PLAN.split_ids, PLAN.batches
AXES = CFG["data"]["axes"]
REPORT = smk.report_outputs(PLAN)


wildcard_constraints:
    image=r"[^/]+",


TEST_IMAGE = smk.as_pattern(TEST_IDS, lambda i: W.test_samples[i].image, W.image_of)
TEST_LABEL = smk.as_pattern(TEST_IDS, lambda i: W.test_samples[i].label, W.label_of) if TASK.labels_are_files else []
# Dataset statistics from the training images, unless fixed in the config (a model brings its own).
STATS_INPUT = [f"{OUT}/normalize/stats.json"] if CFG["normalize"]["scope"] == "dataset" and not CFG["normalize"]["stats"] else []
# The model prediction loads: the experiment's best.pt, or the given one (`model`), whose files'
# sizes and times are a parameter too (a model copied over with an older time still reruns).
MODEL = PLAN.model_file
MODEL_STAMP = PLAN.model_info.stamp if PLAN.predict_only else ""
NORMALIZE_KEY = smk.rerun_key(CFG["normalize"])
PREDICT_KEY = smk.predict_params(CFG)
TUNING_INPUT = [TASK.tuning_file()] if TASK.tuning_file() else []
# Post-processing reads the raw image only for side outputs (per-object mean intensities).
IMAGE_FOR_POSTPROCESS = W.image_of if TASK.side_outputs else []

# Many test images: jobs of a batch of images each (rules/batches.smk, predict.batch_images); the
# per-image rules then serve only the large images (block by block, never batched).
if BATCHES:
    W.reopen_incomplete_batches()
    NOT_SPLIT = smk.id_regex([i for i in LARGE_IDS if i not in SPLIT_IDS]) if len(LARGE_IDS) > len(SPLIT_IDS) else "(?!)"
    NOT_LARGE = "(?!)"
else:
    NOT_SPLIT = smk.id_regex(SPLIT_IDS, True, [".zarr"])  # predictions/{image}.zarr
    # postprocess outputs: {output_dir}/{image}{suffix}, metrics/{image}.csv, side tables *.csv
    NOT_LARGE = smk.id_regex(LARGE_IDS, True, sorted({TASK.output_suffix, ".csv"}))


def large_output(path):
    """A large image's output: a folder (Zarr) or a file (a points table)."""
    return directory(path) if path.endswith(".zarr") else path
