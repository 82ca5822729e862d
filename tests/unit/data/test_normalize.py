"""Normalization on hand-made arrays whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

import biapipe.data.normalize as normalization
from biapipe.core.config import defaults
from biapipe.core.errors import ConfigError, InputError
from biapipe.data.normalize import check_finite, compute_stats, dataset_stats, normalize


def N(**values):  # noqa: N802 (the normalize section with these values)
    return defaults("normalize", **values)


def ramp(dtype: type = np.uint16) -> np.ndarray:
    """0..100 as a 1x101 image with one channel."""
    return np.arange(101, dtype=dtype).reshape(1, 101, 1)


def test_percentile_of_ramp() -> None:
    cfg = N(method="percentile", low=1, high=99)
    stats = compute_stats(ramp(), cfg)
    assert stats["low"] == [1.0] and stats["high"] == [99.0]
    out = normalize(ramp(), cfg)
    assert out.dtype == np.float32 and out.shape == (1, 101, 1)
    np.testing.assert_allclose(out[0, [1, 50, 99], 0], [0.0, 49 / 98, 1.0], rtol=1e-6)
    assert out.min() < 0 and out.max() > 1  # no clipping by default


def test_percentile_clip() -> None:
    out = normalize(ramp(), N(method="percentile", low=1, high=99, clip=True))
    assert out.min() == 0.0 and out.max() == 1.0


def test_minmax() -> None:
    out = normalize(ramp() + 10, N(method="minmax"))
    np.testing.assert_allclose(out[0, [0, 50, 100], 0], [0.0, 0.5, 1.0])


def test_zscore_mean_and_std() -> None:
    image = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).reshape(2, 4, 1)  # mean 5, std 2
    stats = compute_stats(image, N(method="zscore"))
    assert stats["mean"] == [5.0] and stats["std"] == [2.0]
    out = normalize(image, N(method="zscore"))
    assert abs(out.mean()) < 1e-6 and abs(out.std() - 1.0) < 1e-6
    assert out[0, 0, 0] == pytest.approx(-1.5)


def test_dtype_max() -> None:
    image = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 3, 1)
    np.testing.assert_allclose(normalize(image, N(method="dtype_max"))[0, :, 0], [0.0, 0.2, 1.0])
    assert normalize(np.full((2, 2, 1), 65535, np.uint16), N(method="dtype_max")).max() == 1.0


def test_none_only_casts() -> None:
    image = np.array([[3, 7]], dtype=np.int32)[..., None]
    out = normalize(image, N(method="none"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], [[3.0, 7.0]])


@pytest.mark.parametrize("method", ["percentile", "minmax", "zscore"])
def test_constant_image_gives_zeros(method: str) -> None:
    out = normalize(np.full((4, 5, 2), 7, dtype=np.uint16), N(method=method))
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_constant_channel_next_to_a_varying_one() -> None:
    image = np.stack([np.full((3, 3), 9.0), np.arange(9.0).reshape(3, 3)], axis=-1)
    out = normalize(image, N(method="minmax", per_channel=True))
    assert np.all(out[..., 0] == 0)
    assert out[..., 1].min() == 0 and out[..., 1].max() == 1


def test_per_channel_versus_shared() -> None:
    image = np.stack([np.arange(4.0), np.arange(4.0) * 10], axis=-1).reshape(2, 2, 2)
    per = normalize(image, N(method="minmax", per_channel=True))
    np.testing.assert_allclose(per[..., 1], per[..., 0])
    shared = normalize(image, N(method="minmax", per_channel=False))
    assert shared[..., 0].max() == pytest.approx(0.1) and shared[..., 1].max() == pytest.approx(1.0)
    assert compute_stats(image, N(method="minmax", per_channel=False))["high"] == [30.0]


def test_3d_image_keeps_shape() -> None:
    image = np.random.default_rng(0).integers(0, 1000, size=(4, 8, 8, 1)).astype(np.uint16)
    out = normalize(image, N())
    assert out.shape == image.shape and out.dtype == np.float32


@pytest.mark.parametrize("method", ["percentile", "minmax", "zscore", "dtype_max"])
def test_dataset_stats_of_one_image_equal_image_stats(method: str) -> None:
    image = np.random.default_rng(1).integers(0, 4000, size=(20, 30, 2)).astype(np.uint16)
    cfg = N(method=method)
    expected, got = compute_stats(image, cfg), dataset_stats([image], cfg)
    assert got.keys() == expected.keys()
    for key in expected:
        if isinstance(expected[key], list):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-9)
        else:
            assert got[key] == expected[key]
    json.dumps(got)  # stored as JSON by the workflow
    np.testing.assert_array_equal(normalize(image, cfg, got), normalize(image, cfg))


def test_dataset_stats_pool_several_images() -> None:
    a, b = np.zeros((2, 2, 1)), np.full((2, 2, 1), 10.0)
    assert dataset_stats([a, b], N(method="minmax"))["high"] == [10.0]
    z = dataset_stats(iter([a, b]), N(method="zscore"))
    assert z["mean"] == [5.0] and z["std"] == [5.0]
    # applying dataset statistics: the dark image maps to 0 rather than to its own range
    assert normalize(a, N(method="minmax"), dataset_stats([a, b], N(method="minmax"))).max() == 0.0


def test_dataset_percentiles_are_deterministic_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    # small limits so that both the per-image subsample and the pool halving happen
    monkeypatch.setattr(normalization, "MAX_PIXELS_PER_IMAGE", 20_000)
    monkeypatch.setattr(normalization, "MAX_POOLED_PIXELS", 30_000)
    rng = np.random.default_rng(2)
    images = [rng.normal(100, 10, size=(200, 200, 1)) for _ in range(4)]
    cfg = N(method="percentile", low=1, high=99)
    first, second = dataset_stats(images, cfg), dataset_stats(images, cfg)
    assert first == second
    exact = np.percentile(np.concatenate([i.ravel() for i in images]), [1, 99])
    np.testing.assert_allclose([first["low"][0], first["high"][0]], exact, atol=0.5)


def test_mismatched_stats_are_refused() -> None:
    image = np.ones((2, 2, 3))
    with pytest.raises(ConfigError, match="normalize.method"):
        normalize(image, N(method="zscore"), {"method": "minmax", "low": [0.0], "high": [1.0]})
    with pytest.raises(InputError, match="2 channels"):
        normalize(image, N(method="minmax"), {"method": "minmax", "low": [0.0, 0.0], "high": [1.0, 1.0]})


def test_check_finite_names_file_and_count() -> None:
    check_finite(np.zeros((3, 3), np.uint8), "ok.tif")
    image = np.zeros((3, 3, 1), np.float32)
    image[0, 0], image[1, 1] = np.nan, np.inf
    with pytest.raises(InputError, match=r"bad\.tif: contains 2 NaN/Inf pixels"):
        check_finite(image, "bad.tif")
