"""Target images: reading, header checks, and their normalization.

A restoration network predicts its targets in normalized units, per channel, with one affine
map for the whole dataset (statistics of every training target, the ``normalize`` section's
method), so that the map can be undone at prediction time and outputs come back in the
targets' own units (counts, grey values). The map is stored with the model (the checkpoint's
spec, key ``target_normalization``): ``normalized = (target - offset) / scale``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...core import imageio
from ...core.errors import InputError
from ...data.normalize import dataset_stats
from ...data.validate import canonical_shape

#: Normalization methods with dataset statistics; the others leave targets in their units.
STATISTICS = ("percentile", "minmax", "zscore")

#: Ranges narrower than this keep a scale of 1 (a constant channel has nothing to stretch).
_EPS = 1e-12


def read_target(path: str | Path, ndim: int, axes: str | None) -> np.ndarray:
    """A target image as (Z)YXC in its stored dtype (read with the images' axes rule)."""
    return imageio.read_image(path, ndim, axes)


def check_target_header(label: str, header_shape: tuple[int, ...], dtype: np.dtype, ndim: int, axes: str | None,
                        expected_spatial: Sequence[int], channels: int | None, image: str) -> None:
    """One line naming the target file when its header does not fit its image."""
    if np.dtype(dtype).kind not in "uif":
        raise InputError(label, f"unsupported target dtype {dtype} (expected integer or float pixels)")
    shape = canonical_shape(header_shape, dtype, ndim, label, axes)
    check_target_shape(label, shape, expected_spatial, channels, image)


def check_target_shape(label: str | Path | None, shape: Sequence[int], expected_spatial: Sequence[int],
                       channels: int | None, image: str | Path | None = None) -> None:
    spatial, found = tuple(int(s) for s in shape[:-1]), int(shape[-1])
    if spatial != tuple(int(s) for s in expected_spatial):
        of = f" for image {image}" if image else ""
        raise InputError(label, f"target of shape {spatial} does not have the expected shape "
                                f"{tuple(int(s) for s in expected_spatial)}{of}")
    if channels is not None and found != channels:
        raise InputError(label, f"target has {found} channels, expected {channels}")


def target_normalization(targets: Iterable[np.ndarray], cfg_normalize: dict[str, Any]) -> dict[str, list[float]]:
    """Per-channel ``offset`` and ``scale`` from all training targets ((Z)YXC arrays)."""
    targets = list(targets)
    channels = int(targets[0].shape[-1])
    method = cfg_normalize["method"]
    if method not in STATISTICS:
        return {"offset": [0.0] * channels, "scale": [1.0] * channels}
    stats = dataset_stats(targets, {**dict(cfg_normalize), "per_channel": True})
    if method == "zscore":
        offset, span = np.asarray(stats["mean"]), np.asarray(stats["std"])
    else:
        offset, span = np.asarray(stats["low"]), np.asarray(stats["high"]) - np.asarray(stats["low"])
    span = np.where(np.abs(span) > _EPS * np.maximum(1.0, np.abs(offset)), span, 1.0)
    return {"offset": [float(v) for v in offset], "scale": [float(v) for v in span]}


def identity_normalization(channels: int) -> dict[str, list[float]]:
    return {"offset": [0.0] * channels, "scale": [1.0] * channels}


def apply_normalization(target: np.ndarray, norm: dict[str, list[float]], channel_axis: int = -1) -> np.ndarray:
    """``(target - offset) / scale`` per channel, float32."""
    shape = [1] * target.ndim
    shape[channel_axis] = -1
    offset = np.asarray(norm["offset"], dtype=np.float32).reshape(shape)
    scale = np.asarray(norm["scale"], dtype=np.float32).reshape(shape)
    return ((np.asarray(target, dtype=np.float32) - offset) / scale).astype(np.float32, copy=False)


def foreground(target: np.ndarray) -> np.ndarray:
    """Pixels above the image's mean (of the channel mean): where the structure is, which
    half of the training patches are centred on (``train.foreground_fraction``)."""
    signal = np.asarray(target, dtype=np.float32).mean(axis=-1)
    return signal > signal.mean()
