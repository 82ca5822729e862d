"""Where an instance workflow with classes finds its class images, and the task hooks that
read them (samples, demo, header and pixel checks): a mixin of
:class:`biapipe.tasks.instance.task.InstanceTask`, active when ``targets.instance.classes`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...core import imageio
from ...core.errors import ConfigError, InputError
from ...data.blocks import block_grid, choose_block_shape
from ...data.lazy import open_lazy
from ...data.samples import Dataset, Sample, check_paired, list_images
from ...data.validate import probe
from ...large.volumes import SpatialView
from ..label_images import LabelImageTask
from .classes import check_class_shape, object_classes, read_class_image, size_classes
from .classes_large import lookup, true_class_table
from .targets import prepare_labels

#: bytes per voxel of counting a block's class votes (ids, classes and their uint64 keys)
TABLE_BYTES = 64


class ClassFiles:
    """Which class image belongs to a label file: the sample sheet's ``classes`` column, or the
    ``data.<split>.classes`` folder of the split whose ``labels`` folder holds it (a demo's
    ``{split}/classes``), paired by name. Resolved from the config alone, so every job (parse,
    prepare, train, post-processing) finds the same file without the sample list."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        #: label file -> class image from a sample sheet's classes column; None: no such column
        self.by_label = sheet_class_files(data["samples"]) if data.get("samples") and not data["demo"] else None
        self.folders: dict[str, str] = {}
        self.demo: set[str] = set()  # folders the demo rule writes: named like the labels, maybe not there yet
        if data["demo"]:
            root = Path(data["demo"]["folder"])
            for split in ("train", "val", "test"):
                self.folders[_norm(root / split / "labels")] = str(root / split / "classes")
                self.demo.add(str(root / split / "classes"))
        for split in ("train", "val", "test"):
            spec = data.get(split)
            if spec and spec.get("labels") and spec.get("classes"):
                self.folders[_norm(spec["labels"])] = str(spec["classes"])
        self._listings: dict[str, dict[str, str]] = {}

    def folder_for(self, label: str | Path) -> str | None:
        return self.folders.get(_norm(Path(label).parent))

    def path_for(self, label: str | Path) -> str | None:
        """The class image of ``label``; None when its split has no class folder (or its sheet row
        no class image)."""
        if self.by_label is not None:
            return self.by_label.get(_norm(label))
        folder = self.folder_for(label)
        if folder is None:
            return None
        if folder in self.demo:
            return str(Path(folder) / Path(label).name)
        if folder not in self._listings:
            self._listings[folder] = list_images(folder)
        found = self._listings[folder].get(imageio.image_id(label))
        if found is None:
            raise InputError(label, f"has no class image of the same name in {folder}")
        return found


def sheet_class_files(sheet: str | Path) -> dict[str, str] | None:
    """Label file -> class image, from a sample sheet's ``classes`` column (paths relative to the
    sheet, as the other columns); None without that column. Checked when the samples are listed
    (:func:`check_sheet_classes`)."""
    if not Path(sheet).is_file():
        return None  # discovery says so, naming the sheet
    rows = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    if not {"label", "classes"} <= set(rows.columns):
        return None
    base = Path(sheet).parent
    return {_norm(base / lab.strip()): str(base / cls.strip())
            for lab, cls in zip(rows["label"], rows["classes"]) if lab.strip() and cls.strip()}


def check_sheet_classes(sheet: str | Path, samples: Sequence[Sample], class_files: ClassFiles) -> None:
    """Every labelled train and val row names an existing class image (test rows may omit it)."""
    if class_files.by_label is None:
        raise InputError(sheet, "sample sheet lacks column classes (targets.instance.classes: a class image per label)")
    for s in samples:
        found = class_files.path_for(s.label) if s.label else None
        if found is None and s.split != "test" and s.label:
            raise InputError(sheet, f"{s.split} image {Path(s.image).name} has no class image (column classes)")
        if found is not None and not os.path.exists(found):
            raise InputError(found, f"file not found (sample sheet {sheet}, column classes)")


def check_class_folders(split: str, spec: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """Parse-time pairing: a split with labels needs a class folder (test: optional) holding a
    class image for every label (``labels``: sample name -> label file) and nothing else."""
    key = f"data.{split}.classes"
    folder = spec.get("classes")
    if not folder:
        if split != "test" and spec.get("labels"):
            raise ConfigError(key, "is required when targets.instance.classes is set (a class image per label)")
        return
    found = list_images(folder)
    check_paired(labels, found, f"has no class image in {folder} ({{n}} label(s) without one)",
                 f"is a class image without a label in {spec.get('labels')}")


def _norm(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(str(path)))


class ClassedSamples(LabelImageTask):
    """The sample-side hooks of an instance task with classes (``n_classes`` set by the task)."""

    n_classes: int | None = None
    class_files: ClassFiles

    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        samples = super().split_samples(split, spec)
        if self.n_classes:
            check_class_folders(split, spec, {imageio.image_id(s.label): s.label for s in samples if s.label})
        return samples

    def finish_dataset(self, ds: Dataset) -> None:
        super().finish_dataset(ds)
        if self.n_classes and self.cfg["data"]["samples"] and not self.cfg["data"]["demo"]:
            check_sheet_classes(self.cfg["data"]["samples"], ds.all(), self.class_files)

    def label_companions(self, label: str) -> list[str]:
        found = self.class_files.path_for(label) if self.n_classes else None
        return [found] if found else []

    def write_demo(self) -> None:
        """The demo data, with a class image per label: the larger half of the objects (by the
        median size over every demo image) are class 2."""
        super().write_demo()
        if not self.n_classes:
            return
        labels = {p: imageio.read_label(p, self.ndim) for s in self.demo_samples() for p in [s.label]}
        sizes = np.concatenate([np.bincount(lab.ravel().astype(np.intp))[1:] for lab in labels.values()])
        median = float(np.median(sizes[sizes > 0]))
        for path, lab in labels.items():
            folder = Path(path).parent.parent / "classes"
            imageio.write_tiff(folder / Path(path).name, size_classes(lab, median))

    def check_label_header(self, label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                           image_shape: tuple[int, ...]) -> None:
        super().check_label_header(label, header_shape, dtype, image, image_shape)
        found = self.class_files.path_for(label) if self.n_classes else None
        if found is not None:
            shape, _ = probe(found)
            if [s for s in shape if s != 1] != [s for s in header_shape if s != 1]:
                raise InputError(found, f"class image of shape {tuple(shape)} does not match its label image "
                                        f"{Path(label).name} of shape {tuple(header_shape)}")

    def pixel_classes(self, label: np.ndarray, labels: np.ndarray, path: str | Path | None) -> np.ndarray:
        """Each pixel's true class, for the targets of ``label`` (``labels``: as prepare_labels
        returns it). The label image as stored: from its own objects (:meth:`true_classes`). A
        zoomed copy or a block of a volume: by id from the table of the whole file's objects
        (:meth:`class_table`), so a block's pixels get the class of their whole object. (A 0/1
        mask relabelled into components gets one class per component whole, one for all of
        them by block: such a "label" is already warned about.)"""
        found = self.class_files.path_for(path) if path is not None else None
        if found is None:
            raise InputError(path, "has no class image (data.<split>.classes) but targets.instance.classes is set")
        if tuple(np.shape(label)) == self._label_shape(path):
            return self.true_classes(label, path)[np.asarray(labels).astype(np.intp)]
        return lookup(*self.class_table(path, found), label)

    def _label_shape(self, path: str | Path) -> tuple[int, ...]:
        """The (Z)YX shape of a label file, from its header once (every block of a volume asks)."""
        shapes = self.__dict__.setdefault("_label_shapes", {})
        if str(path) not in shapes:
            shapes[str(path)] = tuple(open_lazy(path, self.ndim).shape[:-1])
        return shapes[str(path)]

    def class_table(self, label_path: str | Path, class_path: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted object ids, their classes) of a label file, both files read block by block
        within ``train.memory_gb``; kept, since every block of a volume asks for it."""
        tables = self.__dict__.setdefault("_class_tables", {})
        if str(label_path) not in tables:
            labels = SpatialView(open_lazy(label_path, self.ndim))
            classes = SpatialView(open_lazy(class_path, self.ndim))
            check_class_shape(classes.shape, labels.shape, class_path)
            budget = float(self.cfg["train"]["memory_gb"]) * 2**30
            blocks = block_grid(labels.shape, choose_block_shape(labels.shape, labels.chunks, budget, TABLE_BYTES))
            tables[str(label_path)] = true_class_table(labels, classes, blocks, self.n_classes, label_path, class_path)
        return tables[str(label_path)]

    def true_classes(self, label: np.ndarray, path: str | Path | None) -> np.ndarray | None:
        """Each object's true class (by label id) from the class image of the label file at
        ``path``, checked against ``label`` (as read, not zoomed); None without one."""
        found = self.class_files.path_for(path) if self.n_classes and path is not None else None
        if found is None:
            return None
        classes = read_class_image(found, self.ndim, np.shape(label), self.n_classes)
        return object_classes(prepare_labels(label, path), classes, self.n_classes, found)
