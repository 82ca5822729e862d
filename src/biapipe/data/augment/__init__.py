"""Augmentation applied consistently to an image patch and its target (``train.augment``).

Two stages, because they have different costs and different exactness:

1. **Exact** transforms (flips along every axis, 90-degree rotations in YX) run in numpy
   in the data path. They move pixels without interpolation, so class maps stay integer
   and ignored pixels stay ignored.
2. **Interpolating and intensity** transforms (:mod:`.transforms`: rotation, zoom, elastic
   deformation; blur, Poisson and Gaussian noise, brightness, contrast, gamma, cutout) run
   in torch: one sampling grid per patch (:mod:`.geometric`) and the intensity functions
   (:mod:`.intensity`). When training on CUDA they run batched on the GPU after the batch
   is moved there; on CPU the same code runs per patch in the data path. A zoom out (< 1) is
   the exception: the data path reads the patch's real surroundings and resizes them
   (``data.patches``), so the drawn zoom is done before this stage.

Determinism: each transform draws from its own stream, keyed by ``(seed, epoch, patch
index, transform name)`` (:func:`.transforms.stream`), so a patch is a pure function of that
key: CPU runs, resumed runs and loader workers see the same patches, and adding a
transform never shifts the others. A CUDA run is repeatable too, but its per-pixel noise
differs from a CPU run's.

Defaults follow nnU-Net's (Isensee et al., 2021) probabilities: rotation 0.2, scaling
0.2 (0.7-1.4), Gaussian noise 0.1, blur 0.2 (sigma 0.5-1), brightness 0.15,
contrast 0.15 (0.75-1.25), gamma 0.3 (0.7-1.5); elastic deformation, Poisson noise and
cutout are off by default, as in nnU-Net v2 and BiaPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.config import defaults
from ...core.errors import ConfigError
from .debug import write_augment_samples
from .geometric import IGNORE_INDEX, resample, sampling_grid
from .transforms import TRANSFORMS, AugmentDraw, Key, Transform, stream

__all__ = ["IGNORE_INDEX", "AugmentDraw", "Augmenter", "Key", "anisotropy", "flip_rotate", "write_augment_samples"]


def anisotropy(voxel_size: Sequence[float] | None) -> float:
    """z spacing over the finest YX spacing for 3D voxel sizes; 1 for 2D or unknown sizes."""
    if not voxel_size or len(voxel_size) != 3:
        return 1.0
    return float(voxel_size[0]) / float(min(voxel_size[1:]))


@dataclass(frozen=True)
class Augmenter:
    """The ``train.augment`` section, ready to draw and apply.

    Arrays are C(Z)YX; the first axis is channels. Only correct for targets that are
    scalar per pixel (class maps, masks, distance maps): vector-valued targets (flows,
    offsets) would need their components rotated too.
    """

    settings: dict[str, Any]
    #: z voxel size over YX voxel size: z displacements and z blur are divided by it
    anisotropy: float = 1.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Augmenter:
        return cls(cfg["train"]["augment"], anisotropy(cfg["data"]["voxel_size"]))

    @classmethod
    def defaults(cls, voxel_size: Sequence[float] | None = None, **overrides: Any) -> Augmenter:
        """The schema's ``train.augment`` with ``overrides`` (for callers without a config)."""
        return cls(defaults("train.augment", **overrides), anisotropy(voxel_size))

    def __post_init__(self) -> None:
        for key, value in self.settings.items():
            if isinstance(value, list | tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ConfigError(f"train.augment.{key}", f"must be [low, high] with low <= high, got {list(value)}")

    # ------------------------------------------------------------------ exact stage (numpy)
    def exact(self, image: np.ndarray, target: np.ndarray, key: Key) -> tuple[np.ndarray, np.ndarray]:
        """Flips along each spatial axis and a rotation by k x 90 degrees in YX, each from its own stream."""
        flips = stream(key, "flip").random(image.ndim - 1) < float(self.settings["flip"])
        rng = stream(key, "rot90")
        rotate, k = rng.random() < float(self.settings["rot90"]), int(rng.integers(1, 4))
        return flip_rotate(image, target, flips, k if rotate else 0)

    # ------------------------------------------------------------------ torch stage
    def draw(self, key: Key) -> AugmentDraw:
        """The torch-stage values of one patch, each transform from its own stream."""
        drawn = [t.draw(self.settings, key) for t in TRANSFORMS]
        return AugmentDraw(tuple(v for v, _ in drawn), tuple(s for _, s in drawn))

    def apply(self, image: torch.Tensor, target: torch.Tensor,
              draws: torch.Tensor | Sequence[AugmentDraw]) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch stage on a batch (N,C,(Z)YX) on the batch's device; ``draws`` is one
        :class:`AugmentDraw` per sample, or their stacked ``to_tensor()`` rows (what the data
        loader hands over when augmentation runs on the GPU)."""
        rows = [AugmentDraw.from_tensor(r) for r in draws.detach().cpu()] if isinstance(draws, torch.Tensor) \
            else list(draws)
        if len(rows) != image.shape[0]:
            raise ValueError(f"{len(rows)} augmentation draws for a batch of {image.shape[0]}")
        image, target = self._geometric(image, target, rows)
        return self._intensity(image, rows), target

    def augment(self, image: np.ndarray, target: np.ndarray, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stages on one C(Z)YX pair, here on the CPU (classification, debug samples)."""
        image, target = self.exact(image, target, key)
        x, y = torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(target))
        draw = self.draw(key)
        if draw.is_neutral:
            return x, y
        x, y = self.apply(x[None], y[None], [draw])
        return x[0], y[0]

    def _geometric(self, image: torch.Tensor, target: torch.Tensor,
                   rows: list[AugmentDraw]) -> tuple[torch.Tensor, torch.Tensor]:
        picked = [i for i, d in enumerate(rows) if d.is_geometric]
        if not picked:
            return image, target
        spatial = tuple(image.shape[2:])
        grid = torch.cat([sampling_grid(spatial, rows[i]["rotate"], rows[i]["scale"], rows[i]["elastic"],
                                        float(self.settings["elastic_spacing"]), self.anisotropy,
                                        _generator(rows[i].seed("elastic"), image.device), image.device)
                          for i in picked])
        index = torch.tensor(picked, device=image.device)
        image, target = image.clone(), target.clone()
        image[index] = resample(image[index], grid, class_map=False)
        target[index] = resample(target[index], grid, class_map=not target.is_floating_point())
        return image, target

    def _intensity(self, image: torch.Tensor, rows: list[AugmentDraw]) -> torch.Tensor:
        if not any(d.is_intensity for d in rows):
            return image
        return torch.stack([self._intensity_one(x, d) if d.is_intensity else x for x, d in zip(image, rows)])

    def _intensity_one(self, x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        for t in TRANSFORMS:
            if t.stage == "intensity" and draw.runs(t):
                x = _apply(t, x, draw, self)
        return x


def _apply(t: Transform, x: torch.Tensor, draw: AugmentDraw, augmenter: Augmenter) -> torch.Tensor:
    assert t.apply is not None
    return t.apply(x, draw[t.name], _generator(draw.seed(t.name), x.device), augmenter)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def flip_rotate(image: np.ndarray, target: np.ndarray, flips: Sequence[bool],
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip both C(Z)YX arrays along the chosen spatial axes, then rotate YX by ``k`` quarter
    turns; returns contiguous copies. Rotations are skipped for non-square patches: they would
    change the patch shape and break batching."""
    if image.shape[1:] != target.shape[1:]:
        raise ValueError(f"image {image.shape} and target {target.shape} differ in spatial shape")
    for axis, do_flip in zip(range(1, image.ndim), flips):
        if do_flip:
            image, target = np.flip(image, axis), np.flip(target, axis)
    if k and image.shape[-1] == image.shape[-2]:
        image, target = np.rot90(image, k, axes=(-2, -1)), np.rot90(target, k, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(target)
