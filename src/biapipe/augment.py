"""Geometric augmentation applied identically to an image patch and its target.

Only flips and 90-degree rotations: they are exact (no interpolation), so integer
class maps stay integer and ignored pixels stay ignored, and they are cheap enough
to run in the main process on CPU.

Every random draw comes from the ``numpy.random.Generator`` passed in, and the
number of draws does not depend on the outcome (a non-square patch still draws its
rotation), so the sequence of patches is a pure function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Augmenter:
    """Random flips along each spatial axis and random YX rotations by k*90 degrees.

    Arrays are C(Z)YX; the first axis is channels and is never touched.
    Note: this is only correct for targets that are scalar per pixel (class maps,
    masks, distance maps); vector-valued targets (flows, offsets) would need their
    components changed too.
    """

    flip: float = 0.5
    rot90: float = 0.5

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Augmenter:
        aug = cfg["train"]["augment"]
        return cls(flip=float(aug["flip"]), rot90=float(aug["rot90"]))

    def __call__(self, image: np.ndarray, target: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return augment_pair(image, target, rng, self.flip, self.rot90)


def augment_pair(image: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                 flip: float = 0.5, rot90: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random flip/rotation combination to both C(Z)YX arrays; returns contiguous copies."""
    if image.shape[1:] != target.shape[1:]:
        raise ValueError(f"image {image.shape} and target {target.shape} differ in spatial shape")
    spatial_axes = range(1, image.ndim)
    flips = rng.random(len(spatial_axes)) < flip
    rotate = rng.random() < rot90
    k = int(rng.integers(1, 4))
    for axis, do_flip in zip(spatial_axes, flips):
        if do_flip:
            image, target = np.flip(image, axis), np.flip(target, axis)
    if rotate and image.shape[-1] == image.shape[-2]:
        image, target = np.rot90(image, k, axes=(-2, -1)), np.rot90(target, k, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(target)
