"""Checkpoints: a network's spec and weights as tensors and plain types only.

Written atomically; read with ``torch.load(..., weights_only=True)``, so reading a
checkpoint never runs pickled code, and the network is rebuilt from the stored spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError
from ..core.imageio import atomic_path
from .registry import build_model

CHECKPOINT_FORMAT = 1


def checkpoint_dict(spec: dict[str, Any], state_dict: dict[str, torch.Tensor], epoch: int, loss: float,
                    workflow: str, monitor: str, monitor_value: float | None = None,
                    config: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint format the prediction stage reads.

    ``val_loss`` is the epoch's validation loss (training loss without validation data);
    ``monitor_value`` the value of the monitored quantity (that loss, or the IoU/F1);
    ``config`` the experiment config sections a run that starts from this model takes
    (``models.info.model_meta``); ``data`` what prediction needs to know about the training data
    (plain numbers, e.g. ``object_diameter``: inference/rescale.py); ``tuned`` is added by
    :func:`package_checkpoint`.
    """
    return {"format": CHECKPOINT_FORMAT, "model": dict(spec), "state_dict": state_dict, "epoch": int(epoch),
            "val_loss": float(loss), "monitor": monitor, "workflow": workflow,
            "monitor_value": float(loss if monitor_value is None else monitor_value),
            "config": dict(config or {}), "data": dict(data or {}), "tuned": None}


def package_checkpoint(checkpoint: str | Path, tuned: dict[str, Any] | None, out: str | Path) -> None:
    """``checkpoint`` with the contents of its experiment's tuning file (None: not tuned), as ``out``."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["tuned"] = tuned
    save_checkpoint(out, ckpt)


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
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
