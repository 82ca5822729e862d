"""What carries a training run from one epoch to the next, and the resume file that keeps it.

Everything with state (weights, optimizer, scheduler, early stopping, history, RNGs) is
saved to ``checkpoint/resume.pt`` after every epoch, as tensors and plain types, so a job
killed by a cluster's time limit resumes and ends bit-identical (on CPU) to a run that was
never interrupted. A resume file is used only by the run it belongs to (its fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import training_keys
from ..core.imageio import atomic_path
from ..data.sources import PathPair
from ..models.info import file_stamp

def fingerprint(cfg: dict[str, Any], train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair]) -> str:
    """Identity of a training run: a resume file is only used by a run with the same fingerprint.

    File names rather than full paths, so moving the project folder does not discard
    a half-finished run.
    """
    payload = {
        "train": training_keys(cfg["train"]),
        "targets": cfg["targets"], "normalize": cfg["normalize"], "seed": cfg["seed"],
        "workflow": cfg["workflow"], "ndim": cfg["ndim"],
        "train_files": [[Path(i).name, Path(t).name] for i, t in train_pairs],
        "val_files": [[Path(i).name, Path(t).name] for i, t in val_pairs],
    }
    if cfg["train"].get("init"):  # the weights a run starts from: a changed file is another run
        payload["init_file"] = file_stamp(cfg["train"]["init"])
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- state


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, in standard (contiguous) layout."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


@dataclass
class TrainState:
    """Everything besides weights/optimizer/scheduler that an epoch hands to the next."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    es_reference: float = math.inf
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, loss: float, model: nn.Module, patience: int, min_delta: float) -> bool:
        """Record the monitored loss of the epoch just run; True when it is the best so far.

        The best checkpoint follows any improvement; early stopping only counts an
        improvement larger than ``min_delta`` (as a plateau of tiny gains is a plateau).
        """
        is_best = loss < self.best_loss
        if is_best:
            self.best_loss, self.best_epoch, self.best_state = loss, self.epoch, cpu_state(model)
        if loss < self.es_reference - min_delta:
            self.es_reference, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= patience
        return is_best

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history, "best_loss": self.best_loss,
                "best_epoch": self.best_epoch, "best_state": self.best_state,
                "es_reference": self.es_reference, "bad_epochs": self.bad_epochs, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


def rng_states() -> dict[str, Any]:
    """All global RNG states, as tensors and plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def save_resume(path: Path, run: Any, fp: str) -> None:
    payload = {
        "fingerprint": fp, "model": cpu_state(run.model), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "state": run.state.to_dict(), "rng": rng_states(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def try_resume(path: Path, run: Any, fp: str, log: logging.Logger) -> bool:
    """Restore ``run`` from ``path`` when it belongs to this very run; otherwise start fresh."""
    if not path.exists():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt resume file only costs the epochs it held
        log.warning("ignoring unreadable resume file %s (%s: %s); starting fresh", path, type(exc).__name__, exc)
        return False
    if payload.get("fingerprint") != fp:
        log.info("resume file %s belongs to a different config or data; starting fresh", path)
        return False
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(payload["scheduler"])
    run.state = TrainState.from_dict(payload["state"])
    if run.scaler is not None and payload.get("scaler"):
        run.scaler.load_state_dict(payload["scaler"])
    set_rng_states(payload["rng"])
    log.info("resuming from %s after epoch %d", path, run.state.epoch)
    return True
