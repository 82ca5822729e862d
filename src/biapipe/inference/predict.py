"""Prediction of one normalized image with a loaded model: tiled and blended, or whole.

What is blended and stored is ``task.activate(logits)``, never raw logits, so tiles are
averaged in the space post-processing thresholds. This is the one prediction path: the
workflow's stages and the block-wise path for large volumes both go through
:func:`make_batch_fn` and :func:`predict_image` / :class:`biapipe.large.predict.BlockPredictor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.devices import resolve_device
from ..core.errors import ConfigError
from .predictor import CHANNELS_LAST_CPU
from .tiling import BatchFn, run_tiled
from .tta import wrap

Activate = Callable[[torch.Tensor], torch.Tensor]


def make_batch_fn(
    model: nn.Module,
    activate: Activate,
    device: torch.device,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    tta: bool = False,
) -> BatchFn:
    """Wrap a model as the (N, *tile, C) -> (N, *tile, C') numpy function tiling uses.

    numpy tiles are already channels-last in memory, so the NC(Z)YX tensor handed to
    the model is a free permuted view; with ``channels_last`` that view is what the
    CPU convolutions prefer, otherwise it is made contiguous. ``dtype`` bfloat16 runs
    the network under autocast; the activation always sees float32 logits. ``tta``
    averages the activated outputs over flips and 90-degree rotations (:mod:`biapipe.tta`).
    """
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, dtype):
            logits = model(x)
        with torch.inference_mode():
            return activate(logits.float())

    forward = wrap(forward, tta)

    def fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        x = x.movedim(-1, 1)
        x = x.contiguous(memory_format=_channels_last_format(x.ndim) if channels_last else torch.contiguous_format)
        with torch.inference_mode():
            y = forward(x)
        # channels-last on the device (free when the conv output already is), one copy to host
        return y.movedim(1, -1).contiguous().cpu().numpy()

    return fn


def _channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _autocast(device: torch.device, dtype: torch.dtype) -> Any:
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_image(
    model: nn.Module,
    image: Any,
    pcfg: dict[str, Any],
    activate: Activate,
    divisor: int | Sequence[int],
    device: str | torch.device = "cpu",
    *,
    channels_last: bool | None = None,
    dtype: torch.dtype | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Predict one normalized (Z)YXC float32 image; returns (Z)YXC float32 ``activate(logits)``.

    ``pcfg`` is the config's ``predict`` section. ``tiled`` blends overlapping tiles (memory
    bounded by tile x batch); ``whole`` runs one forward pass on the image padded to the
    divisor, which avoids overlap recomputation when the image fits in memory. ``image``
    may be a lazy Zarr array in tiled mode.

    ``channels_last`` (default: on for CPU) and ``dtype`` (default: ``predict.precision``;
    bfloat16 runs the network under autocast) are the speed options measured in
    benchmarks/README.md.
    """
    dev = resolve_device(device)
    if model.training:  # BatchNorm/Dropout must use their inference behaviour
        model.eval()
    torch.set_num_threads(int(pcfg["threads"]))
    if channels_last is None:
        channels_last = dev.type == "cpu" and CHANNELS_LAST_CPU
    fn = make_batch_fn(model, activate, dev, channels_last=channels_last,
                       dtype=precision(pcfg["precision"]) if dtype is None else dtype, tta=bool(pcfg["tta"]))
    spatial = tuple(image.shape[:-1])
    if pcfg["mode"] == "whole":
        return run_tiled(image, fn, spatial, overlap=0.0, blend="constant", batch_size=1, divisor=divisor, out=out)
    return run_tiled(image, fn, tile_size(pcfg, len(spatial)), overlap=float(pcfg["overlap"]), blend=pcfg["blend"],
                     batch_size=int(pcfg["batch_size"]), divisor=divisor, out=out, trim=float(pcfg["trim"]))


def batch_fn(model: nn.Module, activate: Activate, device: torch.device, pcfg: dict[str, Any]) -> BatchFn:
    """The tile function of a loaded model with the ``predict`` section's speed options
    (what block-wise prediction of large volumes runs)."""
    torch.set_num_threads(int(pcfg["threads"]))
    return make_batch_fn(model, activate, device, channels_last=device.type == "cpu" and CHANNELS_LAST_CPU,
                         dtype=precision(pcfg["precision"]), tta=bool(pcfg["tta"]))


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def precision(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise ConfigError("predict.precision", f"'{name}' is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def tile_size(pcfg: dict[str, Any], ndim: int) -> tuple[int, ...]:
    tile = pcfg["tile_size"]
    if len(tile) != ndim:
        raise ConfigError("predict.tile_size", f"has {len(tile)} entries but the image is {ndim}D")
    return tuple(int(t) for t in tile)
