"""How a U-Net pools each axis, without torch: the planner (at parse time) and the network
builder (at training time) resolve ``train.model.pool_z`` the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import ConfigError

#: ``pool_z: auto`` keeps z unpooled while z spacing exceeds this multiple of the YX spacing.
ANISOTROPY_LIMIT = 2.0


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
