"""Demo data of the restoration workflows: the synthetic nuclei of :mod:`biapipe.data.demo`,
degraded. The noise-free rendering is the clean target; one camera frame of it is the noisy
image, a second, independent frame the Noise2Noise target; its mean-binned copy is the
low-resolution input of super-resolution; and a phase-contrast-like rendering (edges of the
nuclei, no stain) is the input of image-to-image, whose targets are two "stains" (the nuclei
and their envelopes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...core.imageio import write_tiff
from ...data.demo import SPLITS, add_camera_noise, clean_counts, demo_ids, make_signal
from .resample import bin_mean

#: Second noisy frames of the denoising demo (the Noise2Noise targets).
SECOND_FRAME = "noisy2"
#: Channel names of the image-to-image demo targets.
STAINS = ["nuclei", "envelope"]


def denoising_demo(folder: str | Path, ndim: int, n: Sequence[int], size: int, seed: int) -> None:
    """images/ (one noisy frame), targets/ (clean), noisy2/ (a second noisy frame)."""
    folder = Path(folder)
    for split, names in demo_ids(*n).items():
        for index, name in enumerate(names):
            rng, signal, _ = make_signal(ndim, size, seed, split, index)
            second = np.random.default_rng([seed % 2**64, SPLITS.index(split), index, 1])
            write_tiff(folder / split / "images" / f"{name}.tif", add_camera_noise(rng, signal))
            write_tiff(folder / split / "targets" / f"{name}.tif", clean_counts(signal))
            write_tiff(folder / split / SECOND_FRAME / f"{name}.tif", add_camera_noise(second, signal))


def super_resolution_demo(folder: str | Path, ndim: int, n: Sequence[int], size: int, seed: int,
                          factors: Sequence[int]) -> None:
    """targets/ (clean, high resolution), images/ (the same binned by ``factors``: mean of each block)."""
    folder = Path(folder)
    for split, names in demo_ids(*n).items():
        for index, name in enumerate(names):
            _, signal, _ = make_signal(ndim, size, seed, split, index)
            high = clean_counts(signal)
            low = bin_mean(high[..., np.newaxis], factors)[..., 0]
            write_tiff(folder / split / "targets" / f"{name}.tif", high)
            write_tiff(folder / split / "images" / f"{name}.tif", np.round(low).astype(np.uint16))


def image_to_image_demo(folder: str | Path, ndim: int, n: Sequence[int], size: int, seed: int) -> None:
    """images/ (phase-like: the nuclei's edges over a flat level, with noise), targets/ ((Z)YXC:
    the clean nuclei and their envelopes)."""
    folder = Path(folder)
    for split, names in demo_ids(*n).items():
        for index, name in enumerate(names):
            rng, signal, labels = make_signal(ndim, size, seed, split, index)
            edges = -ndimage.gaussian_laplace(signal, 1.5)
            phase = 1000.0 + 8000.0 * edges + rng.normal(0.0, 20.0, size=signal.shape)
            inside = labels > 0
            envelope = ndimage.gaussian_filter((inside & ~ndimage.binary_erosion(inside)).astype(np.float32), 1.0)
            stains = np.stack([clean_counts(signal), clean_counts(0.8 * envelope)], axis=-1)
            write_tiff(folder / split / "images" / f"{name}.tif", np.clip(phase, 0, 65535).astype(np.uint16))
            write_tiff(folder / split / "targets" / f"{name}.tif", stains)
