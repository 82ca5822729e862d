"""Which torch device a stage runs on: the same config runs on a laptop and a GPU node."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device = "auto", key: str = "predict.device") -> torch.device:
    """``auto`` means CUDA when present, CPU otherwise: the same config runs anywhere.

    ``key`` is the config key named when the device is unusable (training shares this function).
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(key, f"'{device}' is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, f"'{device}' requested but CUDA is not available on this machine")
    return dev
