"""Training that starts from a model (``train.init``): its weights, and how they are eased in.

Weights are matched by name and shape. The output layer is drawn afresh when its shape
differs (other classes, other instance channels, another workflow's head); any other weight
that does not fit means the network is not the model's, which is an error rather than a
silently half-loaded network. ``train.fine_tune`` can hold the loaded encoder fixed for the
first epochs (its gradients are dropped after the backward pass, so data-parallel ranks stay
in step, and its batch-norm layers keep their statistics) and let it learn at a lower rate
afterwards (an optimizer parameter group of its own).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError, InputError
from ..models.bmz import package_state_dict
from ..models.rdf import is_package
from ..models.registry import HEAD, encoder_prefixes


def init_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The network weights of a biapipe checkpoint or of a package biapipe exported."""
    source = Path(source)
    if is_package(source):
        return package_state_dict(source)
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(source, f"cannot read the model of train.init ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InputError(source, "is not a biapipe checkpoint (train.init)")
    return ckpt["state_dict"]


def load_init(model: nn.Module, source: str | Path, log: logging.Logger) -> list[str]:
    """Copy the weights of ``source`` into ``model`` where name and shape agree; returns the names
    drawn afresh (the output layer's, when its shape changed)."""
    theirs = init_state_dict(source)
    own = model.state_dict()
    fresh = [k for k, v in own.items() if k not in theirs or tuple(theirs[k].shape) != tuple(v.shape)]
    foreign = [k for k in fresh if not k.startswith(HEAD)]
    if foreign:
        k = foreign[0]
        shape = tuple(theirs[k].shape) if k in theirs else "absent"
        raise ConfigError("train.init", f"{source}: {len(foreign)} weight(s) do not fit this network (e.g. {k}: "
                                        f"{shape} in the model, {tuple(own[k].shape)} here); train.model and the "
                                        "input channels must be the model's")
    own.update({k: theirs[k].to(own[k].dtype) for k in own if k not in fresh})
    model.load_state_dict(own)
    log.info("train.init: %d of %d weight tensors from %s%s", len(own) - len(fresh), len(own), source,
             f"; drawn afresh (new output head): {', '.join(fresh)}" if fresh else "")
    return fresh


@dataclass
class Freeze:
    """The loaded encoder, held fixed while ``epoch < until`` (epochs counted from 0)."""

    parameters: list[nn.Parameter] = field(default_factory=list)
    modules: list[nn.Module] = field(default_factory=list)
    until: int = 0

    def active(self, epochs_done: int) -> bool:
        return epochs_done < self.until and bool(self.parameters)

    def hold(self, epochs_done: int) -> None:
        """After ``model.train()``: the encoder's batch-norm (and dropout) layers in eval mode."""
        if self.active(epochs_done):
            for m in self.modules:
                m.eval()

    def drop_gradients(self, epochs_done: int) -> None:
        """After the backward pass: no update of the encoder (the optimizer skips None gradients)."""
        if self.active(epochs_done):
            for p in self.parameters:
                p.grad = None


def encoder_of(model: nn.Module, spec: dict[str, Any]) -> tuple[list[nn.Parameter], list[nn.Module]]:
    """The encoder's parameters and top-level modules, by the architecture's name prefixes."""
    prefixes = encoder_prefixes(spec)
    params = [p for name, p in model.named_parameters() if name.startswith(prefixes)]
    modules = [m for name, m in model.named_children() if f"{name}." in prefixes]
    return params, modules


def fine_tuning(model: nn.Module, spec: dict[str, Any], tcfg: dict[str, Any],
                log: logging.Logger) -> tuple[Freeze, list[nn.Parameter]]:
    """(what is frozen and until when, the parameters that learn at ``encoder_lr_factor``)."""
    if not tcfg["init"]:
        return Freeze(), []
    ft = tcfg["fine_tune"]
    params, modules = encoder_of(model, spec)
    freeze = Freeze(params, modules, int(ft["freeze_encoder_epochs"]))
    if freeze.until:
        log.info("train.fine_tune: encoder (%d tensors) fixed for the first %d epoch(s)", len(params), freeze.until)
    slow = params if float(ft["encoder_lr_factor"]) != 1.0 else []
    if slow:
        log.info("train.fine_tune: encoder learns at %g x train.optimizer.lr", float(ft["encoder_lr_factor"]))
    return freeze, slow
