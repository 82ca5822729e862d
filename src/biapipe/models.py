"""Networks, described by a plain-dict spec so a checkpoint can rebuild them.

The spec (not a pickled module) is what goes into ``best.pt``: it is made only of
plain Python types, so ``torch.load(..., weights_only=True)`` can read a checkpoint
without trusting arbitrary code, and prediction rebuilds exactly the trained network.

2D and 3D share one U-Net: the layer classes are picked from ``ndim``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError

ARCHITECTURES = ("unet",)
NORMS = ("batch", "instance", "group", "none")

#: Largest number of groups for GroupNorm; fewer when the channel count is not divisible.
MAX_GROUPS = 8


def _layers(ndim: int) -> dict[str, type[nn.Module]]:
    """The dimension-specific layer classes; everything else in the U-Net is shared."""
    if ndim == 2:
        return {"conv": nn.Conv2d, "up": nn.ConvTranspose2d, "pool": nn.MaxPool2d,
                "batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "dropout": nn.Dropout2d}
    if ndim == 3:
        return {"conv": nn.Conv3d, "up": nn.ConvTranspose3d, "pool": nn.MaxPool3d,
                "batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d, "dropout": nn.Dropout3d}
    raise ConfigError("ndim", f"must be 2 or 3, got {ndim}")


def _group_count(channels: int) -> int:
    """Largest divisor of ``channels`` up to MAX_GROUPS, so any width works with GroupNorm."""
    return next(g for g in range(min(MAX_GROUPS, channels), 0, -1) if channels % g == 0)


def _norm(kind: str, ndim: int, channels: int) -> nn.Module:
    if kind == "batch":
        return _layers(ndim)["batch"](channels)
    if kind == "instance":
        # affine so instance norm can still learn a per-channel scale like the other norms
        return _layers(ndim)["instance"](channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError("train.model.norm", f"unknown normalization '{kind}' (choose from {', '.join(NORMS)})")


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalization and ReLU."""

    def __init__(self, ndim: int, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0) -> None:
        conv = _layers(ndim)["conv"]
        # a bias right before a normalization layer is cancelled by it: skip the parameters
        bias = norm == "none"
        layers: list[nn.Module] = []
        if dropout > 0:
            layers.append(_layers(ndim)["dropout"](dropout))
        layers += [
            conv(in_ch, out_ch, kernel_size=3, padding=1, bias=bias), _norm(norm, ndim, out_ch), nn.ReLU(inplace=True),
            conv(out_ch, out_ch, kernel_size=3, padding=1, bias=bias), _norm(norm, ndim, out_ch), nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, then a ConvBlock."""

    def __init__(self, ndim: int, in_ch: int, skip_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        self.up = _layers(ndim)["up"](in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = ConvBlock(ndim, out_ch + skip_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net with ``depth`` pooling steps; feature maps double at each level from ``width``.

    Inputs must have spatial sizes divisible by ``2**depth`` (see :func:`divisor`);
    the output has the input's spatial size and ``out_channels`` logits.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, depth: int = 3, width: int = 16,
                 norm: str = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        ch = in_channels
        for w in widths[:-1]:
            self.encoders.append(ConvBlock(ndim, ch, w, norm))
            ch = w
        self.pool = _layers(ndim)["pool"](kernel_size=2)
        self.bottleneck = ConvBlock(ndim, ch, widths[-1], norm, dropout)
        self.decoders = nn.ModuleList(
            UpBlock(ndim, widths[level + 1], widths[level], widths[level], norm) for level in reversed(range(depth))
        )
        self.head = _layers(ndim)["conv"](widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.head(x)


def _check_spec(spec: dict[str, Any]) -> None:
    """Reject a spec early with the config key to fix, rather than failing inside torch."""
    if spec.get("arch") not in ARCHITECTURES:
        raise ConfigError("train.model.arch", f"unknown architecture '{spec.get('arch')}'")
    if spec.get("ndim") not in (2, 3):
        raise ConfigError("ndim", f"must be 2 or 3, got {spec.get('ndim')}")
    for key in ("in_channels", "out_channels", "depth", "width"):
        value = spec.get(key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"train.model.{key}", f"must be a positive integer, got {value!r}")
    if spec.get("norm", "batch") not in NORMS:
        raise ConfigError("train.model.norm", f"unknown normalization '{spec.get('norm')}'")
    if not 0.0 <= float(spec.get("dropout", 0.0)) < 1.0:
        raise ConfigError("train.model.dropout", f"must be in [0, 1), got {spec.get('dropout')}")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the network a spec describes (weights freshly initialized from torch's RNG)."""
    _check_spec(spec)
    return UNet(
        ndim=spec["ndim"], in_channels=spec["in_channels"], out_channels=spec["out_channels"],
        depth=spec["depth"], width=spec["width"], norm=spec.get("norm", "batch"),
        dropout=float(spec.get("dropout", 0.0)),
    )


def divisor(spec: dict[str, Any]) -> int:
    """Every spatial input size must be a multiple of this (one halving per level)."""
    return 2 ** int(spec["depth"])


def model_spec_from_config(cfg: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    """The spec for the network of a validated config; channel counts come from data and task."""
    model = cfg["train"]["model"]
    spec = {
        "arch": model["arch"], "ndim": int(cfg["ndim"]), "in_channels": int(in_channels),
        "out_channels": int(out_channels), "depth": int(model["depth"]), "width": int(model["width"]),
        "norm": model["norm"], "dropout": float(model["dropout"]),
    }
    _check_spec(spec)
    return spec


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
