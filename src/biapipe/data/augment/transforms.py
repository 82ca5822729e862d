"""The augmentations, one entry each: name (its ``train.augment`` key), range key, neutral
value, stage, and what applies it; and the random stream every one of them draws from.

Each transform draws from a stream of its own, derived from ``(seed, epoch, patch index,
transform name)``: whether it runs, its parameter, and the seed of its per-pixel randomness
(noise, elastic field, cutout boxes). Adding a transform, or switching one off, therefore
never changes what the others do to a patch.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import intensity

#: (seed entropy, stream, epoch, index): what a patch's augmentation is a pure function of.
Key = tuple[int, ...]

#: Seeds of per-pixel torch generators stay below 2**52, so they survive a float64 round trip.
SEED_LIMIT = 2**52


def stream(key: Key, name: str) -> np.random.Generator:
    """The random stream of transform ``name`` for the patch ``key``."""
    return np.random.default_rng([*(int(k) for k in key), zlib.crc32(name.encode())])


#: What an intensity transform does: (image C(Z)YX, value, generator, augmenter) -> image.
Apply = Callable[[torch.Tensor, float, torch.Generator, Any], torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """One augmentation of the torch stage (the exact flips and rot90 are drawn in numpy)."""

    name: str
    range_key: str
    neutral: float
    stage: str  # "geometric" or "intensity"
    #: intensity transforms: how to apply the drawn value
    apply: Apply | None = None
    #: the value is a count (cutout holes): drawn from [low, high] inclusive
    integer: bool = False

    def draw(self, settings: dict[str, Any], key: Key) -> tuple[float, float]:
        """(value, seed) for one patch: the neutral value when the transform does not run.
        Always three draws from the transform's own stream, whatever the outcome."""
        rng = stream(key, self.name)
        runs = rng.random() < float(settings[self.name])
        u = rng.random()
        seed = float(rng.integers(0, SEED_LIMIT))
        if not runs:
            return self.neutral, seed
        low, high = settings[self.range_key]
        if self.integer:
            return float(int(low + (high + 1 - low) * u)), seed
        return float(low + (high - low) * u), seed


TRANSFORMS: tuple[Transform, ...] = (
    Transform("rotate", "rotate_range", 0.0, "geometric"),
    Transform("scale", "scale_range", 1.0, "geometric"),
    Transform("elastic", "elastic_magnitude", 0.0, "geometric"),
    Transform("blur", "blur_range", 0.0, "intensity",
              lambda x, v, g, aug: intensity.gaussian_blur(x, v, aug.anisotropy)),
    Transform("poisson_noise", "poisson_noise_range", 0.0, "intensity",
              lambda x, v, g, aug: intensity.poisson_noise(x, v, g)),
    Transform("gaussian_noise", "gaussian_noise_range", 0.0, "intensity",
              lambda x, v, g, aug: intensity.gaussian_noise(x, v, g)),
    Transform("brightness", "brightness_range", 0.0, "intensity", lambda x, v, g, aug: intensity.brightness(x, v)),
    Transform("contrast", "contrast_range", 1.0, "intensity", lambda x, v, g, aug: intensity.contrast(x, v)),
    Transform("gamma", "gamma_range", 1.0, "intensity", lambda x, v, g, aug: intensity.gamma_correct(x, v)),
    Transform("cutout", "cutout_holes", 0.0, "intensity",
              lambda x, v, g, aug: intensity.cutout(x, int(v), g, tuple(aug.settings["cutout_size"])), integer=True),
)
NAMES = tuple(t.name for t in TRANSFORMS)


@dataclass(frozen=True)
class AugmentDraw:
    """The torch-stage values of one patch (one per transform, neutral = not applied) and the
    seeds of their per-pixel randomness, in :data:`TRANSFORMS` order."""

    values: tuple[float, ...]
    seeds: tuple[float, ...]

    @classmethod
    def of(cls, seeds: Sequence[float] | None = None, **values: float) -> AugmentDraw:
        """A draw with the given values and every other transform neutral (tests, debugging)."""
        unknown = set(values) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown transform(s) {sorted(unknown)}")
        return cls(tuple(float(values.get(t.name, t.neutral)) for t in TRANSFORMS),
                   tuple(float(s) for s in seeds) if seeds is not None else tuple(float(i) for i in range(len(NAMES))))

    def __getitem__(self, name: str) -> float:
        return self.values[NAMES.index(name)]

    def without(self, name: str) -> AugmentDraw:
        """The same draw with transform ``name`` neutral (done elsewhere)."""
        k = NAMES.index(name)
        return AugmentDraw(self.values[:k] + (TRANSFORMS[k].neutral,) + self.values[k + 1:], self.seeds)

    def seed(self, name: str) -> int:
        return int(self.seeds[NAMES.index(name)])

    def runs(self, transform: Transform) -> bool:
        return self[transform.name] != transform.neutral

    @property
    def is_geometric(self) -> bool:
        return any(self.runs(t) for t in TRANSFORMS if t.stage == "geometric")

    @property
    def is_intensity(self) -> bool:
        return any(self.runs(t) for t in TRANSFORMS if t.stage == "intensity")

    @property
    def is_neutral(self) -> bool:
        return not (self.is_geometric or self.is_intensity)

    def to_tensor(self) -> torch.Tensor:
        """One float64 row (values, then seeds), so a batch of draws collates like any tensor."""
        return torch.tensor([*self.values, *self.seeds], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, row: torch.Tensor) -> AugmentDraw:
        values = [float(v) for v in row.tolist()]
        return cls(tuple(values[: len(NAMES)]), tuple(values[len(NAMES):]))
