"""Thin: training runs as its own process; hand the rule's files to biapipe's train stage."""

import sys
from pathlib import Path

from biapipe.core.config import Section
from biapipe.core.errors import BiapipeError
from biapipe.tasks import get_task
from biapipe.workflow import stages
from biapipe.workflow.orphan import stop_with_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
stop_with_snakemake(sm.log[0])
cfg = Section(sm.config)
try:
    stages.train(manifest=sm.input.manifest, model_dir=str(Path(sm.output.best).parent), cfg=cfg,
                 task=get_task(cfg), threads=sm.threads, stats=sm.input.stats[0] if sm.input.stats else None,
                 log=sm.log[0], echo=True)  # epoch lines with ETA on the console
except BiapipeError as exc:
    sys.exit(f"biapipe: {exc}")
