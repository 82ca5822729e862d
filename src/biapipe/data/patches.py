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
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..core.errors import InputError
from .augment import IGNORE_INDEX, AugmentDraw, Augmenter
from .scale import training_diameter
from .sources import PathPair, Sample, check_consistent, load_samples

#: Distinct streams of random numbers derived from the one config seed.
_TRAIN_STREAM, _VAL_STREAM = 1, 2


class Foreground(Protocol):
    """What patch sampling needs from a task: where its targets have something to learn."""

    def foreground(self, target: np.ndarray) -> np.ndarray: ...


def seed_entropy(seed: int) -> int:
    """Map any integer seed (schema allows negatives) to the non-negative entropy numpy needs."""
    return int(seed) & 0xFFFF_FFFF_FFFF_FFFF


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
        has_fg = np.array([s.index.size > 0 for s in samples])
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
        centre = sample.index.voxel(int(rng.integers(0, sample.index.size)))
        corner = []
        for c, s, p in zip(centre, sample.spatial_shape, self.patch_size):
            jitter = int(rng.integers(-(p // 4), p // 4 + 1))
            corner.append(int(np.clip(int(c) - p // 2 + jitter, 0, s - p)))
        return tuple(corner)

    def crop(self, index: int, corner: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        window = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
        return sample.image[window], sample.target[window]

    def crop_zoomed_out(self, index: int, corner: Sequence[int], zoom: float) -> tuple[np.ndarray, np.ndarray]:
        """The patch at ``corner`` zoomed out by ``zoom`` < 1 about its centre: the image's own
        surroundings (a window ``1 / zoom`` times the patch), resized to the patch size.

        Zooming out inside the patch would fill the rim with mirror images of the patch; reading the
        real context keeps neighbouring objects real. Beyond the image the window is mirrored (as the
        interpolating stage mirrors), and a class map's outside is ignored.
        """
        sample = self.samples[index]
        size = [max(p, int(round(p / zoom))) for p in self.patch_size]
        start = [int(round(c + p / 2 - n / 2)) for c, p, n in zip(corner, self.patch_size, size)]
        shape = sample.spatial_shape
        inside = tuple(slice(max(a, 0), min(a + n, s)) for a, n, s in zip(start, size, shape))
        pads = [(0, 0)] + [(w.start - a, a + n - w.stop) for w, a, n in zip(inside, start, size)]
        image, target = sample.image[(slice(None), *inside)], sample.target[(slice(None), *inside)]
        image = np.pad(np.asarray(image, dtype=np.float32), pads, mode="reflect")
        class_map = target.dtype.kind in "iu"
        if class_map:
            target = np.pad(np.asarray(target), pads, mode="constant", constant_values=IGNORE_INDEX)
        else:
            target = np.pad(np.asarray(target, dtype=np.float32), pads, mode="reflect")
        return _resize(image, self.patch_size, False), _resize(target, self.patch_size, class_map)


def _resize(x: np.ndarray, shape: Sequence[int], class_map: bool) -> np.ndarray:
    """C(Z)YX array resized to ``shape``: nearest for class maps, else (bi/tri)linear, anti-aliased in
    2D (a lower magnification integrates over each pixel, it does not sample it)."""
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    if class_map:
        return F.interpolate(t.to(torch.float32), size=tuple(shape), mode="nearest-exact")[0].to(t.dtype).numpy()
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=False, antialias=len(shape) == 2)[0].numpy()


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
        position = self.sampler.draw(np.random.default_rng(list(key)))
        if self.augmenter is None:
            return (*to_tensors(*self.sampler.crop(*position)), None)
        draw = self.augmenter.draw(key)
        if draw["scale"] < 1:  # zoom out here, from the image's real surroundings
            image, target = self.sampler.crop_zoomed_out(*position, draw["scale"])
            draw = draw.without("scale")
        else:
            image, target = self.sampler.crop(*position)
        image, target = self.augmenter.exact(image, target, key)
        return (*to_tensors(image, target), draw)

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
    #: what the checkpoint records about the training data (``object_diameter``: the typical object
    #: diameter at the scale the network was trained at, which prediction brings test images to)
    meta: dict[str, Any] = field(default_factory=dict)


def build_datasets(cfg: dict[str, Any], task: Foreground, train_pairs: Sequence[PathPair],
                   val_pairs: Sequence[PathPair], augment_on_device: bool = False) -> PatchData:
    """Load and check all training and validation data; raises InputError before any training.

    ``augment_on_device``: leave the torch stage of augmentation to the training loop (CUDA).
    """
    tcfg = cfg["train"]
    patch_size = [int(p) for p in tcfg["patch_size"]]
    if not train_pairs:
        raise InputError(None, "no training images: train needs at least one (image, target) pair")
    budget = float(tcfg["memory_gb"])
    train_samples = load_samples(train_pairs, task.foreground, patch_size, bool(tcfg["pad"]), budget)
    val_samples = load_samples(val_pairs, task.foreground, patch_size, bool(tcfg["pad"]), budget) \
        if val_pairs else []
    if val_samples:
        check_consistent([train_samples[0], *val_samples], [train_pairs[0], *val_pairs])
    fraction = float(tcfg["foreground_fraction"])
    train = TrainPatches(PatchSampler(train_samples, patch_size, fraction), tcfg["patches_per_epoch"],
                         cfg["seed"], Augmenter.from_config(cfg), augment_on_device)
    val = ValPatches(PatchSampler(val_samples, patch_size, fraction), tcfg["val_patches"], cfg["seed"]) \
        if val_samples else None
    diameter = training_diameter([target for _, target in train_pairs])
    return PatchData(train=train, val=val, in_channels=int(train_samples[0].image.shape[0]),
                     target_is_class_map=train_samples[0].target.dtype.kind in "iu",
                     meta={} if diameter is None else {"object_diameter": diameter})
