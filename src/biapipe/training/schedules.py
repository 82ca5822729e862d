"""Optimizers and learning-rate schedules.

Schedules other than ``plateau`` advance per optimizer step, not per epoch, so a warm-up of
a fraction of an epoch works and short runs still anneal smoothly. They are ``LambdaLR``
closures, pure functions of the step count, so a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError

#: One-cycle schedule: starts at lr / ONECYCLE_START and ends at lr / ONECYCLE_START / ONECYCLE_END
#: (the values of torch's OneCycleLR and of fast.ai).
ONECYCLE_START, ONECYCLE_END = 25.0, 1e4
#: Share of the steps spent rising when train.warmup_epochs is 0.
ONECYCLE_RISE = 0.3

#: Cosine annealing ends at this fraction of the initial learning rate rather than 0, so the
#: last epochs still move the weights a little (with 0 they would be wasted compute).
COSINE_FINAL_FRACTION = 0.01


def make_optimizer(model: nn.Module, ocfg: dict[str, Any], slow: list[nn.Parameter] | None = None,
                   slow_factor: float = 1.0) -> torch.optim.Optimizer:
    """The optimizer; ``slow`` parameters (a loaded encoder, ``train.fine_tune``) learn at
    ``slow_factor`` x the rate, in a parameter group of their own that every schedule scales alike."""
    params, lr, wd = model.parameters(), float(ocfg["lr"]), float(ocfg["weight_decay"])
    if slow:
        ids = {id(p) for p in slow}
        params = [{"params": [p for p in model.parameters() if id(p) not in ids]},
                  {"params": list(slow), "lr": lr * float(slow_factor)}]
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
    warmup = int(round(float(tcfg["warmup_epochs"]) * steps))
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


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def step_scheduler(scheduler: Any, monitored: float) -> None:
    """The per-epoch step: plateau only; the other schedules advance per optimizer step (Run.step)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(monitored)
