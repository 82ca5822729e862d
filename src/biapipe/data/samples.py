"""Which images belong to which split, and which label goes with which image.

Discovery runs when Snakemake parses the workflow, so it must be cheap for tens of
thousands of files: it lists folders once and reads no pixels, and imports no torch.
What a workflow's labels are (image files, point tables, class names) is its task's
business: :func:`discover` asks the task (``tasks/<name>/``) for each split's samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..core.errors import ConfigError, InputError
from ..core.imageio import IMAGE_SUFFIXES, image_id

SPLITS = ("train", "val", "test")
#: Files of another type named in the one-line warning of :func:`list_images`.
SHOWN_SKIPPED = 5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One image. ``label`` is its ground-truth file, or for classification its class
    name (see :func:`labels_are_files`); None for an unlabelled test image."""

    id: str
    image: str
    label: str | None
    split: str


@dataclass
class Dataset:
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    #: True when validation images were carved out of the training folder
    val_from_train: bool = False
    #: classification: the class names in index order (None for the other workflows)
    classes: list[str] | None = None

    def all(self) -> list[Sample]:
        return [*self.train, *self.val, *self.test]

    def training(self) -> dict[str, Sample]:
        """Training and validation samples by id (they share the prepared-data folders)."""
        return {s.id: s for s in [*self.train, *self.val]}

    def testing(self) -> dict[str, Sample]:
        """Test samples by id (their outputs live in folders of their own)."""
        return {s.id: s for s in self.test}


class SampleSource(Protocol):
    """What discovery needs from a workflow's task (see ``tasks/base.py``)."""

    def demo_samples(self) -> list[Sample]: ...

    def sheet_label_column(self) -> str: ...

    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]: ...

    def split_validation(self, train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]: ...

    def finish_dataset(self, ds: Dataset) -> None: ...


def list_images(folder: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, str]:
    """Map sample id -> path for the image files (or Zarr stores, or ``suffixes``) directly in ``folder``.

    Other files are skipped with one warning line naming them: a folder of ``.czi`` files
    or a typo in a suffix should not look like a smaller data set.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    found: dict[str, str] = {}
    skipped: list[str] = []
    # Paths by string concatenation: same text as str(folder / name), without building a
    # Path per file (this runs at every parse, for every file of the dataset).
    base = str(folder)
    prefix = "" if base == "." else base if base.endswith(os.sep) else base + os.sep
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if not name.lower().endswith(suffixes):
                if entry.is_file():
                    skipped.append(name)
                continue
            sid = image_id(name) if suffixes is IMAGE_SUFFIXES else name[: name.rfind(".")]
            if sid in found:
                raise InputError(folder / name, f"two files share the sample name '{sid}' ({Path(found[sid]).name})")
            found[sid] = prefix + name
    if skipped:
        shown = ", ".join(sorted(skipped)[:SHOWN_SKIPPED]) + (", ..." if len(skipped) > SHOWN_SKIPPED else "")
        log.warning("%s: skipped %d file(s) not of a supported type (%s): %s", folder, len(skipped),
                    " ".join(suffixes), shown)
    return dict(sorted(found.items()))


def pair_split(
    split: str, spec: dict[str, Any], label_required: bool, label_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> list[Sample]:
    """Pair images with labels by name; any unpaired file on either side is an error."""
    images = list_images(spec["images"])
    if not images:
        raise InputError(spec["images"], f"no images ({', '.join(IMAGE_SUFFIXES)}) in the {split} folder")
    labels_dir = spec.get("labels")
    if not labels_dir:
        if label_required:
            raise ConfigError(f"data.{split}.labels", "is required for training data")
        return [Sample(i, p, None, split) for i, p in images.items()]
    labels = list_images(labels_dir, label_suffixes)
    check_paired(images, labels, f"has no label in {labels_dir} ({{n}} image(s) without label)",
                 f"is a label without an image in {spec['images']} ({{n}} such label(s))")
    return [Sample(i, p, labels[i], split) for i, p in images.items()]


def check_paired(owners: Mapping[str, str], partners: Mapping[str, str], missing: str, orphan: str) -> None:
    """Every name (id -> file) in ``owners`` has a partner file and every partner an owner; else
    InputError naming the first file without one (``{n}`` in a message: how many there are)."""
    for have, want, message in ((owners, partners, missing), (partners, owners, orphan)):
        alone = sorted(set(have) - set(want))
        if alone:
            raise InputError(have[alone[0]], message.replace("{n}", str(len(alone))))


def read_sample_sheet(path: str | Path, label_column: str = "label") -> list[Sample]:
    """Samples from a CSV with columns image, label, split (paths relative to the sheet).

    ``label_column="class"`` (classification) reads a class name per image instead of a
    label file: kept as text, never resolved as a path.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "sample sheet not found")
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    required = {"image", "split"} | ({label_column} if label_column == "class" else set())
    missing = required - set(sheet.columns)
    if missing:
        raise InputError(path, f"sample sheet lacks column(s) {', '.join(sorted(missing))} (needs image, {label_column}, split)")
    samples = []
    # records, not itertuples: 'class' is a Python keyword and would be renamed
    for row_no, row in enumerate(sheet.to_dict("records"), start=2):
        split = row["split"].strip()
        if split not in SPLITS:
            raise InputError(path, f"line {row_no}: split '{split}' is not one of {', '.join(SPLITS)}")
        image = _resolve(path.parent, row["image"])
        raw = row.get(label_column, "").strip()
        label = (raw or None) if label_column == "class" else (_resolve(path.parent, raw) if raw else None)
        for f in (image, label if label_column != "class" else None):
            if f is not None and not os.path.exists(f):
                raise InputError(f, f"file not found (sample sheet {path}, line {row_no})")
        if split != "test" and label is None:
            raise InputError(path, f"line {row_no}: {split} image {row['image']} has no {label_column}")
        samples.append(Sample(image_id(image), image, label, split))
    return samples


def _resolve(base: Path, rel: str) -> str:
    p = Path(rel.strip())
    return str(p if p.is_absolute() else base / p)


def discover(data: dict[str, Any], train: dict[str, Any], seed: int, task: SampleSource,
             need_train: bool = True) -> Dataset:
    """All samples of an experiment by split (config sections ``data`` and ``train``), with
    validation carved out of the training images when ``data.val`` is absent. Without
    ``need_train`` (a run that predicts with a given model) training images are optional."""
    if data["demo"]:
        samples = task.demo_samples()
    elif data["samples"]:
        samples = read_sample_sheet(data["samples"], task.sheet_label_column())
    else:
        samples = [s for split in SPLITS if data.get(split) for s in task.split_samples(split, data[split])]
    ds = Dataset()
    for s in samples:
        getattr(ds, s.split).append(s)
    _check_unique_ids(ds)
    if not ds.train and need_train:
        raise ConfigError("data.train", "no training images")
    task.finish_dataset(ds)
    if not ds.val and train["val_fraction"] > 0 and len(ds.train) > 1:
        ds.train, ds.val = task.split_validation(ds.train, train["val_fraction"], seed)
        ds.val_from_train = True
    return ds


def split_validation(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out whole images (never patches of the same image) for validation, by seed."""
    n_val = max(1, int(round(fraction * len(train))))
    n_val = min(n_val, len(train) - 1)
    order = np.random.default_rng(seed).permutation(len(train))
    val_idx = set(order[:n_val].tolist())
    keep = [s for i, s in enumerate(train) if i not in val_idx]
    val = [Sample(s.id, s.image, s.label, "val") for i, s in enumerate(train) if i in val_idx]
    return keep, val


def _check_unique_ids(ds: Dataset) -> None:
    """Names must be unique among the training and validation images (their prepared copies share
    folders) and among the test images; a test image may share a training image's name (many
    layouts number every split from 0001). A validation image named like a training image is
    renamed ``val_<name>``."""
    seen: dict[str, Sample] = {}
    for i, s in enumerate(ds.val):
        if s.id in {t.id for t in ds.train}:
            ds.val[i] = s = Sample(f"val_{s.id}", s.image, s.label, s.split)
    for group in ([*ds.train, *ds.val], ds.test):
        seen = {}
        for s in group:
            if s.id in seen:
                raise InputError(s.image, f"sample name '{s.id}' is also used by {seen[s.id].image}; names must be "
                                          f"unique within the {'test' if s.split == 'test' else 'training and validation'} images")
            seen[s.id] = s
