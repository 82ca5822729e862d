"""The two pretext corruptions of self-supervised pre-training, on normalized (Z)YXC arrays.

- ``masked``: a random share of the cells of a grid of blocks is set to 0 (the normalized
  background); the network must fill the blocks in from their surroundings, which needs the
  shape and texture of the objects, not only their pixels. The loss scores the hidden pixels
  only, so copying the visible ones earns nothing.
- ``degraded``: Gaussian blur, camera-like binning by ``factor`` and back (the restoration
  workflows' binning and cubic upsampling, restoration/resample.py) and Gaussian noise; the
  network restores the original.

Both are pure functions of a random generator, which callers draw from a key (seed, stream,
epoch, item) for training patches or (seed, stream, image name) for test images: a rerun
corrupts exactly the same pixels.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ...core.errors import ConfigError
from ..restoration.resample import bin_mean, upsample

#: Random streams of the corruptions, apart from those of patches (1, 2) and denoising (11-13).
TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 21, 22, 23


def per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """One integer per (Z)YX axis from a number or a list of ``ndim`` numbers."""
    if isinstance(value, int):
        return (int(value),) * ndim
    if len(value) != ndim:
        raise ConfigError(name, f"has {len(value)} entries but ndim is {ndim}")
    return tuple(int(v) for v in value)


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of a test image's corruption: from the seed and the image's name."""
    return np.random.default_rng([int(seed) & 0xFFFF_FFFF, TEST_STREAM, zlib.crc32(name.encode())])


def block_mask(spatial: Sequence[int], block: Sequence[int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (Z)YX mask: ``round(ratio * cells)`` cells of a grid of ``block``-sized cells
    (at least one), drawn without replacement."""
    cells = [-(-int(n) // int(b)) for n, b in zip(spatial, block)]
    total = int(np.prod(cells))
    chosen = np.zeros(total, dtype=bool)
    chosen[rng.permutation(total)[: max(1, int(round(ratio * total)))]] = True
    grid = chosen.reshape(cells)
    for axis, b in enumerate(block):
        grid = np.repeat(grid, int(b), axis=axis)
    return grid[tuple(slice(0, int(n)) for n in spatial)]


def mask_blocks(image: np.ndarray, block: Sequence[int], ratio: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(copy of the (Z)YXC ``image`` with the hidden blocks at 0, the (Z)YX boolean mask)."""
    hidden = block_mask(image.shape[:-1], block, ratio, rng)
    masked = np.array(image, dtype=np.float32, copy=True)
    masked[hidden] = 0.0
    return masked, hidden


def degrade_same_size(image: np.ndarray, factors: Sequence[int], blur_sigma: float, noise: float,
                      rng: np.random.Generator) -> np.ndarray:
    """A (Z)YXC image blurred (sigma in pixels), binned by ``factors`` and upsampled back to its
    shape (edge-padded to a multiple of the factors, then cropped), plus Gaussian noise of
    standard deviation ``noise`` (in the image's units: normalized ones in training)."""
    x = np.asarray(image, dtype=np.float32)
    spatial = x.shape[:-1]
    if blur_sigma > 0:
        x = ndimage.gaussian_filter(x, [blur_sigma] * len(spatial) + [0.0], mode="nearest")
    if any(f > 1 for f in factors):
        pad = [(0, (-n) % f) for n, f in zip(spatial, factors)] + [(0, 0)]
        low = bin_mean(np.pad(x, pad, mode="edge"), factors)
        x = upsample(low, factors)[tuple(slice(0, n) for n in spatial)]
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)
