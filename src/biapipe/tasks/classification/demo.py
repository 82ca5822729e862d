"""Demo data for classification: synthetic images whose class is in object size, number and shape.

Drawn with the nuclei of :mod:`biapipe.data.demo`; every image from its own random stream,
keyed by (seed, split, index, class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.imageio import write_tiff
from ...data.demo import (
    SPLITS,
    Nucleus,
    clear_of_others,
    demo_shape,
    relabel_consecutive,
    render_image,
    render_labels,
)
from .samples import CLASSIFICATION_CLASSES, classification_demo_ids

#: Per class: (min, max) object count, YX semi-axes as fractions of the image edge
#: (long range, short/long ratio range).
_CLASS_LOOK = {
    "few_large": ((2, 4), (0.13, 0.18), (0.8, 1.0)),
    "many_small": ((10, 18), (0.035, 0.05), (0.8, 1.0)),
    "elongated": ((3, 6), (0.15, 0.21), (0.25, 0.35)),
}


def make_classification_image(ndim: int, size: int, seed: int, cls: str, split: str = "train",
                              index: int = 0) -> np.ndarray:
    """One (Z)YX uint16 image of class ``cls``; (seed, class, split, index) fully determine it."""
    rng = np.random.default_rng(np.random.SeedSequence(
        [seed % 2**64, SPLITS.index(split), index, 1 + CLASSIFICATION_CLASSES.index(cls)]))
    shape = demo_shape(ndim, size)
    nuclei = _class_nuclei(rng, shape, cls)
    labels, depth = render_labels(shape, nuclei)
    labels, kept = relabel_consecutive(labels)
    return render_image(rng, shape, labels, depth, [nuclei[i - 1] for i in kept])


def _class_nuclei(rng: np.random.Generator, shape: tuple[int, ...], cls: str) -> list[Nucleus]:
    """Non-touching objects with the class's count, size and elongation, rotated in YX only
    (so elongation shows in every slice of a volume)."""
    (lo, hi), long_range, ratio_range = _CLASS_LOOK[cls]
    target = int(rng.integers(lo, hi + 1))
    edge = min(shape[-2:])
    nuclei: list[Nucleus] = []
    for _ in range(target * 40):  # bounded: a crowded image simply gets fewer objects
        if len(nuclei) >= target:
            break
        long_axis = max(1.5, rng.uniform(*long_range) * edge)
        short_axis = max(1.5, long_axis * rng.uniform(*ratio_range))
        semi = [long_axis, short_axis]
        if len(shape) == 3:
            semi = [max(1.5, min(short_axis, 0.3 * shape[0]))] + semi
        rotation = _yx_rotation(len(shape), rng.uniform(0.0, np.pi))
        margin = np.array(semi) * 0.5
        centre = rng.uniform(margin, np.asarray(shape, dtype=float) - 1 - margin)
        nucleus = Nucleus(centre, np.asarray(semi, dtype=float), rotation, float(rng.uniform(0.4, 1.0)))
        if clear_of_others(nucleus, nuclei, None):
            nuclei.append(nucleus)
    return nuclei


def _yx_rotation(ndim: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` in the YX plane (the identity along z)."""
    rot = np.eye(ndim)
    c, s = np.cos(angle), np.sin(angle)
    rot[-2:, -2:] = [[c, -s], [s, c]]
    return rot


def make_classification_demo(
    out_dir: str | Path,
    ndim: int,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 4,
    size: int = 64,
    seed: int = 0,
) -> dict[str, list[tuple[str, str]]]:
    """Write ``{split}/{class}/{name}.tif`` (``n_*`` images per class), the classification input layout.

    Returns (name, class) per split, as :func:`classification_demo_ids`.
    """
    out_dir = Path(out_dir)
    ids = classification_demo_ids(n_train, n_val, n_test)
    for split, items in ids.items():
        for index, (name, cls) in enumerate(items):
            image = make_classification_image(ndim, size, seed, cls, split, index)
            write_tiff(out_dir / split / cls / f"{name}.tif", image)
    return ids
