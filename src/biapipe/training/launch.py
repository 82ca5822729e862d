"""Start a training run: in this process, or data-parallel in ``train.gpus`` processes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.sources import PathPair
from .ddp import launch
from .loop import Trainable, train_model


def train(cfg: dict[str, Any], task: Trainable, train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair],
          out_dir: str | Path, log: logging.Logger | None = None,
          max_epochs_this_call: int | None = None) -> dict[str, Any]:
    """Train the task's network; the summary of :func:`biapipe.training.loop.train_model`.

    With ``train.gpus > 1`` the run is data-parallel (:mod:`.ddp`): that many processes each
    run the same loop on their slice of every batch, with the same result as one process.
    """
    log = log or logging.getLogger(__name__)
    if int(cfg["train"]["gpus"]) > 1:
        return launch(cfg, task, train_pairs, val_pairs, Path(out_dir), log, max_epochs_this_call)
    return train_model(cfg, task, train_pairs, val_pairs, out_dir, log, max_epochs_this_call)
