"""Intensity normalization: raw pixels of any dtype -> float32 on a comparable scale.

A network trained on one intensity range fails silently on another, so every image is
mapped through the same rule before training and prediction. The rule's parameters
(statistics) come either from each image itself or, with ``normalize.scope: dataset``,
once from the training images; in the second case they are stored as JSON, hence the
plain-float dictionaries below.

Statistics are per channel (``per_channel: true``) or shared by all channels; in the
shared case each list holds one value that is broadcast over the channels. Functions take
the validated ``normalize`` section (:func:`biapipe.core.config.defaults` makes one).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError, InputError

METHODS = ("percentile", "minmax", "zscore", "dtype_max", "none")

#: Percentile statistics over a dataset pool at most this many pixels (per channel) in
#: total, whatever the number of images, so memory stays bounded.
MAX_POOLED_PIXELS = 2_000_000
#: ... and take at most this many from any one image, so a single huge volume cannot
#: dominate the pool.
MAX_PIXELS_PER_IMAGE = 200_000

#: Ranges narrower than this are treated as constant (no division by ~0).
_EPS = 1e-12


# --------------------------------------------------------------------------- checks


def check_finite(image: np.ndarray, path: str | Path | None = None) -> None:
    """Reject NaN/Inf before they poison statistics and, through them, every later tensor."""
    if image.dtype.kind not in "fc":
        return
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if bad:
        raise InputError(path, f"contains {bad} NaN/Inf pixels")


# --------------------------------------------------------------------------- statistics


def compute_stats(image: np.ndarray, cfg: dict[str, Any]) -> dict[str, Any]:
    """Statistics of one (Z)YXC image for the configured method (JSON-serialisable)."""
    method = cfg["method"]
    stats: dict[str, Any] = {"method": method, "per_channel": bool(cfg["per_channel"])}
    if method in ("percentile", "minmax", "zscore"):
        pixels = _pixels(image, cfg["per_channel"])
        stats.update(_stats_of_pixels(pixels, cfg))
    elif method == "dtype_max":
        stats["scale"] = [dtype_scale(image.dtype)]
    return stats


def dataset_stats(images: Iterable[np.ndarray], cfg: dict[str, Any]) -> dict[str, Any]:
    """Statistics of all training images together, in one pass with bounded memory.

    minmax, zscore and dtype_max are exact (running min/max, pooled mean and variance,
    largest dtype). Percentiles are approximate: each image contributes a deterministic
    random subsample of at most MAX_PIXELS_PER_IMAGE pixels (all of them if fewer), and
    whenever the pool exceeds MAX_POOLED_PIXELS every stored sample is halved and later
    images contribute half as many. Images therefore weigh about equally, whatever
    their size, and the percentiles are those of a pool of 1-2 million pixels: their
    rank error is of order 1/sqrt(pool size), i.e. well below 0.1 percentile points.
    """
    method = cfg["method"]
    stats: dict[str, Any] = {"method": method, "per_channel": bool(cfg["per_channel"])}
    accumulator = _ACCUMULATORS.get(method)
    if accumulator is None:
        return stats
    acc = accumulator(cfg)
    n_channels: int | None = None
    for index, image in enumerate(images):
        pixels = _pixels(image, cfg["per_channel"])
        if n_channels is not None and pixels.shape[1] != n_channels:
            raise InputError(None, f"training image {index} has {pixels.shape[1]} channels, the first had {n_channels}")
        n_channels = pixels.shape[1]
        acc.add(index, pixels, image.dtype)
    if n_channels is None:
        raise InputError(None, "no training images to compute normalization statistics from")
    stats.update(acc.result())
    return stats


def _pixels(image: np.ndarray, per_channel: bool) -> np.ndarray:
    """(pixels, channels) view of a (Z)YXC image; one column when channels share statistics."""
    image = np.asarray(image)
    return image.reshape(-1, image.shape[-1]) if per_channel else image.reshape(-1, 1)


def _stats_of_pixels(pixels: np.ndarray, cfg: dict[str, Any]) -> dict[str, list[float]]:
    method = cfg["method"]
    if pixels.shape[0] == 0:
        raise InputError(None, "cannot normalize an empty image")
    if method == "percentile":
        low, high = np.percentile(pixels, [cfg["low"], cfg["high"]], axis=0)
        return {"low": _floats(low), "high": _floats(high)}
    if method == "minmax":
        return {"low": _floats(pixels.min(axis=0)), "high": _floats(pixels.max(axis=0))}
    data = pixels.astype(np.float64, copy=False)
    return {"mean": _floats(data.mean(axis=0)), "std": _floats(data.std(axis=0))}


def dtype_scale(dtype: np.dtype) -> float:
    """Integers: their largest value. Floats carry no such maximum; assume they are in [0, 1]."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.atleast_1d(values)]


class _PercentilePool:
    """Bounded deterministic pixel pool (see dataset_stats for the approximation)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.samples: list[np.ndarray] = []
        self.per_image = MAX_PIXELS_PER_IMAGE
        self.size = 0

    def add(self, index: int, pixels: np.ndarray, dtype: np.dtype) -> None:
        n = pixels.shape[0]
        if n > self.per_image:
            # Seeded by position: same images in the same order give the same statistics.
            rows = np.random.default_rng(index).integers(0, n, size=self.per_image)
            pixels = pixels[np.sort(rows)]
        self.samples.append(np.asarray(pixels, dtype=np.float64))
        self.size += pixels.shape[0]
        while self.size > MAX_POOLED_PIXELS:
            self.samples = [s[::2] for s in self.samples]
            self.size = sum(s.shape[0] for s in self.samples)
            self.per_image = max(1, self.per_image // 2)

    def result(self) -> dict[str, list[float]]:
        return _stats_of_pixels(np.concatenate(self.samples, axis=0), self.cfg)


class _MinMax:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def add(self, index: int, pixels: np.ndarray, dtype: np.dtype) -> None:
        low, high = pixels.min(axis=0).astype(np.float64), pixels.max(axis=0).astype(np.float64)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def result(self) -> dict[str, list[float]]:
        return {"low": _floats(self.low), "high": _floats(self.high)}


class _MeanStd:
    """Pooled mean and variance by Chan's pairwise update: stable for many large images."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.count = 0
        self.mean: np.ndarray | float = 0.0
        self.m2: np.ndarray | float = 0.0

    def add(self, index: int, pixels: np.ndarray, dtype: np.dtype) -> None:
        data = pixels.astype(np.float64, copy=False)
        n = data.shape[0]
        if n == 0:
            return
        mean = data.mean(axis=0)
        m2 = ((data - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    def result(self) -> dict[str, list[float]]:
        return {"mean": _floats(self.mean), "std": _floats(np.sqrt(self.m2 / self.count))}


class _DtypeMax:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.scale = 0.0

    def add(self, index: int, pixels: np.ndarray, dtype: np.dtype) -> None:
        self.scale = max(self.scale, dtype_scale(dtype))

    def result(self) -> dict[str, list[float]]:
        return {"scale": [self.scale]}


_ACCUMULATORS = {"percentile": _PercentilePool, "minmax": _MinMax, "zscore": _MeanStd, "dtype_max": _DtypeMax}


# --------------------------------------------------------------------------- applying


def normalize(
    image: np.ndarray, cfg: dict[str, Any], stats: dict[str, Any] | None = None
) -> np.ndarray:
    """Map a (Z)YXC image to float32 (Z)YXC; ``stats=None`` means this image's own statistics.

    A channel whose range (or std) is zero becomes all zeros: there is no contrast to
    stretch, and dividing by ~0 would turn sensor noise into huge values.
    """
    method = cfg["method"]
    out = np.array(image, dtype=np.float32, copy=True)
    if method == "none":
        return out
    if stats is None:
        stats = fixed_stats(cfg) or compute_stats(image, cfg)
    _check_stats(stats, cfg, out.shape[-1])
    if method in ("percentile", "minmax"):
        _affine(out, _vector(stats["low"]), _vector(stats["high"]) - _vector(stats["low"]))
    elif method == "zscore":
        _affine(out, _vector(stats["mean"]), _vector(stats["std"]))
    else:
        out /= np.float32(stats["scale"][0])
    # zscore has no natural [0, 1] range; clipping it would throw away half the data.
    if cfg["clip"] and method != "zscore":
        np.clip(out, 0.0, 1.0, out=out)
    return out


def fixed_stats(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """``normalize.stats`` when statistics are the dataset's and fixed in the config (e.g. the
    ones a model was trained with), else None."""
    stats = cfg.get("stats")
    if not stats or cfg["scope"] != "dataset":
        return None
    return {"method": cfg["method"], "per_channel": bool(cfg["per_channel"]), **dict(stats)}


def _vector(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _affine(out: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> None:
    """In place (out - offset) / scale per channel; channels with scale ~0 become 0."""
    flat = np.abs(scale) <= _EPS * np.maximum(1.0, np.abs(offset))
    safe = np.where(flat, 1.0, scale)
    out -= offset.astype(np.float32)
    out *= (1.0 / safe).astype(np.float32)
    if flat.any():
        out[..., np.broadcast_to(flat, (out.shape[-1],))] = 0.0


def _check_stats(stats: dict[str, Any], cfg: dict[str, Any], n_channels: int) -> None:
    """Stale or foreign statistics would normalize silently wrong; refuse them instead."""
    if stats.get("method", cfg["method"]) != cfg["method"]:
        raise ConfigError(
            "normalize.method", f"is '{cfg['method']}' but the statistics were computed for '{stats['method']}'"
        )
    for key in ("low", "high", "mean", "std"):
        values = stats.get(key)
        if values is not None and len(values) not in (1, n_channels):
            raise InputError(
                None, f"normalization statistics have {len(values)} channels but the image has {n_channels}"
            )
