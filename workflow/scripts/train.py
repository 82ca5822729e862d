"""Thin: training runs as its own process; hand the rule's files to biapipe's train stage."""

from pathlib import Path

from biapipe.core.config import Section
from biapipe.tasks import get_task
from biapipe.workflow import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
cfg = Section(sm.config)
stages.train(manifest=sm.input.manifest, model_dir=str(Path(sm.output.best).parent), cfg=cfg, task=get_task(cfg),
             threads=sm.threads, log=sm.log[0], echo=True)  # epoch lines with ETA on the console too
