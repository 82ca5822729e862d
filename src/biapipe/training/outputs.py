"""What a finished training run leaves: checkpoints, the history table and its curves."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.errors import ConfigError
from ..core.imageio import atomic_path, write_csv
from ..models.checkpoint import checkpoint_dict, save_checkpoint
from .scoring import SCORE_MONITORS
from .state import cpu_state

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]


def history_columns(history: list[dict[str, float]]) -> list[str]:
    """The fixed columns, then any validation score column (``val_iou``/``val_f1``)."""
    extra = [k for k in (history[0] if history else {}) if k not in HISTORY_COLUMNS]
    return HISTORY_COLUMNS + extra


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    write_csv(path, pd.DataFrame(history, columns=history_columns(history)))


def plot_history(path: Path, history: list[dict[str, float]], best_epoch: int, monitor: str) -> None:
    """Loss curves as PNG; object-oriented matplotlib only, as pyplot's global state is not thread-safe."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = pd.DataFrame(history, columns=history_columns(history))
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(df["epoch"], df["train_loss"], marker=".", label="train")
    if df["val_loss"].notna().any():
        ax.plot(df["epoch"], df["val_loss"], marker=".", label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best ({monitor}, epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    scores = [c for c in df.columns if c not in HISTORY_COLUMNS]
    if scores:
        twin = ax.twinx()
        for column in scores:
            twin.plot(df["epoch"], df[column], color="tab:green", marker=".", label=column)
        twin.set_ylabel("validation score")
        twin.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def monitored_row(history: list[dict[str, float]], epoch: int, monitor: str) -> tuple[float, float]:
    """(loss, monitored value) of ``epoch`` from the history (its last row if epoch is 0)."""
    row = next((h for h in history if h["epoch"] == epoch), history[-1])
    loss = row["train_loss" if monitor == "train_loss" else "val_loss"]
    value = row[f"val_{monitor}"] if monitor in SCORE_MONITORS else loss
    return float(loss), float(value)


def current_checkpoint(run: Any, spec: dict[str, Any], workflow: str, monitor: str,
                       config: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of the weights after the epoch just run (last.pt, a kept epoch)."""
    loss, value = monitored_row(run.state.history, run.state.epoch, monitor)
    return checkpoint_dict(spec, cpu_state(run.model), run.state.epoch, loss, workflow, monitor, value, config, data)


def write_outputs(out_dir: Path, run: Any, spec: dict[str, Any], workflow: str, monitor: str,
                  config: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
    """best.pt, last.pt, history.csv and training_curve.png of a finished run; the checkpoints
    record ``config`` (``models.info.model_meta``) and ``data``, what they need to know about the
    training data (e.g. its object diameter)."""
    state = run.state
    best_state = state.best_state if state.best_state is not None else cpu_state(run.model)
    best_loss, best_value = monitored_row(state.history, state.best_epoch, monitor)
    save_checkpoint(out_dir / "best.pt", checkpoint_dict(spec, best_state, state.best_epoch, best_loss, workflow,
                                                         monitor, best_value, config, data))
    save_checkpoint(out_dir / "last.pt", current_checkpoint(run, spec, workflow, monitor, config, data))
    write_history(out_dir / "history.csv", state.history)
    plot_history(out_dir / "training_curve.png", state.history, state.best_epoch, monitor)


class EpochKeeper:
    """``train.keep_epochs``: the weights after every N-th epoch, as ``folder/epoch_NNNN.pt``."""

    def __init__(self, folder: Path, every: int, spec: dict[str, Any], workflow: str, monitor: str,
                 config: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
        self.folder, self.every = folder, every
        self.spec, self.workflow, self.monitor, self.config, self.data = spec, workflow, monitor, config, data

    def start_fresh(self, init: str | None) -> None:
        """A run that starts from epoch 0 leaves no epochs of an earlier run behind (they would
        pass for this run's), unless it starts from one of them (``train.init``)."""
        if init and self.folder.resolve() in Path(init).resolve().parents:
            raise ConfigError("train.init", f"{init} lies in {self.folder}, which a fresh run of this experiment "
                                            "empties; copy it elsewhere first")
        shutil.rmtree(self.folder, ignore_errors=True)

    def after_epoch(self, run: Any) -> None:
        """Keep the weights of the epoch just run when it is an N-th one (before the resume file
        says the epoch is done, so a job killed in between keeps it on its next call)."""
        state = run.state
        if self.every <= 0 or state.epoch % self.every:
            return
        save_checkpoint(self.folder / f"epoch_{state.epoch:04d}.pt",
                        current_checkpoint(run, self.spec, self.workflow, self.monitor, self.config, self.data))
