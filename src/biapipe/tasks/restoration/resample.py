"""Changes of resolution for super-resolution: the documented degradation that makes a
low-resolution input from a high-resolution image, and the cubic upsampling that puts an input
on the output grid (in memory, or lazily, region by region, for volumes larger than memory)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ...core.errors import InputError


def check_divisible(path: Any, spatial: Sequence[int], factors: Sequence[int]) -> None:
    if any(int(s) % int(f) for s, f in zip(spatial, factors)):
        raise InputError(path, f"high-resolution image of shape {tuple(spatial)} is not a multiple of the factor "
                               f"{list(factors)} per axis")


def bin_mean(image: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Camera-like binning of a (Z)YXC image: the mean of each block of factor pixels per axis."""
    spatial = image.shape[:-1]
    shape = []
    for n, f in zip(spatial, factors):
        shape += [n // f, f]
    blocks = np.asarray(image, dtype=np.float64).reshape(*shape, image.shape[-1])
    return blocks.mean(axis=tuple(range(1, 2 * len(spatial), 2))).astype(np.float32)


def degrade(image: np.ndarray, factors: Sequence[int], blur_sigma: float, noise: float, seed: int,
            name: str) -> np.ndarray:
    """High resolution -> low resolution: Gaussian blur (sigma ``blur_sigma`` x factor per axis,
    in high-resolution pixels), binning (mean of each block), then Gaussian noise of standard
    deviation ``noise`` x the image's 1-99.8 percentile range, drawn from (seed, name)."""
    x = np.asarray(image, dtype=np.float32)
    sigma = [blur_sigma * f if f > 1 else 0.0 for f in factors] + [0.0]
    if blur_sigma > 0:
        x = ndimage.gaussian_filter(x, sigma, mode="nearest")
    low = bin_mean(x, factors)
    if noise > 0:
        lo, hi = np.percentile(low, [1.0, 99.8])
        rng = np.random.default_rng([int(seed) & 0xFFFF_FFFF, zlib.crc32(name.encode())])
        low = low + rng.normal(0.0, noise * float(hi - lo), size=low.shape).astype(np.float32)
    return low


def upsample(image: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """A (Z)YXC float image enlarged by cubic convolution (models.layers.CubicUpsample)."""
    import torch

    from ...models.layers import CubicUpsample

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(image, dtype=np.float32), -1, 0))[None])
    with torch.no_grad():
        y = CubicUpsample(list(factors))(x)
    return np.ascontiguousarray(np.moveaxis(y[0].numpy(), 0, -1))


#: Low-resolution pixels read beyond a region on each side: cubic convolution has 4 taps.
MARGIN = 2


class Upsampled:
    """A lazy (Z)YXC image seen enlarged by ``factors``: a region read from it equals that region
    of the whole image upsampled (it reads the low-resolution region with a margin of two
    pixels and the cubic kernel repeats the edge only at the image's own borders)."""

    def __init__(self, source: Any, factors: Sequence[int]) -> None:
        self.source, self.factors = source, [int(f) for f in factors]
        self.shape = tuple(int(s) * f for s, f in zip(source.shape[:-1], self.factors)) + (int(source.shape[-1]),)
        chunks = getattr(source, "chunks", None) or source.shape
        self.chunks = tuple(int(c) * f for c, f in zip(chunks[:-1], self.factors)) + (int(self.shape[-1]),)
        self.dtype = np.dtype(np.float32)
        self.stats = getattr(source, "stats", None)
        self.path = getattr(source, "path", None)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        spatial = list(key[: self.ndim - 1]) + [slice(None)] * (self.ndim - 1 - len(key))
        channel = key[self.ndim - 1] if len(key) >= self.ndim else slice(None)
        src, crop = [], []
        for sl, f, n, big in zip(spatial, self.factors, self.source.shape[:-1], self.shape[:-1]):
            a, b, _ = sl.indices(big)
            lo, hi = max(a // f - MARGIN, 0), min(-(-b // f) + MARGIN, int(n))
            src.append(slice(lo, hi))
            crop.append(slice(a - lo * f, b - lo * f))
        region = np.asarray(self.source[tuple(src) + (slice(None),)], dtype=np.float32)
        return upsample(region, self.factors)[tuple(crop) + (channel,)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[tuple(slice(None) for _ in range(self.ndim))]
        return arr if dtype is None else arr.astype(dtype)
