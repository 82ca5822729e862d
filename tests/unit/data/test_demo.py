"""Demo data: deterministic, consecutive ids, right shapes, a non-trivial problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from biapipe.core.imageio import read_image, read_label
from biapipe.data.demo import demo_ids, demo_shape, make_demo_data, make_sample


def test_demo_ids_names_and_counts() -> None:
    ids = demo_ids(2, 1, 3)
    assert ids["train"] == ["train_000", "train_001"]
    assert ids["val"] == ["val_000"]
    assert ids["test"] == ["test_000", "test_001", "test_002"]
    assert demo_ids(1, 0, 1)["val"] == []


@pytest.mark.parametrize("ndim, size, shape", [(2, 64, (64, 64)), (3, 64, (16, 64, 64)), (3, 16, (8, 16, 16))])
def test_shapes_and_dtypes(ndim: int, size: int, shape: tuple[int, ...]) -> None:
    sample = make_sample(ndim, size, seed=0)
    assert demo_shape(ndim, size) == shape
    assert sample.image.shape == shape and sample.labels.shape == shape
    assert sample.image.dtype == np.uint16 and sample.labels.dtype == np.uint16
    assert sample.centroids.shape == (int(sample.labels.max()), ndim)


@pytest.mark.parametrize("ndim", [2, 3])
def test_same_seed_same_arrays_other_seed_differs(ndim: int) -> None:
    a, b = make_sample(ndim, 48, seed=3), make_sample(ndim, 48, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = make_sample(ndim, 48, seed=4)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)
    # images within one dataset differ too
    assert not np.array_equal(a.labels, make_sample(ndim, 48, seed=3, split="train", index=1).labels)


@pytest.mark.parametrize("ndim", [2, 3])
def test_labels_consecutive_and_image_informative(ndim: int) -> None:
    sample = make_sample(ndim, 64, seed=1)
    ids = np.unique(sample.labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    assert len(ids) > 3
    image, fg = sample.image.astype(float), sample.labels > 0
    assert image.std() > 0
    # nuclei are clearly brighter than background on average: a learnable problem
    assert image[fg].mean() > image[~fg].mean() + 3 * image[~fg].std()


def _touching(labels: np.ndarray) -> bool:
    """Two different ids side by side along some axis."""
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        left, right = a[:-1], a[1:]
        if np.any((left > 0) & (right > 0) & (left != right)):
            return True
    return False


@pytest.mark.parametrize("ndim", [2, 3])
def test_some_objects_touch_and_some_are_separate(ndim: int) -> None:
    samples = [make_sample(ndim, 64, seed=0, split="train", index=i) for i in range(3)]
    assert any(_touching(s.labels) for s in samples)
    # separate: some connected foreground component holds exactly one nucleus
    comps, n = ndimage.label(samples[0].labels > 0)
    per_comp = [len(np.unique(samples[0].labels[comps == c])) for c in range(1, n + 1)]
    assert 1 in per_comp


def test_centroids_match_labels() -> None:
    sample = make_sample(2, 64, seed=2)
    n = int(sample.labels.max())
    expected = ndimage.center_of_mass(np.ones(sample.labels.shape), sample.labels, np.arange(1, n + 1))
    np.testing.assert_allclose(sample.centroids, np.asarray(expected))


@pytest.mark.parametrize("ndim, columns", [(2, ["y", "x"]), (3, ["z", "y", "x"])])
def test_make_demo_data_layout_and_bytes(tmp_path, ndim: int, columns: list[str]) -> None:
    ids = make_demo_data(tmp_path / "a", ndim, n_train=2, n_val=1, n_test=1, size=32, seed=7)
    make_demo_data(tmp_path / "b", ndim, n_train=2, n_val=1, n_test=1, size=32, seed=7)
    assert ids == demo_ids(2, 1, 1)
    for split, names in ids.items():
        for name in names:
            for kind, suffix in (("images", "tif"), ("labels", "tif"), ("points", "csv")):
                rel = f"{split}/{kind}/{name}.{suffix}"
                assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    image = read_image(tmp_path / "a/train/images/train_000.tif", ndim)
    labels = read_label(tmp_path / "a/train/labels/train_000.tif", ndim)
    assert image.shape == demo_shape(ndim, 32) + (1,)
    points = pd.read_csv(tmp_path / "a/train/points/train_000.csv")
    assert list(points.columns) == columns
    assert len(points) == labels.max()
    # each point lies inside the image
    assert np.all(points.to_numpy() >= 0) and np.all(points.to_numpy() < np.array(labels.shape))
