"""Image classification: class folders, class names, whole-image inputs, datasets and tables.

Input layout: ``data.<split>.images`` is a folder with one sub-folder per class
(``train/<class>/<image>.tif``); a test folder may instead hold the images directly,
which are then predicted but not scored. A sample's ``label`` is its class *name*
(a string, not a file), so the same :class:`~biapipe.samples.Sample` serves every
workflow. Class names are sorted, or taken in the order ``targets.classification.classes``
gives; the list is resolved once when the workflow is parsed, written into the config
every job receives, and stored in the checkpoint, so a class name maps to the same
index in targets, model and outputs.

Input size: every image is resized to ``train.patch_size`` (linear interpolation,
anti-aliased when shrinking), in training and in prediction alike. Resizing is the
simplest choice that is robust to images of different sizes and aspect ratios, never
crops away the object that decides the class, and gives the network the same view
at training and test time. Images whose size differs a lot from the patch size lose
detail (or gain blur); choose ``train.patch_size`` near the typical image size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset as TorchDataset

from .axes import to_torch_layout
from .errors import ConfigError, InputError
from .imageio import IMAGE_SUFFIXES, read_array
from .samples import Dataset, Sample, list_images

#: Random streams of classification training, distinct from the patch samplers' streams.
_ORDER_STREAM, _AUGMENT_STREAM = 11, 12


# --------------------------------------------------------------------------- discovery


def class_folders(folder: str | Path) -> dict[str, Path]:
    """Class name -> sub-folder, sorted; hidden folders and image stores (``x.zarr``) are not classes."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(".") and not entry.name.lower().endswith(IMAGE_SUFFIXES):
                found[entry.name] = folder / entry.name
    return dict(sorted(found.items()))


def folder_samples(split: str, spec: dict[str, Any]) -> list[Sample]:
    """Samples of one split from class folders (label = class name) or, for test, a flat folder (label None)."""
    if spec.get("labels"):
        raise ConfigError(f"data.{split}.labels", f"classification reads each image's class from its sub-folder "
                                                  f"of data.{split}.images; remove labels")
    folder = Path(spec["images"])
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    classes, loose = class_folders(folder), list_images(folder)
    if classes and loose:
        first = next(iter(loose.values()))
        raise InputError(folder, f"mixes images ({Path(first).name}) and class folders ({', '.join(classes)}); "
                                 "put every image in the folder of its class")
    if not classes:
        if split != "test":
            raise InputError(folder, f"no class folders: {split} images must sit in one sub-folder per class "
                                     f"({folder}/<class>/<image>.tif)")
        if not loose:
            raise InputError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) and no class folders in the test folder")
        return [Sample(i, p, None, split) for i, p in loose.items()]
    return _class_folder_samples(split, classes)


def _class_folder_samples(split: str, classes: dict[str, Path]) -> list[Sample]:
    """One Sample per image of each class folder; image names must be unique across the classes."""
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for name, sub in classes.items():
        images = list_images(sub)
        if not images:
            raise InputError(sub, f"class folder '{name}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for sid, path in images.items():
            if sid in seen:
                raise InputError(path, f"image name '{sid}' is also used by {seen[sid]}; image names must be "
                                       "unique across class folders (they name the outputs)")
            seen[sid] = path
            samples.append(Sample(sid, path, name, split))
    return samples


def resolve_classes(ds: Dataset, cfg: dict[str, Any]) -> list[str]:
    """The class names in index order; checks every labelled image against them.

    The training and validation classes define the model's classes unless
    ``targets.classification.classes`` lists them. Raises, naming the folder or file:
    fewer than 2 classes, a listed class without training images, a training class
    not listed, a validation or test class the model does not know.
    """
    pinned = cfg["targets"].get("classification", {}).get("classes")
    learned = sorted({str(s.label) for s in ds.train + ds.val if s.label is not None})
    classes = [str(c) for c in pinned] if pinned else learned
    if len(classes) < 2:
        raise InputError(_train_source(cfg), f"found {len(classes)} class(es) ({', '.join(classes) or 'none'}); "
                                             "classification needs at least 2 (one sub-folder per class)")
    if pinned:
        _check_pinned(ds, classes)
    known = set(classes)
    for sample in ds.all():
        if sample.label is not None and str(sample.label) not in known:
            raise InputError(_class_source(sample), f"{sample.split} class '{sample.label}' is unknown to the "
                                                    f"model, whose classes are: {', '.join(classes)}")
    return classes


def _check_pinned(ds: Dataset, classes: list[str]) -> None:
    trained = {str(s.label) for s in ds.train + ds.val}
    for sample in ds.train + ds.val:
        if str(sample.label) not in classes:
            raise InputError(_class_source(sample), f"{sample.split} class '{sample.label}' is not listed in "
                                                    "targets.classification.classes")
    empty = [c for c in classes if c not in trained]
    if empty:
        raise ConfigError("targets.classification.classes", f"class '{empty[0]}' has no training images")


def _class_source(sample: Sample) -> str:
    """The class folder when the image sits in one named like its class, else the image itself."""
    parent = Path(sample.image).parent
    return str(parent) if parent.name == str(sample.label) else sample.image


def _train_source(cfg: dict[str, Any]) -> str | None:
    data = cfg["data"]
    if data.get("samples"):
        return data["samples"]
    if data.get("train"):
        return data["train"]["images"]
    return (data.get("demo") or {}).get("folder")


def split_validation_by_class(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``fraction`` of each class's images (at least one, never the last one).

    Stratifying keeps every class with two or more images in both training and
    validation; a plain random split of a small set often leaves a class out of one.
    """
    rng = np.random.default_rng(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    by_class: dict[str, list[int]] = {}
    for index, sample in enumerate(train):
        by_class.setdefault(str(sample.label), []).append(index)
    held_out: set[int] = set()
    for name in sorted(by_class):
        members = by_class[name]
        n_val = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held_out.update(members[j] for j in rng.permutation(len(members))[:n_val].tolist())
    keep = [s for i, s in enumerate(train) if i not in held_out]
    val = [Sample(s.id, s.image, s.label, "val") for i, s in enumerate(train) if i in held_out]
    return keep, val


# --------------------------------------------------------------------------- whole-image input


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

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, augmenter: Any = None) -> None:
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
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = int(self.order[i])
        image = self.images[j]
        if self.augmenter is not None:
            rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, self.epoch, int(i)])
            image = augment_image(self.augmenter, image, rng)
        return _tensors(image, self.labels[j])


def augment_image(augmenter: Any, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the configured augmentation to one C(Z)YX image: the exact numpy stage (flips,
    rot90) and, when the augmenter has one, its torch stage (rotation, scaling, intensity)
    on this one image; randomness comes only from ``rng``.

    The augmenter transforms (image, target) pairs; a class has no geometry, so a blank
    stand-in target goes along and is dropped.
    """
    blank = np.zeros((1, *image.shape[1:]), dtype=np.float32)
    image, _ = augmenter(image, blank, rng)
    if getattr(augmenter, "interpolating", False):
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        x, _ = augmenter.apply(x, torch.from_numpy(blank)[None], [augmenter.draw(rng)])
        image = x[0].numpy()
    return np.ascontiguousarray(image, dtype=np.float32)


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
    from .augment import Augmenter

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


# --------------------------------------------------------------------------- tables


def classes_table(per_image_csvs: Sequence[str | Path]) -> pd.DataFrame:
    """``classes.csv``: one row per image (named by its file), predicted class and probabilities."""
    rows = []
    for path in per_image_csvs:
        row = pd.read_csv(path, dtype={"predicted_class": str}, keep_default_na=False)
        row.insert(0, "image", Path(path).name[: -len(".csv")])
        rows.append(row)
    if not rows:
        return pd.DataFrame({"image": [], "predicted_class": []})
    return pd.concat(rows, ignore_index=True).sort_values("image", kind="stable").reset_index(drop=True)
