"""The training stage: patches in, ``best.pt``/``last.pt``/``history.csv`` out.

A training run is a pure function of the config, the data and the seed: the model is
initialized after seeding, patches are drawn from generators derived from
``(seed, epoch, index)`` (see :mod:`biapipe.patches`), and everything that carries
state from one epoch to the next (weights, optimizer, scheduler, early stopping,
history, RNGs) is saved to ``checkpoint/resume.pt`` after every epoch. A job killed
by a cluster's time limit therefore resumes and ends bit-identical (on CPU) to a run
that was never interrupted.

Checkpoints hold only tensors and plain Python types, so the prediction stage loads
them with ``torch.load(..., weights_only=True)`` and rebuilds the network from the
spec stored inside; no pickled code is ever executed.

Learning-rate schedules (except ``plateau``) advance per optimizer step, not per epoch,
so a warm-up of a fraction of an epoch works and short runs still anneal smoothly.
On CUDA the interpolating/intensity augmentation runs batched on the GPU after the
batch is moved there, and ``train.amp`` enables autocast (bf16, or fp16 with loss
scaling); on CPU both happen the plain way (augmentation in the data path, float32).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .augment import Augmenter, write_augment_samples
from .devices import resolve_device
from .errors import ConfigError, InputError
from .imageio import atomic_path, write_csv
from .models import build_model, count_parameters, divisor_per_axis, model_spec_from_config
from .patches import IGNORE_INDEX, PathPair, TrainPatches, build_datasets, seed_entropy
from .tasks.base import Task

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]

#: train.* keys that change how fast a run goes, not what it computes; a resumed run may differ in them
RUNTIME_KEYS = ("device", "threads", "num_workers", "gpus")

#: Monitors that are scores of the validation patches (higher is better) rather than losses.
SCORE_MONITORS = ("iou", "f1")

#: One-cycle schedule: starts at lr / ONECYCLE_START and ends at lr / ONECYCLE_START / ONECYCLE_END
#: (the values of torch's OneCycleLR and of fast.ai).
ONECYCLE_START, ONECYCLE_END = 25.0, 1e4
#: Share of the steps spent rising when train.warmup_epochs is 0.
ONECYCLE_RISE = 0.3

#: Cosine annealing ends at this fraction of the initial learning rate rather than 0, so the
#: last epochs still move the weights a little (with 0 they would be wasted compute).
COSINE_FINAL_FRACTION = 0.01


# --------------------------------------------------------------------------- set-up


@contextlib.contextmanager
def torch_settings(threads: int) -> Iterator[None]:
    """Set thread count and deterministic algorithms for the run; restore them afterwards.

    Both are process-wide, and the library may be called from a test or notebook that
    must not be left with different global settings.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_bench = torch.backends.cudnn.benchmark
    # cuBLAS is only deterministic with a fixed workspace; must be set before its first use
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(int(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark = old_bench


def memory_format(ndim: int, device: torch.device) -> torch.memory_format:
    """Channels-last on CPU, where oneDNN runs these convolutions about 1.2x (2D) to 1.7x (3D)
    faster than in the default layout; CUDA keeps the default layout."""
    if device.type != "cpu":
        return torch.contiguous_format
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def seed_everything(seed: int) -> None:
    entropy = seed_entropy(seed)
    torch.manual_seed(entropy)
    np.random.seed(entropy % 2**32)
    random.seed(entropy)


def make_optimizer(model: nn.Module, ocfg: dict[str, Any]) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), float(ocfg["lr"]), float(ocfg["weight_decay"])
    if ocfg["name"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if ocfg["name"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if ocfg["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9, nesterov=True)
    raise ConfigError("train.optimizer.name", f"unknown optimizer '{ocfg['name']}'")


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    return max(1, math.ceil(int(n_items) / int(batch_size)))


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg: dict[str, Any], steps: int = 1) -> Any:
    """The learning-rate schedule; ``steps`` is the number of optimizer steps per epoch.

    ``cosine``, ``onecycle`` and ``none`` with a warm-up are per-step ``LambdaLR`` closures
    (pure functions of the step count, so a resumed run continues them exactly);
    ``plateau`` halves the LR after half the early-stopping patience without improvement
    (per epoch), so the learning rate gets at least one chance to drop before training stops.
    """
    name = tcfg["scheduler"]
    total = max(1, int(tcfg["epochs"]) * steps)
    warmup = int(round(float(tcfg.get("warmup_epochs", 0)) * steps))
    if name == "plateau":
        es = tcfg["early_stopping"]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=max(1, int(es["patience"]) // 2),
            threshold=float(es["min_delta"]), threshold_mode="abs")
    if name == "none":
        if warmup == 0:
            return None
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, warmup))
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total, warmup))
    if name == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: onecycle_factor(step, total, warmup))
    raise ConfigError("train.scheduler", f"unknown scheduler '{name}'")


def warmup_factor(step: int, warmup: int) -> float:
    """Linear ramp 1/(w+1), 2/(w+1), ... up to 1 after ``warmup`` steps."""
    return min(1.0, (step + 1) / (warmup + 1)) if warmup > 0 else 1.0


def cosine_factor(step: int, total: int, warmup: int = 0, final: float = COSINE_FINAL_FRACTION) -> float:
    """Warm-up, then half a cosine from 1 down to ``final`` at the last step."""
    if step < warmup:
        return warmup_factor(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def onecycle_factor(step: int, total: int, warmup: int = 0) -> float:
    """Smith's one-cycle (cosine-shaped both ways): 1/25 -> 1 over the rise, then -> 1/25/1e4."""
    start, final = 1.0 / ONECYCLE_START, 1.0 / ONECYCLE_START / ONECYCLE_END
    rise = warmup if warmup > 0 else max(1, int(ONECYCLE_RISE * total))
    if step < rise:
        return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / rise))
    progress = min(1.0, (step - rise) / max(1, total - rise))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_batch(scheduler: Any) -> bool:
    """Whether the schedule advances after every optimizer step (all but plateau)."""
    return scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def resolve_amp(name: str, device: torch.device, log: logging.Logger) -> torch.dtype | None:
    """Autocast dtype for ``train.amp``; None means float32. CPU ignores it (with a log line):
    CPU autocast is slower than float32 for these convolutions and only bf16 exists there."""
    if name == "none":
        return None
    if device.type != "cuda":
        log.info("train.amp: %s ignored on %s (mixed precision is CUDA only); training in float32", name, device)
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    raise ConfigError("train.amp", f"unknown precision '{name}' (none, bf16, fp16)")


def fingerprint(cfg: dict[str, Any], train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair]) -> str:
    """Identity of a training run: a resume file is only used by a run with the same fingerprint.

    File names rather than full paths, so moving the project folder does not discard
    a half-finished run.
    """
    payload = {
        "train": _computing_keys(cfg["train"]),
        "targets": cfg.get("targets"), "normalize": cfg.get("normalize"), "seed": cfg["seed"],
        "workflow": cfg["workflow"], "ndim": cfg["ndim"],
        "train_files": [[Path(i).name, Path(t).name] for i, t in train_pairs],
        "val_files": [[Path(i).name, Path(t).name] for i, t in val_pairs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _computing_keys(tcfg: dict[str, Any]) -> dict[str, Any]:
    """train.* without the keys that change speed or side outputs only (devices, debug samples)."""
    out = {k: v for k, v in tcfg.items() if k not in RUNTIME_KEYS}
    if isinstance(out.get("augment"), dict):
        out["augment"] = {k: v for k, v in out["augment"].items() if k != "debug_samples"}
    return out


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


@dataclass
class Run:
    """The live objects of one training run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainState
    device: torch.device
    memory_format: torch.memory_format
    #: autocast dtype (CUDA only); None = float32
    amp: torch.dtype | None = None
    #: loss scaling for float16 autocast
    scaler: Any = None
    #: max global gradient norm; 0 = no clipping
    grad_clip: float = 0.0
    #: runs the torch stage of augmentation on the device (CUDA); None when the data path does it
    augmenter: Augmenter | None = None

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def batch(self, parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch on the device; a third part holds augmentation draws to apply there."""
        x, y = self.to_device(parts[0], parts[1])
        if len(parts) > 2 and self.augmenter is not None:
            x, y = self.augmenter.apply(x, y, parts[2])
            x = x.contiguous(memory_format=self.memory_format)
        return x, y

    def autocast(self) -> Any:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def step(self, loss: torch.Tensor) -> None:
        """Backward, optional clipping (on unscaled gradients) and the optimizer step."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        if steps_per_batch(self.scheduler):
            self.scheduler.step()


def save_resume(path: Path, run: Run, fp: str) -> None:
    payload = {
        "fingerprint": fp, "model": cpu_state(run.model), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "state": run.state.to_dict(), "rng": rng_states(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def try_resume(path: Path, run: Run, fp: str, log: logging.Logger) -> bool:
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


# --------------------------------------------------------------------------- epochs


def batches(dataset: Dataset, batch_size: int, num_workers: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches in index order. Without workers no DataLoader is made: its iterator draws
    a base seed from torch's global RNG, which would tie the patch stream to the model's RNG use."""
    n = len(dataset)
    if num_workers == 0:
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            yield tuple(torch.stack(parts) for parts in zip(*items))
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))
    yield from loader


def train_epoch(run: Run, loss_fn: nn.Module, dataset: Dataset, tcfg: dict[str, Any], seed: int) -> float:
    """One pass over the epoch's patches; returns the patch-weighted mean training loss."""
    run.model.train()
    total, count = 0.0, 0
    for parts in batches(dataset, int(tcfg["batch_size"]), int(tcfg["num_workers"]), seed):
        x, y = run.batch(parts)
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            logits = run.model(x)
        loss = loss_fn(logits.float(), y)  # losses in float32 whatever the autocast dtype
        run.step(loss)
        total += float(loss.detach()) * x.shape[0]
        count += x.shape[0]
    return total / count


@torch.no_grad()
def evaluate(run: Run, loss_fn: nn.Module, dataset: Dataset, tcfg: dict[str, Any], seed: int,
             scorer: ValidationScorer | None = None) -> float:
    """Mean validation loss; ``scorer`` (if any) also sees every batch's logits and targets."""
    run.model.eval()
    total, count = 0.0, 0
    for parts in batches(dataset, int(tcfg["batch_size"]), int(tcfg["num_workers"]), seed):
        x, y = run.batch(parts)
        with run.autocast():
            logits = run.model(x)
        logits = logits.float()
        total += float(loss_fn(logits, y)) * x.shape[0]
        count += x.shape[0]
        if scorer is not None:
            scorer.add(logits, y)
    return total / count


class ValidationScorer:
    """Foreground IoU and F1 of the validation patches, for ``train.monitor: iou | f1``.

    Predicted foreground is ``task.activate`` then a threshold: for class maps the
    argmax is a foreground class (any class > 0; ignored pixels are skipped); for
    per-channel maps, ``task.foreground`` applied to the activated prediction and to
    the target (e.g. instance: foreground > 0.5, or signed distance > 0).

    F1 is the object F1 at IoU 0.5 for the instance workflow: the task's watershed runs
    on each activated validation patch and on its target (which the same watershed turns
    back into the objects it was made from), with the ``postprocess.instance`` values
    from the config (tuned thresholds need a trained model, so they cannot be used here).
    16 patches take milliseconds. For other workflows F1 is the pixel F1 (Dice) of the
    foreground.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.instance = _instance_postprocessor(task)
        self.counts = np.zeros(3)  # pixel tp, fp, fn
        self.objects = np.zeros(3)  # object tp, fp, fn at IoU 0.5

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        probs = self.task.activate(logits)
        if target.is_floating_point():
            pred_fg = self._foreground(probs)
            true_fg = self._foreground(target)
            valid = np.ones_like(true_fg)
        else:
            classes = target[:, 0]
            pred_fg = (probs.argmax(1) > 0).cpu().numpy()
            true_fg = (classes > 0).cpu().numpy()
            valid = (classes != IGNORE_INDEX).cpu().numpy()
        self.counts += [np.sum(pred_fg & true_fg & valid), np.sum(pred_fg & ~true_fg & valid),
                        np.sum(~pred_fg & true_fg & valid)]
        if self.instance is not None:
            self._add_objects(probs, target)

    def _foreground(self, maps: torch.Tensor) -> np.ndarray:
        channels_last = maps.float().movedim(1, -1).cpu().numpy()
        return np.stack([np.asarray(self.task.foreground(m), dtype=bool) for m in channels_last])

    def _add_objects(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        import warnings

        from .metrics.instance import matching_metrics

        assert self.instance is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an early model often yields no seeds at all
            for p, t in zip(probs.float().movedim(1, -1).cpu().numpy(), target.float().movedim(1, -1).cpu().numpy()):
                m = matching_metrics(self.instance(p), self.instance(t), [0.5])
                self.objects += [m["tp@0.5"], m["fp@0.5"], m["fn@0.5"]]

    def result(self) -> dict[str, float]:
        """``iou`` and ``f1``; 1.0 when there is nothing to find and nothing was found."""
        tp, fp, fn = self.counts
        if self.instance is not None:
            otp, ofp, ofn = self.objects
            f1 = 2 * otp / (2 * otp + ofp + ofn) if otp + ofp + ofn else 1.0
        else:
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        return {"iou": float(tp / (tp + fp + fn)) if tp + fp + fn else 1.0, "f1": float(f1)}


def _instance_postprocessor(task: Task) -> Any:
    """Labels from activated (Z)YXC maps with the config's post-processing, for instance tasks only."""
    from .tasks.instance import InstanceTask

    if not isinstance(task, InstanceTask):
        return None
    from .postprocess.instance import instance_postprocess

    return lambda maps: instance_postprocess(maps, task.channels, task.params, task.voxel_size)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def step_scheduler(scheduler: Any, monitored: float) -> None:
    """The per-epoch step: plateau only; the other schedules advance per optimizer step (Run.step)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(monitored)


# --------------------------------------------------------------------------- outputs


def checkpoint_dict(spec: dict[str, Any], state_dict: dict[str, torch.Tensor], epoch: int, loss: float,
                    cfg: dict[str, Any], monitor: str, monitor_value: float | None = None) -> dict[str, Any]:
    """The checkpoint format the prediction stage reads (see module docstring).

    ``val_loss`` is the epoch's validation loss (training loss without validation data);
    ``monitor_value`` the value of the monitored quantity (that loss, or the IoU/F1).
    """
    return {"format": CHECKPOINT_FORMAT, "model": dict(spec), "state_dict": state_dict, "epoch": int(epoch),
            "val_loss": float(loss), "monitor": monitor, "workflow": cfg["workflow"],
            "monitor_value": float(loss if monitor_value is None else monitor_value)}


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network from ``best.pt``/``last.pt``, in eval mode on ``device``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise InputError(path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a biapipe checkpoint of format {CHECKPOINT_FORMAT}")
    model = build_model(ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


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


def write_outputs(out_dir: Path, run: Run, spec: dict[str, Any], cfg: dict[str, Any], monitor: str) -> None:
    state = run.state
    best_state = state.best_state if state.best_state is not None else cpu_state(run.model)
    best_loss, best_value = monitored_row(state.history, state.best_epoch, monitor)
    last_loss, last_value = monitored_row(state.history, state.epoch, monitor)
    save_checkpoint(out_dir / "best.pt", checkpoint_dict(spec, best_state, state.best_epoch, best_loss, cfg,
                                                         monitor, best_value))
    save_checkpoint(out_dir / "last.pt", checkpoint_dict(spec, cpu_state(run.model), state.epoch, last_loss,
                                                         cfg, monitor, last_value))
    write_history(out_dir / "history.csv", state.history)
    plot_history(out_dir / "training_curve.png", state.history, state.best_epoch, monitor)


# --------------------------------------------------------------------------- the loop


def train_model(cfg: dict[str, Any], task: Task, train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair],
                out_dir: str | Path, log: logging.Logger | None = None,
                max_epochs_this_call: int | None = None, ddp: Any = None) -> dict[str, Any]:
    """Train the task's network on (normalized image zarr, target zarr) pairs; write outputs to ``out_dir``.

    ``max_epochs_this_call`` stops after that many epochs without writing the final
    outputs, as if the job had been killed (used to test resuming); the next call
    continues from ``out_dir/checkpoint/resume.pt``. Returns a summary of the run.

    With ``train.gpus > 1`` the run is data-parallel: :func:`biapipe.ddp.launch` starts
    that many processes, each of which calls this function again with ``ddp`` (its
    :class:`biapipe.ddp.Rank`); only rank 0 writes files.
    """
    log = log or logger
    out_dir = Path(out_dir)
    tcfg = cfg["train"]
    if ddp is None and int(tcfg.get("gpus", 1)) > 1:
        from .ddp import launch

        return launch(cfg, task, train_pairs, val_pairs, out_dir, log, max_epochs_this_call)
    main = ddp is None or ddp.main
    with torch_settings(int(tcfg["threads"])):
        seed_everything(cfg["seed"])
        device = resolve_device(str(tcfg["device"]), "train.device")
        on_device = device.type == "cuda"  # batched GPU augmentation; CPU augments in the data path
        # a task that does not learn from patches (classification) supplies its own datasets
        own = getattr(task, "build_datasets", None)
        data = own(cfg, train_pairs, val_pairs) if own else build_datasets(cfg, task, train_pairs, val_pairs,
                                                                           augment_on_device=on_device)
        spec = model_spec_from_config(cfg, data.in_channels, task.out_channels())
        if not own:
            check_patch_size(tcfg["patch_size"], spec)
        if main:
            write_debug_samples(data.train, cfg, out_dir, log)
        fmt = memory_format(spec["ndim"], device)
        model = build_model(spec).to(device=device, memory_format=fmt)
        if ddp is not None:
            model = ddp.prepare(model, device)
        optimizer = make_optimizer(model, tcfg["optimizer"])
        steps = steps_per_epoch(len(data.train), int(tcfg["batch_size"]))
        amp = resolve_amp(str(tcfg.get("amp", "none")), device, log)
        run = Run(model, optimizer, make_scheduler(optimizer, tcfg, steps), TrainState(), device, fmt, amp=amp,
                  scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
                  grad_clip=float(tcfg.get("grad_clip", 0.0)),
                  augmenter=getattr(data.train, "augmenter", None) if on_device else None)
        loss_fn = task.loss().to(device)
        monitor = choose_monitor(tcfg, data.val is not None, task, log)
        fp = fingerprint(cfg, train_pairs, val_pairs)
        resume_path = out_dir / "checkpoint" / "resume.pt"
        try_resume(resume_path, run, fp, log)
        resumed_from = run.state.epoch
        if ddp is not None:
            ddp.wrap(model, device)
        log.info("training %dD %s (%d parameters) on %s: %d training, %d validation images", spec["ndim"],
                 spec["arch"], count_parameters(model), device, len(train_pairs), len(val_pairs))
        finished = _run_epochs(run, data, loss_fn, cfg, task, monitor, resume_path, fp, log, max_epochs_this_call,
                               ddp)
        best_loss, best_value = monitored_row(run.state.history, run.state.best_epoch, monitor) \
            if run.state.history else (math.nan, math.nan)
        if finished and main:
            write_outputs(out_dir, run, spec, cfg, monitor)
            resume_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                resume_path.parent.rmdir()
            log.info("done: best %s %.4f at epoch %d of %d", monitor, best_value, run.state.best_epoch,
                     run.state.epoch)
    return {
        "finished": finished, "epochs_run": run.state.epoch, "resumed_from_epoch": resumed_from,
        "best_epoch": run.state.best_epoch, "best_loss": best_loss, "best_value": best_value, "monitor": monitor,
        "stopped_early": run.state.stopped and run.state.epoch < int(tcfg["epochs"]),
        "parameters": count_parameters(model), "device": str(device),
    }


def check_patch_size(patch_size: Sequence[int], spec: dict[str, Any]) -> None:
    """Each patch axis must pass through every pooling unchanged, or skips and up-sampling misalign."""
    per_axis = divisor_per_axis(spec)
    if any(int(p) % d for p, d in zip(patch_size, per_axis)):
        raise ConfigError("train.patch_size", f"{list(patch_size)} must be a multiple of {list(per_axis)} per axis "
                                              f"for a network of depth {spec['depth']}")


def choose_monitor(tcfg: dict[str, Any], has_val: bool, task: Task, log: logging.Logger) -> str:
    """``train.monitor``, or the training loss when there are no validation images."""
    wanted = str(tcfg.get("monitor", "val_loss"))
    if not has_val:
        log.info("no validation images: the training loss selects best.pt and drives early stopping%s",
                 f" (train.monitor: {wanted} needs validation images)" if wanted != "val_loss" else "")
        return "train_loss"
    if wanted in SCORE_MONITORS and getattr(task, "name", "") == "classification":
        raise ConfigError("train.monitor", f"'{wanted}' scores segmentation patches; use val_loss for classification")
    return wanted


def write_debug_samples(dataset: Any, cfg: dict[str, Any], out_dir: Path, log: logging.Logger) -> None:
    """``train.augment.debug_samples`` augmented patches of epoch 1 to ``model/augment_samples/``."""
    n = int(cfg["train"].get("augment", {}).get("debug_samples", 0))
    if n <= 0 or not isinstance(dataset, TrainPatches):
        return
    dataset.set_epoch(1)
    pairs = [dataset.augmented(i) for i in range(min(n, len(dataset)))]
    folder = out_dir / "augment_samples"
    write_augment_samples(pairs, folder)
    log.info("wrote %d augmented training patches to %s", len(pairs), folder)


def _run_epochs(run: Run, data: Any, loss_fn: nn.Module, cfg: dict[str, Any], task: Task, monitor: str,
                resume_path: Path, fp: str, log: logging.Logger, max_epochs_this_call: int | None,
                ddp: Any = None) -> bool:
    """Run epochs until the last one, early stopping, or the per-call limit; True when training is over.

    ``ddp`` (a :class:`biapipe.ddp.Rank`) trains on this rank's slices, validates on rank 0,
    and hands every rank rank 0's numbers before any decision is taken.
    """
    tcfg = cfg["train"]
    es = tcfg["early_stopping"]
    epochs = int(tcfg["epochs"])
    seed = seed_entropy(cfg["seed"]) % 2**63
    ran = 0
    while run.state.epoch < epochs and not run.state.stopped:
        if max_epochs_this_call is not None and ran >= max_epochs_this_call:
            return False
        start = time.perf_counter()
        epoch = run.state.epoch + 1
        lr = current_lr(run.optimizer)
        data.train.set_epoch(epoch)
        train_loss = (train_epoch if ddp is None else ddp.train_epoch)(run, loss_fn, data.train, tcfg, seed + epoch)
        scorer = ValidationScorer(task) if monitor in SCORE_MONITORS else None
        val_loss = (evaluate if ddp is None else ddp.evaluate)(run, loss_fn, data.val, tcfg, seed, scorer) \
            if data.val is not None else math.nan
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr}
        if scorer is not None:
            row[f"val_{monitor}"] = scorer.result()[monitor]
        if ddp is not None:
            row = ddp.agree(row)
            train_loss, val_loss = row["train_loss"], row["val_loss"]
        objective = _objective(row, monitor)
        if not math.isfinite(objective) or not math.isfinite(train_loss):
            raise ConfigError("train.optimizer.lr", f"training diverged at epoch {epoch} (loss is "
                                                    f"{train_loss}); try a lower learning rate")
        step_scheduler(run.scheduler, objective)
        run.state.epoch = epoch
        is_best = run.state.update(objective, run.model, int(es["patience"]), float(es["min_delta"]))
        seconds = time.perf_counter() - start
        run.state.history.append({**row, "seconds": seconds} if scorer is None else
                                 {**{k: row[k] for k in HISTORY_COLUMNS[:4]}, "seconds": seconds,
                                  f"val_{monitor}": row[f"val_{monitor}"]})
        score = f"  val_{monitor} {row[f'val_{monitor}']:.4f}" if scorer is not None else ""
        log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f%s  lr %.2e  %.1fs%s", epoch, epochs, train_loss,
                 val_loss, score, lr, seconds, "  (best)" if is_best else "")
        if run.state.stopped:
            log.info("early stopping: no %s improvement above %g for %d epochs", monitor, es["min_delta"],
                     es["patience"])
        if ddp is None or ddp.main:
            save_resume(resume_path, run, fp)
        ran += 1
    return True


def _objective(row: dict[str, float], monitor: str) -> float:
    """The minimised quantity: the monitored loss, or minus the monitored score."""
    if monitor in SCORE_MONITORS:
        return -float(row[f"val_{monitor}"])
    return float(row[monitor])
