"""Classification training data: whole images resized to one input size, datasets, loss.

Input size: every image is resized to ``train.patch_size`` (linear interpolation,
anti-aliased when shrinking), in training and in prediction alike. Resizing is the
simplest choice that is robust to images of different sizes and aspect ratios, never
crops away the object that decides the class, and gives the network the same view
at training and test time. Images whose size differs a lot from the patch size lose
detail (or gain blur); choose ``train.patch_size`` near the typical image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from ...core.axes import to_torch_layout
from ...core.errors import ConfigError, InputError
from ...core.imageio import read_array
from ...data.augment import Augmenter

#: Random streams of classification training, distinct from the patch samplers' streams.
_ORDER_STREAM, _AUGMENT_STREAM = 11, 12


def fit_to_size(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a (Z)YXC image to the (Z)YX ``size`` (linear, anti-aliased when shrinking); float32.

    The one function that decides what the classifier sees, used by training and prediction.
    """
    size = tuple(int(s) for s in size)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != len(size) + 1:
        raise ValueError(f"image of shape {image.shape} does not have {len(size)} spatial axes and channels")
    if tuple(image.shape[:-1]) == size:
        return image
    from skimage.transform import resize

    shrinks = any(s > t for s, t in zip(image.shape[:-1], size))
    out = resize(image, size + (image.shape[-1],), order=1, mode="edge", anti_aliasing=shrinks,
                 preserve_range=True)
    return out.astype(np.float32, copy=False)


def read_normalized(path: str | Path, ndim: int) -> np.ndarray:
    """A normalized (Z)YXC image, checked, as float32."""
    image = read_array(path)
    if image.ndim != ndim + 1:
        raise InputError(path, f"normalized image of shape {image.shape} does not have {ndim} spatial axes and a "
                               "channel axis ((Z)YXC)")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InputError(path, "normalized image contains NaN or Inf")
    return image


def read_class_index(path: str | Path, n_classes: int) -> int:
    """The class index stored in a classification target (a one-element integer array)."""
    target = np.asarray(read_array(path))
    if target.shape != (1,) or target.dtype.kind not in "iu":
        raise InputError(path, f"not a classification target (expected one integer, got {target.dtype} array "
                               f"of shape {target.shape}); rerun the targets rule")
    index = int(target[0])
    if not 0 <= index < n_classes:
        raise InputError(path, f"class index {index} outside 0..{n_classes - 1}; rerun the targets rule")
    return index


# --------------------------------------------------------------------------- datasets


class TrainImages(TorchDataset):
    """Every training image once per epoch, in an order and with augmentations drawn from
    ``(seed, epoch)`` and ``(seed, epoch, i)``: resumable and identical with or without workers."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, augmenter: Augmenter | None = None) -> None:
        self.images = images
        self.labels = labels
        self.seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        self.augmenter = augmenter
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.order = np.random.default_rng([self.seed, _ORDER_STREAM, self.epoch]).permutation(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augmented(i)

    def augmented(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``i`` of the epoch, augmented (both stages, on the CPU), and its class."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = int(self.order[i])
        image = self.images[j]
        if self.augmenter is not None:
            # the augmenter moves (image, target) pairs; a class has no geometry, so a blank
            # stand-in target goes along and is dropped
            blank = np.zeros((1, *image.shape[1:]), dtype=np.float32)
            x, _ = self.augmenter.augment(image, blank, (self.seed, _AUGMENT_STREAM, self.epoch, int(i)))
            image = x.numpy()
        return _tensors(image, self.labels[j])


class FixedImages(TorchDataset):
    """Validation images as they are (no augmentation), in a fixed order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _tensors(self.images[i], self.labels[i])


def _tensors(image: np.ndarray, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.tensor([int(label)], dtype=torch.int64))


@dataclass
class ClassifyData:
    """What the generic training loop needs (train, val, in_channels) plus the class counts."""

    train: TrainImages
    val: FixedImages | None
    in_channels: int
    class_counts: np.ndarray


def load_images(pairs: Sequence[tuple[str | Path, str | Path]], size: Sequence[int],
                n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """All (normalized image, target) pairs resized to ``size``: N,C,(Z)YX float32 and N class indices.

    Everything is read up front, so a bad file fails the job before any training time is spent.
    """
    images, labels = [], []
    for image_path, target_path in pairs:
        image = fit_to_size(read_normalized(image_path, len(size)), size)
        if images and image.shape[-1] != images[0].shape[0]:
            raise InputError(image_path, f"has {image.shape[-1]} channels but {pairs[0][0]} has "
                                         f"{images[0].shape[0]}; convert all images to the same channels")
        images.append(to_torch_layout(image))
        labels.append(read_class_index(target_path, n_classes))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def build_classify_datasets(cfg: dict[str, Any], n_classes: int, train_pairs: Sequence[tuple[str | Path, str | Path]],
                            val_pairs: Sequence[tuple[str | Path, str | Path]]) -> ClassifyData:
    """Whole-image training and validation sets at ``train.patch_size``, augmented as configured."""
    if not train_pairs:
        raise InputError(None, "no training images: train needs at least one (image, target) pair")
    size = [int(s) for s in cfg["train"]["patch_size"]]
    train_images, train_labels = load_images(train_pairs, size, n_classes)
    val = None
    if val_pairs:
        val_images, val_labels = load_images(val_pairs, size, n_classes)
        if val_images.shape[1] != train_images.shape[1]:
            raise InputError(val_pairs[0][0], f"has {val_images.shape[1]} channels but the training images have "
                                              f"{train_images.shape[1]}")
        val = FixedImages(val_images, val_labels)
    train = TrainImages(train_images, train_labels, cfg["seed"], Augmenter.from_config(cfg))
    counts = np.bincount(train_labels, minlength=n_classes)
    return ClassifyData(train=train, val=val, in_channels=int(train_images.shape[1]), class_counts=counts)


# --------------------------------------------------------------------------- loss


class ClassificationLoss(torch.nn.Module):
    """Cross-entropy of N,K logits against N,1 (or N) class indices, optionally class-weighted."""

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        weight = torch.tensor([float(w) for w in weights], dtype=torch.float32) if weights is not None else None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, target.reshape(-1).long(), weight=self.weight)


def class_weights(setting: Any, counts: np.ndarray | None, n_classes: int) -> list[float] | None:
    """Per-class loss weights from ``train.loss.class_weights``: null, 'balanced' or a list.

    'balanced' weighs each class by N / (K * n_c), so every class contributes the same
    total weight to the loss however many training images it has.
    """
    if setting is None:
        return None
    if setting == "balanced":
        if counts is None:
            raise RuntimeError("balanced class weights need the training class counts (build the datasets first)")
        counts = np.asarray(counts, dtype=np.float64)
        if (counts == 0).any():
            raise ConfigError("train.loss.class_weights", f"'balanced' needs training images of every class; "
                                                          f"class index {int(np.argmin(counts))} has none")
        return (counts.sum() / (n_classes * counts)).tolist()
    weights = [float(w) for w in setting]
    if len(weights) != n_classes:
        raise ConfigError("train.loss.class_weights", f"has {len(weights)} entries but there are {n_classes} classes")
    return weights


# --------------------------------------------------------------------------- prediction


def class_probabilities(model: torch.nn.Module, image: np.ndarray, size: Sequence[int],
                        device: torch.device | str = "cpu") -> np.ndarray:
    """Softmax probabilities (K,) of one normalized (Z)YXC image, resized like the training images."""
    x = torch.from_numpy(to_torch_layout(fit_to_size(image, size)))[None].to(device)
    with torch.inference_mode():
        logits = model(x)
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy().astype(np.float32)
