"""Architectures by name: a checkpoint's spec names its ``arch``, and this table builds it.

A spec is a plain dict (what ``best.pt`` stores instead of pickled code, so
``torch.load(..., weights_only=True)`` can read any checkpoint): ``arch``, ``ndim``,
channel counts, depth and width, and what the architecture needs besides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.errors import ConfigError
from .classifier import ARCH, build_classifier
from .layers import NORMS
from .pooling import pool_factors
from .unet import UNET_ARCHITECTURES, build_unet

#: arch -> builder of the network a spec describes (weights freshly drawn from torch's RNG).
ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    **{name: build_unet for name in UNET_ARCHITECTURES},
    ARCH: build_classifier,
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The network a spec describes; a bad spec is a ConfigError naming the key to fix."""
    builder = ARCHITECTURES.get(spec.get("arch"))
    if builder is None:
        raise ConfigError("train.model.arch", f"unknown architecture '{spec.get('arch')}' "
                                              f"(choose from {', '.join(UNET_ARCHITECTURES)})")
    check_network_spec(spec)
    return builder(spec)


def check_network_spec(spec: dict[str, Any]) -> None:
    """Checks every network spec shares: sizes, norm, dropout, pool flags."""
    if spec.get("ndim") not in (2, 3):
        raise ConfigError("ndim", f"must be 2 or 3, got {spec.get('ndim')}")
    for key in ("in_channels", "out_channels", "depth", "width"):
        value = spec.get(key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"train.model.{key}", f"must be a positive integer, got {value!r}")
    if spec["norm"] not in NORMS:
        raise ConfigError("train.model.norm", f"unknown normalization '{spec['norm']}'")
    if not 0.0 <= float(spec["dropout"]) < 1.0:
        raise ConfigError("train.model.dropout", f"must be in [0, 1), got {spec['dropout']}")
    pool_z = spec.get("pool_z")
    if pool_z is not None and (len(pool_z) != spec["depth"] or spec["ndim"] != 3):
        raise ConfigError("train.model.pool_z", f"needs one flag per level of a 3D network, got {pool_z}")


def divisor_per_axis(spec: dict[str, Any]) -> tuple[int, ...]:
    """Per (Z)YX axis, the multiple every spatial input size must be of (product of the pool factors)."""
    factors = pool_factors(int(spec["ndim"]), int(spec["depth"]), spec.get("pool_z"))
    return tuple(math.prod(f[a] for f in factors) for a in range(int(spec["ndim"])))


def divisor(spec: dict[str, Any]) -> int | tuple[int, ...]:
    """Every spatial input size must be a multiple of this: one int when all axes agree
    (2D, isotropic 3D), else one per (Z)YX axis (z pooled fewer times)."""
    per_axis = divisor_per_axis(spec)
    return per_axis[0] if len(set(per_axis)) == 1 else per_axis


#: Parameter-name prefixes of each architecture's encoder (what ``train.fine_tune`` holds fixed or
#: slows down); the rest (decoder, head) adapts to a new task first.
ENCODERS: dict[str, tuple[str, ...]] = {**{name: ("encoders.", "bottleneck.") for name in UNET_ARCHITECTURES},
                                        ARCH: ("stem.", "stages.")}
#: Parameter-name prefix of every architecture's output layer (drawn afresh when its shape changes).
HEAD = "head."


def encoder_prefixes(spec: dict[str, Any]) -> tuple[str, ...]:
    return ENCODERS.get(spec.get("arch"), ())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
