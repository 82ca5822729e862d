"""The U-Net: one class for 2D and 3D, plain, residual or attention-gated, with per-level
z pooling for anisotropic volumes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from .layers import ConvBlock, ResBlock, UpBlock, layer_classes
from .pooling import pool_factors, resolve_pool_z

UNET_ARCHITECTURES = ("unet", "resunet", "attention_unet")

class UNet(nn.Module):
    """U-Net with ``depth`` pooling steps; feature maps double at each level from ``width``.

    ``arch`` picks the blocks: ``unet`` (plain double convolutions), ``resunet``
    (residual blocks), ``attention_unet`` (plain blocks, attention gates on the skips).
    ``pool_z`` (3D) says per level whether z is pooled too or only YX (anisotropic
    volumes). Spatial input sizes must be multiples of :func:`divisor`; the output has
    the input's spatial size and ``out_channels`` logits.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, depth: int = 3, width: int = 16,
                 norm: str = "batch", dropout: float = 0.0, arch: str = "unet",
                 pool_z: Sequence[bool] | None = None, residual: bool = False) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ConfigError("train.model", f"a residual U-Net needs as many outputs as inputs, got "
                                             f"{in_channels} -> {out_channels}")
        #: add the input to the output (restoration of an image into its own kind: the network
        #: learns the correction, as CARE does)
        self.residual = residual
        block = ResBlock if arch == "resunet" else ConvBlock
        factors = pool_factors(ndim, depth, pool_z)
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        ch = in_channels
        for w in widths[:-1]:
            self.encoders.append(block(ndim, ch, w, norm))
            ch = w
        pool = layer_classes(ndim)["pool"]
        self.pools = nn.ModuleList(pool(kernel_size=f, stride=f) for f in factors)
        self.bottleneck = block(ndim, ch, widths[-1], norm, dropout)
        self.decoders = nn.ModuleList(
            UpBlock(ndim, widths[level + 1], widths[level], widths[level], norm, factors[level], block,
                    attention=arch == "attention_unet")
            for level in reversed(range(depth))
        )
        self.head = layer_classes(ndim)["conv"](widths[0], out_channels, kernel_size=1)
        if residual:  # start as the identity: training learns the correction, not the image
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.head(x) + inputs if self.residual else self.head(x)


def unet_spec(model: dict[str, Any], ndim: int, in_channels: int, out_channels: int,
              voxel_size: Sequence[float] | None, patch_size: Sequence[int]) -> dict[str, Any]:
    """The spec of a U-Net from the ``train.model`` section; channel counts come from data and task.

    3D specs carry the resolved per-level ``pool_z`` flags, so a checkpoint rebuilds the
    same network whatever the voxel size of later data.
    """
    spec = {
        "arch": model["arch"], "ndim": int(ndim), "in_channels": int(in_channels),
        "out_channels": int(out_channels), "depth": int(model["depth"]), "width": int(model["width"]),
        "norm": model["norm"], "dropout": float(model["dropout"]),
    }
    if spec["ndim"] == 3:
        spec["pool_z"] = resolve_pool_z(model["pool_z"], spec["depth"], voxel_size, int(patch_size[0]))
    return spec


def build_unet(spec: dict[str, Any]) -> UNet:
    return UNet(ndim=spec["ndim"], in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                depth=spec["depth"], width=spec["width"], norm=spec["norm"], dropout=float(spec["dropout"]),
                arch=spec["arch"], pool_z=spec.get("pool_z"), residual=bool(spec.get("residual", False)))
