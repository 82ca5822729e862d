"""Training data of the restoration workflows: the generic patches, with targets normalized by
the dataset statistics that the model keeps, and the denoising modes' twists.

Augmentation is restricted to flips and 90-degree rotations: interpolating transforms
(rotation by any angle, zoom, elastic) smooth the noise a denoiser must learn, and intensity
transforms applied to the input only would change the input-target relation it must learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...data.patches import PatchData, PathPair, build_datasets, seed_entropy
from .masking import blind_spot
from .targets import apply_normalization, target_normalization

#: Augmentation settings kept for restoration; every other probability is set to 0.
EXACT_AUGMENT = ("flip", "rot90")
#: Random streams of the denoising modes, apart from those of patches (1, 2).
_MASK_STREAM, _VAL_MASK_STREAM, _SWAP_STREAM = 11, 12, 13
#: Least share of blind spots in a Noise2Void validation patch (one per 4x4 cell in 2D, 3x3x3
#: in 3D): the validation loss picks best.pt, and at the training share (0.2 %: about 130 pixels
#: in 16 patches of 64^2) the noise of those few pixels outweighs the differences between epochs
#: (benchmarks/README.md). Not with structured masks, which hide 2k + 1 pixels per blind spot.
VAL_MASK_FRACTION = 1 / 16


def exact_augment_only(cfg: Any) -> Any:
    """``cfg`` with the probabilities of all augmentations but flips and rot90 at 0."""
    augment = cfg["train"]["augment"]
    off = {k: 0.0 for k, v in augment.items()
           if k not in EXACT_AUGMENT and not k.endswith(("_range", "_magnitude", "_spacing", "_holes", "_size"))
           and k != "debug_samples" and isinstance(v, int | float)}
    return cfg.with_value("train.augment", augment.replace(**off))


def restoration_datasets(cfg: Any, task: Any, train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair],
                         denoising: dict[str, Any] | None = None) -> tuple[PatchData, dict[str, list[float]]]:
    """(patch data with normalized targets, the target normalization). ``denoising`` (its
    config section) adds Noise2Noise role swaps or Noise2Void blind spots."""
    data = build_datasets(exact_augment_only(cfg), task, train_pairs, val_pairs, augment_on_device=False)
    train_samples = data.train.sampler.samples
    norm = target_normalization([np.moveaxis(s.target, 0, -1) for s in train_samples], cfg["normalize"])
    samples = list(train_samples) + (list(data.val.sampler.samples) if data.val is not None else [])
    for sample in samples:
        sample.target = apply_normalization(sample.target, norm, channel_axis=0)
    mode = denoising["mode"] if denoising else "supervised"
    seed = seed_entropy(cfg["seed"])
    if mode == "noise2void":
        train = BlindSpotPatches(data.train, denoising, seed, _MASK_STREAM)
        dense = {**denoising, "mask_fraction": max(float(denoising["mask_fraction"]),
                                                   0.0 if denoising["structured"] else VAL_MASK_FRACTION)}
        val = BlindSpotPatches(data.val, dense, seed, _VAL_MASK_STREAM, fixed=True) if data.val is not None else None
        data = replace(data, train=train, val=val)
    elif mode == "noise2noise":
        data = replace(data, train=SwappedPatches(data.train, seed))
    return data, norm


class _Wrapped(Dataset):
    """A patch dataset seen through a per-item transform that is a pure function of (seed, epoch, item)."""

    augmenter = None  # the inner dataset augments on the CPU

    def __init__(self, inner: Any, seed: int) -> None:
        self.inner, self.seed = inner, seed

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def epoch(self) -> int:
        return int(getattr(self.inner, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def augmented(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self[i]


class BlindSpotPatches(_Wrapped):
    """Noise2Void items: (the patch with blind spots, [its target, the 0/1 mask of blind spots]).

    ``fixed`` (validation: the same patches and masks every epoch) keeps each item once made (in
    the process that makes it): validation patches are dense with blind spots, and a 3D one
    takes tens of milliseconds to mask (benchmarks/bench_masking.py)."""

    def __init__(self, inner: Any, settings: dict[str, Any], seed: int, stream: int, fixed: bool = False) -> None:
        super().__init__(inner, seed)
        self.settings, self.stream = settings, stream
        self.made: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if fixed else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.made is not None and int(i) in self.made:
            return self.made[int(i)]
        image, target = self.inner[i][:2]
        s = self.settings
        masked, mask = blind_spot(image.numpy(), (self.seed, self.stream, self.epoch, int(i)), s["mask_fraction"],
                                  s["mask_radius"], s["replace"], s["structured"])
        item = torch.from_numpy(masked), torch.cat([target, torch.from_numpy(mask)])
        if self.made is not None:
            self.made[int(i)] = item
        return item


class SwappedPatches(_Wrapped):
    """Noise2Noise items: either frame of a pair is an equally good input, so half the patches
    (by a key of seed, epoch and item) swap input and target."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.inner[i][:2]
        rng = np.random.default_rng([self.seed, _SWAP_STREAM, self.epoch, int(i)])
        return (target, image) if rng.random() < 0.5 else (image, target)
