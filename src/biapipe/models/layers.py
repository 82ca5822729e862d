"""Building blocks shared by every network: layer classes per dimensionality, normalization,
convolution blocks, attention gates. 2D and 3D differ only in the classes picked here.

This package imports nothing from biapipe but the error type, so its modules concatenated
are the architecture source of an exported model package (:mod:`biapipe.models.packaged`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError

NORMS = ("batch", "instance", "group", "none")

#: Largest number of groups for GroupNorm; fewer when the channel count is not divisible.
MAX_GROUPS = 8


def layer_classes(ndim: int) -> dict[str, type[nn.Module]]:
    """The dimension-specific layer classes; everything else in the U-Net is shared."""
    if ndim == 2:
        return {"conv": nn.Conv2d, "up": nn.ConvTranspose2d, "pool": nn.MaxPool2d,
                "batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "dropout": nn.Dropout2d}
    if ndim == 3:
        return {"conv": nn.Conv3d, "up": nn.ConvTranspose3d, "pool": nn.MaxPool3d,
                "batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d, "dropout": nn.Dropout3d}
    raise ConfigError("ndim", f"must be 2 or 3, got {ndim}")


def group_count(channels: int) -> int:
    """Largest divisor of ``channels`` up to MAX_GROUPS, so any width works with GroupNorm."""
    return next(g for g in range(min(MAX_GROUPS, channels), 0, -1) if channels % g == 0)


def norm_layer(kind: str, ndim: int, channels: int) -> nn.Module:
    if kind == "batch":
        return layer_classes(ndim)["batch"](channels)
    if kind == "instance":
        # affine so instance norm can still learn a per-channel scale like the other norms
        return layer_classes(ndim)["instance"](channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError("train.model.norm", f"unknown normalization '{kind}' (choose from {', '.join(NORMS)})")


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalization and ReLU."""

    def __init__(self, ndim: int, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0) -> None:
        conv = layer_classes(ndim)["conv"]
        # a bias right before a normalization layer is cancelled by it: skip the parameters
        bias = norm == "none"
        layers: list[nn.Module] = []
        if dropout > 0:
            layers.append(layer_classes(ndim)["dropout"](dropout))
        layers += [
            conv(in_ch, out_ch, kernel_size=3, padding=1, bias=bias), norm_layer(norm, ndim, out_ch), nn.ReLU(inplace=True),
            conv(out_ch, out_ch, kernel_size=3, padding=1, bias=bias), norm_layer(norm, ndim, out_ch), nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two convolutions with an identity (or 1x1 projection) shortcut: ``relu(body(x) + skip(x))``.

    The shortcut gives gradients a direct path through every level, which lets deeper
    or wider networks train as fast as shallow ones (He et al., 2016; ResUNet).
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        conv = layer_classes(ndim)["conv"]
        bias = norm == "none"
        body: list[nn.Module] = [layer_classes(ndim)["dropout"](dropout)] if dropout > 0 else []
        body += [
            conv(in_ch, out_ch, kernel_size=3, padding=1, bias=bias), norm_layer(norm, ndim, out_ch), nn.ReLU(inplace=True),
            conv(out_ch, out_ch, kernel_size=3, padding=1, bias=bias), norm_layer(norm, ndim, out_ch),
        ]
        self.body = nn.Sequential(*body)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Sequential(
            conv(in_ch, out_ch, kernel_size=1, bias=bias), norm_layer(norm, ndim, out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.skip(x))


class AttentionGate(nn.Module):
    """Additive attention on a skip connection (Oktay et al., 2018): ``skip * sigmoid(psi(...))``.

    The gate is computed from the skip and the up-sampled decoder features at the skip's
    resolution (rather than from the coarser level before up-sampling), so it works
    unchanged with anisotropic pooling: no strided convolution has to match the pool.
    """

    def __init__(self, ndim: int, skip_ch: int, gate_ch: int, norm: str) -> None:
        super().__init__()
        conv = layer_classes(ndim)["conv"]
        inter = max(1, skip_ch // 2)
        self.from_skip = nn.Sequential(conv(skip_ch, inter, kernel_size=1, bias=False), norm_layer(norm, ndim, inter))
        self.from_gate = nn.Sequential(conv(gate_ch, inter, kernel_size=1, bias=False), norm_layer(norm, ndim, inter))
        self.psi = nn.Sequential(conv(inter, 1, kernel_size=1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.relu(self.from_skip(skip) + self.from_gate(gate)))


class UpBlock(nn.Module):
    """Transposed-conv upsampling by ``factor``, concatenation with the (gated) skip, then a block."""

    def __init__(self, ndim: int, in_ch: int, skip_ch: int, out_ch: int, norm: str,
                 factor: tuple[int, ...] | int = 2, block: type[nn.Module] = ConvBlock,
                 attention: bool = False) -> None:
        super().__init__()
        self.up = layer_classes(ndim)["up"](in_ch, out_ch, kernel_size=factor, stride=factor)
        self.gate = AttentionGate(ndim, skip_ch, out_ch, norm) if attention else None
        self.conv = block(ndim, out_ch + skip_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([x, skip], dim=1))


class CubicUpsample(nn.Module):
    """Upsampling by integer factors per spatial axis with cubic convolution (Keys, a = -0.75,
    torch's bicubic), one axis at a time: the 2D result equals torch's bicubic, and 3D gets
    the same kernel along z, which torch has no mode for.

    Each 1D pass is a bicubic ``interpolate`` of a view with that axis as height and every
    other spatial axis folded into the width, where a width factor of 1 is exactly the identity.
    Borders repeat the edge pixel, so a region read with two input pixels of margin upsamples
    exactly like the whole image (what block-wise prediction of large volumes relies on).
    """

    def __init__(self, factors: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.factors = [int(f) for f in factors]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, factor in enumerate(self.factors):
            if factor == 1:
                continue
            dim = axis + 2
            moved = x.movedim(dim, 2)
            shape = moved.shape
            flat = moved.reshape(shape[0], shape[1], shape[2], -1)
            up = nn.functional.interpolate(flat, size=(shape[2] * factor, flat.shape[-1]), mode="bicubic",
                                           align_corners=False)
            x = up.reshape(shape[0], shape[1], shape[2] * factor, *shape[3:]).movedim(2, dim)
        return x
