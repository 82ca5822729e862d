"""Training and validation patches drawn from normalized images and their targets.

Sampling is stateless: patch ``i`` of epoch ``e`` is drawn from a generator seeded by
``(seed, e, i)``. The patch sequence is therefore a pure function of the seed; a resumed
run draws exactly the patches an uninterrupted run would, and data-loader workers (which
each hold a copy of the dataset) draw the same patches as the main process, with no
generator state to carry between them.

Images are picked with probability proportional to their number of pixels, so every
pixel of the training set is equally likely to be seen: a folder of one large and many
small images is not dominated by the small ones as uniform picking would make it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.axes import to_torch_layout
from ..core.errors import InputError
from ..core.imageio import image_id, read_array
from .augment import AugmentDraw, Augmenter

#: Value of padded target pixels for class maps: excluded from the loss like any ignored pixel.
IGNORE_INDEX = -1

#: Distinct streams of random numbers derived from the one config seed.
_TRAIN_STREAM, _VAL_STREAM = 1, 2

PathPair = tuple[str | Path, str | Path]


class Foreground(Protocol):
    """What patch sampling needs from a task: where its targets have something to learn."""

    def foreground(self, target: np.ndarray) -> np.ndarray: ...


@dataclass
class Sample:
    """One image and its target in memory, C(Z)YX, already padded to at least the patch size."""

    name: str
    image: np.ndarray
    target: np.ndarray
    #: flat indices (into the spatial shape) of pixels a patch may be centred on
    foreground: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def seed_entropy(seed: int) -> int:
    """Map any integer seed (schema allows negatives) to the non-negative entropy numpy needs."""
    return int(seed) & 0xFFFF_FFFF_FFFF_FFFF


# --------------------------------------------------------------------------- loading


def read_pair(image_path: str | Path, target_path: str | Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and target as (Z)YXC arrays and check they belong together.

    The one place training data is read; making loading lazy later means changing this.
    """
    image = read_array(image_path)
    target = read_array(target_path)
    if image.ndim != ndim + 1:
        raise InputError(image_path, f"normalized image of shape {image.shape} does not have {ndim} spatial "
                                     "axes and a channel axis ((Z)YXC)")
    if target.ndim != ndim + 1:
        raise InputError(target_path, f"target of shape {target.shape} does not have {ndim} spatial axes and "
                                      "a channel axis ((Z)YXC)")
    if image.shape[:-1] != target.shape[:-1]:
        raise InputError(target_path, f"target of spatial shape {target.shape[:-1]} does not match its image "
                                      f"{image_path} of spatial shape {image.shape[:-1]}")
    if target.dtype.kind not in "iuf":
        raise InputError(target_path, f"unsupported target dtype {target.dtype} (expected integers or floats)")
    if image.dtype.kind not in "iuf":
        raise InputError(image_path, f"unsupported image dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InputError(image_path, "normalized image contains NaN or Inf")
    return image, target


def pad_widths(shape: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric padding that brings each spatial axis up to the patch size (zero where already big)."""
    widths = []
    for size, patch in zip(shape, patch_size):
        missing = max(0, patch - size)
        widths.append((missing // 2, missing - missing // 2))
    return widths


def pad_pair(image: np.ndarray, target: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad (Z)YXC image (reflect) and target (ignore value for class maps, 0 for float maps)."""
    widths = pad_widths(image.shape[:-1], patch_size) + [(0, 0)]
    if not any(before or after for before, after in widths):
        return image, target
    target_fill = IGNORE_INDEX if target.dtype.kind in "iu" else 0
    if target.dtype.kind == "u":
        target = target.astype(np.int32)  # unsigned maps cannot hold the ignore value
    return np.pad(image, widths, mode="reflect"), np.pad(target, widths, constant_values=target_fill)


def load_sample(image_path: str | Path, target_path: str | Path, task: Foreground,
                patch_size: Sequence[int], pad: bool) -> Sample:
    """Read, check, pad and index one training pair; errors name the file at fault."""
    image, target = read_pair(image_path, target_path, len(patch_size))
    if any(s < p for s, p in zip(image.shape[:-1], patch_size)):
        if not pad:
            raise InputError(image_path, f"image of shape {image.shape[:-1]} is smaller than train.patch_size "
                                         f"{list(patch_size)}; set train.pad: true or use a smaller patch")
        image, target = pad_pair(image, target, patch_size)
    foreground = np.flatnonzero(np.asarray(task.foreground(target)))
    return Sample(name=image_id(image_path), image=to_torch_layout(image), target=to_torch_layout(target),
                  foreground=foreground)


def load_samples(pairs: Sequence[PathPair], task: Foreground, patch_size: Sequence[int], pad: bool) -> list[Sample]:
    """Load all pairs up front, so a bad file fails the job before any training time is spent."""
    samples = [load_sample(img, tgt, task, patch_size, pad) for img, tgt in pairs]
    _check_consistent(samples, pairs)
    return samples


def _check_consistent(samples: list[Sample], pairs: Sequence[PathPair]) -> None:
    """All samples must agree on channel counts and target kind, or batches cannot be stacked."""
    if not samples:
        return
    first = samples[0]
    for sample, (img_path, tgt_path) in zip(samples[1:], pairs[1:]):
        if sample.image.shape[0] != first.image.shape[0]:
            raise InputError(img_path, f"has {sample.image.shape[0]} channels but {pairs[0][0]} has "
                                       f"{first.image.shape[0]}")
        if sample.target.shape[0] != first.target.shape[0] or (
            (sample.target.dtype.kind == "f") != (first.target.dtype.kind == "f")
        ):
            raise InputError(tgt_path, f"target ({sample.target.shape[0]} channels, {sample.target.dtype}) "
                                       f"differs from {pairs[0][1]} ({first.target.shape[0]} channels, "
                                       f"{first.target.dtype})")


# --------------------------------------------------------------------------- sampling


class PatchSampler:
    """Chooses patch positions (image, corner) with a bias towards foreground pixels."""

    def __init__(self, samples: list[Sample], patch_size: Sequence[int], foreground_fraction: float) -> None:
        if not samples:
            raise ValueError("no samples to draw patches from")
        self.samples = samples
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_fraction = float(foreground_fraction)
        sizes = np.array([np.prod(s.spatial_shape) for s in samples], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        has_fg = np.array([s.foreground.size > 0 for s in samples])
        self.fg_weights = sizes * has_fg / (sizes * has_fg).sum() if has_fg.any() else None

    def draw(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        """One patch position: a foreground-centred one with probability foreground_fraction.

        A foreground draw picks only among images that have foreground, so with a
        fraction of 1 every patch contains foreground whenever any image does.
        """
        centred = rng.random() < self.foreground_fraction and self.fg_weights is not None
        index = int(rng.choice(len(self.samples), p=self.fg_weights if centred else self.weights))
        sample = self.samples[index]
        if centred:
            return index, self._centred_corner(sample, rng)
        return index, self._uniform_corner(sample, rng)

    def _uniform_corner(self, sample: Sample, rng: np.random.Generator) -> tuple[int, ...]:
        return tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(sample.spatial_shape, self.patch_size))

    def _centred_corner(self, sample: Sample, rng: np.random.Generator) -> tuple[int, ...]:
        """Centre on a random foreground pixel, shifted by up to a quarter patch.

        The jitter keeps the network from learning that objects sit in the patch centre;
        at most a quarter patch (and clipping to the image) keeps the pixel inside the patch.
        """
        flat = sample.foreground[int(rng.integers(0, sample.foreground.size))]
        centre = np.unravel_index(flat, sample.spatial_shape)
        corner = []
        for c, s, p in zip(centre, sample.spatial_shape, self.patch_size):
            jitter = int(rng.integers(-(p // 4), p // 4 + 1))
            corner.append(int(np.clip(int(c) - p // 2 + jitter, 0, s - p)))
        return tuple(corner)

    def crop(self, index: int, corner: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        window = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
        return sample.image[window], sample.target[window]


def to_tensors(image: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """C(Z)YX arrays to tensors: float32 image, long class map or float32 target maps."""
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if target.dtype.kind in "iu":
        return image_t, torch.from_numpy(np.ascontiguousarray(target, dtype=np.int64))
    return image_t, torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))


class TrainPatches(Dataset):
    """``length`` random, augmented patches per epoch; item i of epoch e depends only on (seed, e, i).

    With ``augment_on_device`` the torch stage of augmentation (see :mod:`biapipe.augment`)
    is left to the training loop, which runs it batched on the GPU: items are then
    ``(image, target, draw)`` with the patch's drawn parameters as a float64 row.
    """

    def __init__(self, sampler: PatchSampler, length: int, seed: int, augmenter: Augmenter | None,
                 augment_on_device: bool = False) -> None:
        self.sampler = sampler
        self.length = int(length)
        self.seed = seed_entropy(seed)
        self.augmenter = augmenter
        self.augment_on_device = bool(augment_on_device) and augmenter is not None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        image, target, draw = self.draw_patch(i)
        if draw is None:
            return image, target
        if self.augment_on_device:
            return image, target, draw.to_tensor()
        return self._apply(image, target, draw)

    def augmented(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``i`` fully augmented here, on CPU, wherever training augments (debug samples)."""
        image, target, draw = self.draw_patch(i)
        return (image, target) if draw is None else self._apply(image, target, draw)

    def draw_patch(self, i: int) -> tuple[torch.Tensor, torch.Tensor, AugmentDraw | None]:
        """Crop and exact (numpy) augmentation, and the draw of the torch stage; all from ``(seed, epoch, i)``."""
        if not 0 <= i < self.length:
            raise IndexError(i)
        key = (self.seed, _TRAIN_STREAM, self.epoch, int(i))
        image, target = self.sampler.crop(*self.sampler.draw(np.random.default_rng(list(key))))
        if self.augmenter is None:
            return (*to_tensors(image, target), None)
        image, target = self.augmenter.exact(image, target, key)
        return (*to_tensors(image, target), self.augmenter.draw(key))

    def _apply(self, image: torch.Tensor, target: torch.Tensor, draw: AugmentDraw) -> tuple[torch.Tensor, torch.Tensor]:
        if draw.is_neutral:
            return image, target
        assert self.augmenter is not None
        image, target = self.augmenter.apply(image[None], target[None], [draw])
        return image[0], target[0]


class ValPatches(Dataset):
    """A fixed list of un-augmented patches, chosen once from the seed, so epochs are comparable."""

    def __init__(self, sampler: PatchSampler, count: int, seed: int) -> None:
        self.sampler = sampler
        rng = np.random.default_rng([seed_entropy(seed), _VAL_STREAM])
        self.positions = [sampler.draw(rng) for _ in range(int(count))]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(*self.sampler.crop(*self.positions[i]))


@dataclass
class PatchData:
    """What training needs from the data: the two datasets and the channel count."""

    train: TrainPatches
    val: ValPatches | None
    in_channels: int
    target_is_class_map: bool


def build_datasets(cfg: dict[str, Any], task: Foreground, train_pairs: Sequence[PathPair],
                   val_pairs: Sequence[PathPair], augment_on_device: bool = False) -> PatchData:
    """Load and check all training and validation data; raises InputError before any training.

    ``augment_on_device``: leave the torch stage of augmentation to the training loop (CUDA).
    """
    tcfg = cfg["train"]
    patch_size = [int(p) for p in tcfg["patch_size"]]
    if not train_pairs:
        raise InputError(None, "no training images: train needs at least one (image, target) pair")
    train_samples = load_samples(train_pairs, task, patch_size, bool(tcfg["pad"]))
    val_samples = load_samples(val_pairs, task, patch_size, bool(tcfg["pad"])) if val_pairs else []
    if val_samples:
        _check_consistent([train_samples[0], *val_samples], [train_pairs[0], *val_pairs])
    fraction = float(tcfg["foreground_fraction"])
    train = TrainPatches(PatchSampler(train_samples, patch_size, fraction), tcfg["patches_per_epoch"],
                         cfg["seed"], Augmenter.from_config(cfg), augment_on_device)
    val = ValPatches(PatchSampler(val_samples, patch_size, fraction), tcfg["val_patches"], cfg["seed"]) \
        if val_samples else None
    return PatchData(train=train, val=val, in_channels=int(train_samples[0].image.shape[0]),
                     target_is_class_map=train_samples[0].target.dtype.kind in "iu")
