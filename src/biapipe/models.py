"""Networks, described by a plain-dict spec so a checkpoint can rebuild them.

The spec (not a pickled module) is what goes into ``best.pt``: it is made only of
plain Python types, so ``torch.load(..., weights_only=True)`` can read a checkpoint
without trusting arbitrary code, and prediction rebuilds exactly the trained network.

2D and 3D share one U-Net: the layer classes are picked from ``ndim``; the
architectures (plain, residual, attention-gated) differ only in their blocks. This file
imports nothing from biapipe but its error type (with a stand-in when loaded alone), so
it doubles as the architecture source of an exported BioImage Model Zoo package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

try:
    from .errors import ConfigError
except ImportError:  # loaded as a single file: the architecture source of an exported model package

    class ConfigError(ValueError):  # type: ignore[no-redef]
        def __init__(self, key: str, problem: str) -> None:
            super().__init__(f"config key '{key}': {problem}")


ARCHITECTURES = ("unet", "resunet", "attention_unet")
NORMS = ("batch", "instance", "group", "none")

#: ``pool_z: auto`` keeps z unpooled while z spacing exceeds this multiple of the YX spacing.
ANISOTROPY_LIMIT = 2.0

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


class ResBlock(nn.Module):
    """Two convolutions with an identity (or 1x1 projection) shortcut: ``relu(body(x) + skip(x))``.

    The shortcut gives gradients a direct path through every level, which lets deeper
    or wider networks train as fast as shallow ones (He et al., 2016; ResUNet).
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        conv = _layers(ndim)["conv"]
        bias = norm == "none"
        body: list[nn.Module] = [_layers(ndim)["dropout"](dropout)] if dropout > 0 else []
        body += [
            conv(in_ch, out_ch, kernel_size=3, padding=1, bias=bias), _norm(norm, ndim, out_ch), nn.ReLU(inplace=True),
            conv(out_ch, out_ch, kernel_size=3, padding=1, bias=bias), _norm(norm, ndim, out_ch),
        ]
        self.body = nn.Sequential(*body)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Sequential(
            conv(in_ch, out_ch, kernel_size=1, bias=bias), _norm(norm, ndim, out_ch))
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
        conv = _layers(ndim)["conv"]
        inter = max(1, skip_ch // 2)
        self.from_skip = nn.Sequential(conv(skip_ch, inter, kernel_size=1, bias=False), _norm(norm, ndim, inter))
        self.from_gate = nn.Sequential(conv(gate_ch, inter, kernel_size=1, bias=False), _norm(norm, ndim, inter))
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
        self.up = _layers(ndim)["up"](in_ch, out_ch, kernel_size=factor, stride=factor)
        self.gate = AttentionGate(ndim, skip_ch, out_ch, norm) if attention else None
        self.conv = block(ndim, out_ch + skip_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([x, skip], dim=1))


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
                 pool_z: Sequence[bool] | None = None) -> None:
        super().__init__()
        block = ResBlock if arch == "resunet" else ConvBlock
        factors = pool_factors(ndim, depth, pool_z)
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        ch = in_channels
        for w in widths[:-1]:
            self.encoders.append(block(ndim, ch, w, norm))
            ch = w
        pool = _layers(ndim)["pool"]
        self.pools = nn.ModuleList(pool(kernel_size=f, stride=f) for f in factors)
        self.bottleneck = block(ndim, ch, widths[-1], norm, dropout)
        self.decoders = nn.ModuleList(
            UpBlock(ndim, widths[level + 1], widths[level], widths[level], norm, factors[level], block,
                    attention=arch == "attention_unet")
            for level in reversed(range(depth))
        )
        self.head = _layers(ndim)["conv"](widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.head(x)


def pool_factors(ndim: int, depth: int, pool_z: Sequence[bool] | None = None) -> list[tuple[int, ...]]:
    """Per level, the pooling (= up-sampling) factor of each spatial axis."""
    if ndim == 2:
        return [(2, 2)] * depth
    flags = [True] * depth if pool_z is None else [bool(f) for f in pool_z]
    return [(2 if f else 1, 2, 2) for f in flags]


def resolve_pool_z(setting: Any, depth: int, voxel_size: Sequence[float] | None = None,
                   patch_z: int | None = None) -> list[bool]:
    """Which levels of a 3D network pool z, from ``train.model.pool_z``.

    ``true``/``false``: every level or none; a list: one flag per level; ``auto``: like
    nnU-Net, leave z alone while its (current) spacing is more than twice the YX spacing,
    so features become about isotropic before z is reduced; and never pool a z extent
    that is odd (the patch would not fit the network). Both spacings double with each
    pooling.
    """
    key = "train.model.pool_z"
    if isinstance(setting, bool):
        return [setting] * depth
    if isinstance(setting, list | tuple):
        if len(setting) != depth or not all(isinstance(f, bool) for f in setting):
            raise ConfigError(key, f"a list needs one true/false per level ({depth}), got {list(setting)}")
        return list(setting)
    if setting != "auto":
        raise ConfigError(key, f"must be auto, true, false or a list of booleans, got {setting!r}")
    z_sp, xy_sp = (float(voxel_size[0]), float(min(voxel_size[1:]))) if voxel_size else (1.0, 1.0)
    flags = []
    for _ in range(depth):
        pool = z_sp <= ANISOTROPY_LIMIT * xy_sp and (patch_z is None or patch_z % 2 == 0)
        flags.append(pool)
        xy_sp *= 2
        if pool:
            z_sp *= 2
            patch_z = None if patch_z is None else patch_z // 2
    return flags


def _check_spec(spec: dict[str, Any]) -> None:
    """Reject a spec early with the config key to fix, rather than failing inside torch."""
    if spec.get("arch") not in ARCHITECTURES:
        raise ConfigError("train.model.arch", f"unknown architecture '{spec.get('arch')}' "
                                              f"(choose from {', '.join(ARCHITECTURES)})")
    check_network_spec(spec)


def check_network_spec(spec: dict[str, Any]) -> None:
    """Checks every network spec shares (segmentation and classification): sizes, norm, dropout."""
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
    pool_z = spec.get("pool_z")
    if pool_z is not None and (len(pool_z) != spec["depth"] or spec["ndim"] != 3):
        raise ConfigError("train.model.pool_z", f"needs one flag per level of a 3D network, got {pool_z}")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the network a spec describes (weights freshly initialized from torch's RNG)."""
    if spec.get("arch") == "resnet_classifier":  # image classification: see models_classify
        from .models_classify import build_classifier

        return build_classifier(spec)
    _check_spec(spec)
    return UNet(
        ndim=spec["ndim"], in_channels=spec["in_channels"], out_channels=spec["out_channels"],
        depth=spec["depth"], width=spec["width"], norm=spec.get("norm", "batch"),
        dropout=float(spec.get("dropout", 0.0)), arch=spec["arch"], pool_z=spec.get("pool_z"),
    )


def divisor_per_axis(spec: dict[str, Any]) -> tuple[int, ...]:
    """Per (Z)YX axis, the multiple every spatial input size must be of (product of the pool factors)."""
    factors = pool_factors(int(spec["ndim"]), int(spec["depth"]), spec.get("pool_z"))
    return tuple(math.prod(f[a] for f in factors) for a in range(int(spec["ndim"])))


def divisor(spec: dict[str, Any]) -> int | tuple[int, ...]:
    """Every spatial input size must be a multiple of this: one int when all axes agree
    (2D, isotropic 3D), else one per (Z)YX axis (z pooled fewer times)."""
    per_axis = divisor_per_axis(spec)
    return per_axis[0] if len(set(per_axis)) == 1 else per_axis


def model_spec_from_config(cfg: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    """The spec for the network of a validated config; channel counts come from data and task.

    3D specs carry the resolved per-level ``pool_z`` flags, so a checkpoint rebuilds the
    same network whatever the voxel size of later data.
    """
    if cfg.get("workflow") == "classification":  # whole-image classifier, not a U-Net
        from .models_classify import classifier_spec

        return classifier_spec(cfg, in_channels, out_channels)
    model = cfg["train"]["model"]
    spec = {
        "arch": model["arch"], "ndim": int(cfg["ndim"]), "in_channels": int(in_channels),
        "out_channels": int(out_channels), "depth": int(model["depth"]), "width": int(model["width"]),
        "norm": model["norm"], "dropout": float(model["dropout"]),
    }
    if spec["ndim"] == 3:
        patch = cfg["train"].get("patch_size")
        spec["pool_z"] = resolve_pool_z(model.get("pool_z", "auto"), spec["depth"],
                                        cfg.get("data", {}).get("voxel_size"), int(patch[0]) if patch else None)
    _check_spec(spec)
    return spec


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- packaged (BioImage Model Zoo)


class ActivatedNet(nn.Module):
    """A network followed by its task's activation, as one module for export.

    ``activation`` is one entry per output channel: ``["sigmoid"]`` or ``["sigmoid", offset]``
    (a fixed logit offset added first), ``["clamp", low, high]`` or ``["identity"]``; or the
    single entry ``["softmax"]`` over all channels. Consumers of an exported model then get
    the same quantities ``biapipe predict`` stores.
    """

    def __init__(self, net: nn.Module, activation: list[list[Any]]) -> None:
        super().__init__()
        self.net = net
        self.softmax = len(activation) == 1 and activation[0][0] == "softmax"
        kinds = [] if self.softmax else [a[0] for a in activation]
        self.sigmoid_mask = [k == "sigmoid" for k in kinds]
        self.offset = [float(a[1]) if a[0] == "sigmoid" and len(a) > 1 else 0.0 for a in activation] if kinds else []
        self.low = [float(a[1]) if a[0] == "clamp" else -math.inf for a in activation] if kinds else []
        self.high = [float(a[2]) if a[0] == "clamp" else math.inf for a in activation] if kinds else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.softmax:
            return torch.softmax(y, dim=1)
        parts = []
        for c in range(len(self.sigmoid_mask)):
            part = y[:, c:c + 1]
            if self.sigmoid_mask[c]:
                parts.append(torch.sigmoid(part + self.offset[c]))
            else:
                parts.append(part.clamp(self.low[c], self.high[c]))
        return torch.cat(parts, dim=1)


def packaged_network(spec: dict[str, Any], activation: list[list[Any]]) -> nn.Module:
    """Entry point named in an exported model's rdf.yaml: the network plus its activation."""
    return ActivatedNet(build_model(spec), activation)
