"""Classification input: class folders, class names and the validation split by class.

``data.<split>.images`` is a folder with one sub-folder per class
(``train/<class>/<image>.tif``); a test folder may instead hold the images directly,
which are then predicted but not scored. A sample's ``label`` is its class *name* (a
string, not a file). Class names are sorted, or taken in the order
``targets.classification.classes`` gives; the list is resolved once when the workflow is
parsed, written into the config every job receives, and stored in the checkpoint, so a
class name maps to the same index in targets, model and outputs. No torch here: this runs
at every parse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import ConfigError, InputError
from ...core.imageio import IMAGE_SUFFIXES
from ...data.samples import Dataset, Sample, list_images

#: Demo classes for image classification. They differ in what classifiers of cell images
#: typically have to learn (object size, number and shape), not in brightness, which
#: normalization would remove anyway.
CLASSIFICATION_CLASSES = ("few_large", "many_small", "elongated")


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
    if spec["labels"]:
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
    pinned = cfg["targets"]["classification"]["classes"]
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
    if data["samples"]:
        return data["samples"]
    if data["train"]:
        return data["train"]["images"]
    return data["demo"]["folder"] if data["demo"] else None


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


def classification_demo_ids(n_train: int, n_val: int, n_test: int) -> dict[str, list[tuple[str, str]]]:
    """(image name, class) per split; ``n_*`` count images *per class*. Names carry the
    class so they are unique across class folders, as the workflow requires."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    return {split: [(f"{split}_{cls}_{i:03d}", cls) for cls in CLASSIFICATION_CLASSES for i in range(n)]
            for split, n in counts.items()}


def classification_demo_samples(demo: dict[str, Any]) -> list[Sample]:
    """The demo samples, ``{split}/{class}/{name}.tif`` with the class name as label."""
    folder = Path(demo["folder"])
    items = classification_demo_ids(demo["n_train"], demo["n_val"], demo["n_test"])
    return [Sample(i, str(folder / split / c / f"{i}.tif"), c, split) for split, pairs in items.items() for i, c in pairs]
