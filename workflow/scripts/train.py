"""Thin: hand the train rule's files to biapipe.stages.train."""

from pathlib import Path

from biapipe import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages.train(
    sm.input.train_images,
    sm.input.train_targets,
    sm.input.val_images,
    sm.input.val_targets,
    Path(sm.output.best).parent,
    sm.config,
    log_path=sm.log[0],
    threads=sm.threads,
)
