"""The training loop: patches in, ``best.pt``/``last.pt``/``history.csv`` out.

A training run is a pure function of the config, the data and the seed: the model is
initialized after seeding, patches are drawn from generators derived from
``(seed, epoch, index)`` (see :mod:`biapipe.data.patches`), and everything with state is
saved after every epoch (:mod:`.state`), so a resumed run ends as an uninterrupted one.

On CUDA the interpolating/intensity augmentation runs batched on the GPU after the batch is
moved there, and ``train.amp`` enables autocast (bf16, or fp16 with loss scaling); on CPU
both happen the plain way (augmentation in the data path, float32).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.devices import resolve_device
from ..core.errors import ConfigError
from ..core.progress import Progress
from ..data.augment import Augmenter, write_augment_samples
from ..data.patches import seed_entropy
from ..data.sources import PathPair
from ..models.info import model_meta
from ..models.registry import build_model, count_parameters
from .init import Freeze, fine_tuning, load_init
from .outputs import HISTORY_COLUMNS, EpochKeeper, monitored_row, write_outputs
from .runtime import memory_format, resolve_amp, seed_everything, torch_settings
from .schedules import (
    current_lr,
    make_optimizer,
    make_scheduler,
    step_scheduler,
    steps_per_batch,
    steps_per_epoch,
)
from .scoring import SCORE_MONITORS, Scored, ValidationScorer
from .state import TrainState, fingerprint, save_resume, try_resume

logger = logging.getLogger(__name__)


class Trainable(Scored, Protocol):
    """What training needs from a task (``tasks/base.py`` implements it for every workflow)."""

    name: str
    #: whether ``train.monitor: iou | f1`` applies (validation patches with foreground maps)
    scores_patches: bool

    def build_datasets(self, train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair],
                       augment_on_device: bool = False) -> Any: ...

    def model_spec(self, in_channels: int) -> dict[str, Any]: ...

    def loss(self) -> nn.Module: ...


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
    #: a loaded encoder held fixed for the first epochs (train.init, train.fine_tune)
    freeze: Freeze = field(default_factory=Freeze)

    def train_mode(self) -> None:
        """Training mode for the epoch about to run (a frozen encoder keeps its statistics)."""
        self.model.train()
        self.freeze.hold(self.state.epoch)

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
            self.freeze.drop_gradients(self.state.epoch)
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.freeze.drop_gradients(self.state.epoch)
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        if steps_per_batch(self.scheduler):
            self.scheduler.step()


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
    run.train_mode()
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


# --------------------------------------------------------------------------- the loop


def train_model(cfg: dict[str, Any], task: Trainable, train_pairs: Sequence[PathPair],
                val_pairs: Sequence[PathPair], out_dir: str | Path, log: logging.Logger | None = None,
                max_epochs_this_call: int | None = None, ddp: Any = None) -> dict[str, Any]:
    """Train the task's network on (normalized image zarr, target zarr) pairs in this process;
    write outputs to ``out_dir`` (:func:`biapipe.training.launch.train` picks this or DDP).

    ``max_epochs_this_call`` stops after that many epochs without writing the final
    outputs, as if the job had been killed (used to test resuming); the next call
    continues from ``out_dir/checkpoint/resume.pt``. Returns a summary of the run.
    ``ddp`` is this process's :class:`biapipe.training.ddp.Rank` in a data-parallel run;
    only rank 0 writes files.
    """
    log = log or logger
    out_dir = Path(out_dir)
    tcfg = cfg["train"]
    main = ddp is None or ddp.main
    with torch_settings(int(tcfg["threads"])):
        seed_everything(cfg["seed"])
        device = resolve_device(str(tcfg["device"]), "train.device")
        on_device = device.type == "cuda"  # batched GPU augmentation; CPU augments in the data path
        data = task.build_datasets(train_pairs, val_pairs, augment_on_device=on_device)
        spec = task.model_spec(data.in_channels)
        if main:
            write_debug_samples(data.train, cfg, out_dir, log)
        fmt = memory_format(spec["ndim"], device)
        model = build_model(spec).to(device=device, memory_format=fmt)
        if tcfg["init"]:
            load_init(model, tcfg["init"], log)
        if ddp is not None:
            model = ddp.prepare(model, device)
        freeze, slow = fine_tuning(model, spec, tcfg, log)
        optimizer = make_optimizer(model, tcfg["optimizer"], slow, float(tcfg["fine_tune"]["encoder_lr_factor"]))
        steps = steps_per_epoch(len(data.train), int(tcfg["batch_size"]))
        amp = resolve_amp(str(tcfg["amp"]), device, log)
        run = Run(model, optimizer, make_scheduler(optimizer, tcfg, steps), TrainState(), device, fmt, amp=amp,
                  scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
                  grad_clip=float(tcfg["grad_clip"]), augmenter=data.train.augmenter if on_device else None,
                  freeze=freeze)
        loss_fn = task.loss().to(device)
        monitor = choose_monitor(tcfg, data.val is not None, task, log)
        fp = fingerprint(cfg, train_pairs, val_pairs)
        resume_path = out_dir / "checkpoint" / "resume.pt"
        try_resume(resume_path, run, fp, log)
        resumed_from = run.state.epoch
        meta, data_meta = model_meta(cfg), getattr(data, "meta", {})
        keeper = EpochKeeper(out_dir / "epochs", int(tcfg["keep_epochs"]), spec, task.name, monitor, meta,
                             data_meta) if main else None
        if keeper is not None and resumed_from == 0:
            keeper.start_fresh(tcfg["init"])
        if ddp is not None:
            ddp.wrap(model, device)
        log.info("training %dD %s (%d parameters) on %s: %d training, %d validation images", spec["ndim"],
                 spec["arch"], count_parameters(model), device, len(train_pairs), len(val_pairs))
        finished = _run_epochs(run, data, loss_fn, cfg, task, monitor, resume_path, fp, log, max_epochs_this_call,
                               ddp, keeper)
        best_loss, best_value = monitored_row(run.state.history, run.state.best_epoch, monitor) \
            if run.state.history else (math.nan, math.nan)
        if finished and main:
            write_outputs(out_dir, run, spec, task.name, monitor, meta, data_meta)
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


def choose_monitor(tcfg: dict[str, Any], has_val: bool, task: Trainable, log: logging.Logger) -> str:
    """``train.monitor``, or the training loss when there are no validation images."""
    wanted = str(tcfg["monitor"])
    if not has_val:
        log.info("no validation images: the training loss selects best.pt and drives early stopping%s",
                 f" (train.monitor: {wanted} needs validation images)" if wanted != "val_loss" else "")
        return "train_loss"
    if wanted in SCORE_MONITORS and not task.scores_patches:
        raise ConfigError("train.monitor", f"'{wanted}' scores segmentation patches; use val_loss for {task.name}")
    return wanted


def write_debug_samples(dataset: Any, cfg: dict[str, Any], out_dir: Path, log: logging.Logger) -> None:
    """``train.augment.debug_samples`` augmented items of epoch 1 to ``model/augment_samples/``."""
    n = int(cfg["train"]["augment"]["debug_samples"])
    if n <= 0:
        return
    dataset.set_epoch(1)
    pairs = [dataset.augmented(i) for i in range(min(n, len(dataset)))]
    folder = out_dir / "augment_samples"
    write_augment_samples(pairs, folder)
    log.info("wrote %d augmented training samples to %s", len(pairs), folder)


def _run_epochs(run: Run, data: Any, loss_fn: nn.Module, cfg: dict[str, Any], task: Trainable, monitor: str,
                resume_path: Path, fp: str, log: logging.Logger, max_epochs_this_call: int | None,
                ddp: Any = None, keeper: EpochKeeper | None = None) -> bool:
    """Run epochs until the last one, early stopping, or the per-call limit; True when training is over.

    ``ddp`` (a :class:`biapipe.ddp.Rank`) trains on this rank's slices, validates on rank 0,
    and hands every rank rank 0's numbers before any decision is taken.
    """
    tcfg = cfg["train"]
    es = tcfg["early_stopping"]
    epochs = int(tcfg["epochs"])
    seed = seed_entropy(cfg["seed"]) % 2**63
    ran = 0
    progress = Progress(epochs, "epoch", log, done=run.state.epoch)
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
        progress.advance()
        log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f%s  lr %.2e  %.1fs  %s%s", epoch, epochs, train_loss,
                 val_loss, score, lr, seconds, progress.left(), "  (best)" if is_best else "")
        if run.state.stopped:
            log.info("early stopping: no %s improvement above %g for %d epochs", monitor, es["min_delta"],
                     es["patience"])
        if keeper is not None:
            keeper.after_epoch(run)
        if ddp is None or ddp.main:
            save_resume(resume_path, run, fp)
        ran += 1
    return True


def _objective(row: dict[str, float], monitor: str) -> float:
    """The minimised quantity: the monitored loss, or minus the monitored score."""
    if monitor in SCORE_MONITORS:
        return -float(row[f"val_{monitor}"])
    return float(row[monitor])
