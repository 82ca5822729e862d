"""Thin: hand the training set listed in the train rule's manifest to biapipe.stages.train."""

from pathlib import Path

from biapipe import imageio, stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
files = imageio.read_json(sm.input.manifest)
stages.train(
    files["train_images"],
    files["train_targets"],
    files["val_images"],
    files["val_targets"],
    Path(sm.output.best).parent,
    sm.config,
    log_path=sm.log[0],
    threads=sm.threads,
)
