"""Trained models ready for inference, loaded once per process.

Prediction jobs of one workflow run inside one long-lived Python process (possibly from two
threads), so the model is loaded once per checkpoint file and reused from an in-process
cache; a retrained checkpoint (new mtime) is picked up automatically.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.devices import resolve_device
from ..core.errors import InputError
from ..models.bmz import load_package
from ..models.checkpoint import load_checkpoint
from ..models.rdf import is_package
from ..models.registry import divisor

#: Predictors kept in the cache (a workflow uses one or two checkpoints: best.pt, last.pt).
CACHE_SIZE = 4

#: Run convolutions channels-last on CPU: measured faster for the U-Net (benchmarks/README.md).
CHANNELS_LAST_CPU = True

#: Fold eval-mode BatchNorm into the preceding convolution at load time (one pass less per layer).
FUSE_BATCHNORM = True


@dataclass(frozen=True)
class Predictor:
    """A model ready for inference with what prediction needs to know about it."""

    model: nn.Module
    spec: dict[str, Any]
    divisor: int | tuple[int, ...]
    device: torch.device
    path: Path
    #: the checkpoint without its weights (epoch, val_loss, workflow, ...)
    meta: dict[str, Any] = field(default_factory=dict)
    #: the model's output is already activated (a foreign BioImage Model Zoo package)
    activated: bool = False

    def activation(self, activate: Any) -> Any:
        """The task's ``activate`` for this model's output (identity when it comes activated)."""
        return _identity if self.activated else activate


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_cache: OrderedDict[tuple[str, int, str], Predictor] = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, int, str], threading.Lock] = {}
_stats = {"loads": 0, "hits": 0}


def load_predictor(checkpoint_path: str | Path, device: str | torch.device = "auto") -> Predictor:
    """Load a checkpoint once per process; later calls return the cached model.

    The key includes the file's mtime, so a checkpoint rewritten by a new training
    run is reloaded. Two threads asking for the same checkpoint wait for one load
    instead of both loading.
    """
    path = Path(checkpoint_path).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError as exc:
        raise InputError(path, "checkpoint not found") from exc
    dev = resolve_device(device)
    key = (str(path), mtime, str(dev))
    with _cache_lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                _stats["hits"] += 1
                return _cache[key]
        predictor = _load(path, dev)
        with _cache_lock:
            _evict_stale(key)
            _cache[key] = predictor
            _stats["loads"] += 1
            while len(_cache) > CACHE_SIZE:
                _key_locks.pop(_cache.popitem(last=False)[0], None)
    return predictor


def _evict_stale(key: tuple[str, int, str]) -> None:
    """Drop older versions of the same file on the same device: they will never be asked for again."""
    for old in [k for k in _cache if k[0] == key[0] and k[2] == key[2] and k[1] != key[1]]:
        del _cache[old]
        _key_locks.pop(old, None)


def _load(path: Path, device: torch.device) -> Predictor:
    if is_package(path):
        model, spec, activated = load_package(path, device)
        prepare_model(model, device)
        return Predictor(model=model, spec=spec, divisor=model_divisor(spec), device=device, path=path,
                         meta={"model": spec}, activated=activated)
    try:
        model, ckpt = load_checkpoint(path, device)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    spec = dict(ckpt["model"])
    prepare_model(model, device)
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return Predictor(model=model, spec=spec, divisor=model_divisor(spec), device=device, path=path, meta=meta)


def model_divisor(spec: dict[str, Any]) -> int | tuple[int, ...]:
    """Spatial sizes the network accepts are multiples of this: one int, or one per (Z)YX
    axis for 3D networks that pool z fewer times than YX (tiling accepts both); a network
    biapipe did not build states its own (``models.bmz.foreign_spec``)."""
    d = spec["divisor"] if "divisor" in spec else divisor(spec)
    return int(d) if isinstance(d, int) else tuple(int(v) for v in d)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Put a model in its inference state once, at load time, so predictions made
    from several threads never mutate the shared module."""
    model.eval()
    model.requires_grad_(False)
    if FUSE_BATCHNORM:
        fuse_conv_batchnorm(model)
    if device.type == "cpu" and CHANNELS_LAST_CPU and _conv_ndim(model) in (2, 3):
        fmt = torch.channels_last if _conv_ndim(model) == 2 else torch.channels_last_3d
        model.to(memory_format=fmt)
    return model


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fuse_conv_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm that directly follows a convolution inside an
    ``nn.Sequential`` into that convolution's weights, in place.

    In eval mode BatchNorm is a fixed per-channel affine map, so the result is the same
    function (to float rounding) with one full read-and-write of the activations fewer
    per layer. Only Sequential containers are touched: there, adjacency is data flow.
    """
    if model.training:
        raise ValueError("fuse_conv_batchnorm needs a model in eval mode")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, _CONVS) and isinstance(bn, _BATCHNORMS) and bn.track_running_stats:
                seq._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = nn.Identity()
    return model


def _conv_ndim(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return 2
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            return 3
    return None


def predictor_cache_info() -> dict[str, int]:
    """Loads and cache hits so far in this process (tests and logs use it)."""
    with _cache_lock:
        return {"loads": _stats["loads"], "hits": _stats["hits"], "size": len(_cache)}


def clear_predictor_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()
        _stats.update(loads=0, hits=0)
