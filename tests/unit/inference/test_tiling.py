"""Tile grid, blend windows and blended reassembly (no torch needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import zarr

from biapipe.inference.tiling import (
    BLEND_KINDS,
    axis_starts,
    axis_windows,
    blend_window,
    read_tile,
    run_tiled,
    tile_grid,
    trim_margin,
    weight_sums_1d,
    window_1d,
)


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


def rand_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def assert_reassembled(result: np.ndarray, image: np.ndarray) -> None:
    """Equal up to float32 rounding of (sum w*x) / (sum w): at most a couple of ulps."""
    assert result.shape == image.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, image, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- grid


@pytest.mark.parametrize("size", [64, 65, 100, 127, 300, 513])
@pytest.mark.parametrize("tile", [16, 64])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_axis_starts_cover_the_axis_flush_with_both_borders(size: int, tile: int, overlap: float) -> None:
    starts = axis_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(0 <= s and s + tile <= size for s in starts)
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(gaps <= tile)
    assert np.all(tile - gaps >= math.ceil(overlap * tile) - 1)
    assert gaps.max() - gaps.min() <= 1 if len(gaps) else True


def test_axis_without_overlap_tiles_exactly_when_divisible() -> None:
    assert axis_starts(512, 128, 0.0) == [0, 128, 256, 384]


def test_axis_shorter_than_tile_gets_one_centred_tile() -> None:
    assert axis_starts(37, 64, 0.5) == [-13]
    assert axis_starts(64, 64, 0.5) == [0]


def test_tile_grid_shrinks_to_small_images_and_rounds_to_divisor() -> None:
    grid = tile_grid((37, 300), (64, 100), overlap=0.25, divisor=8)
    assert grid.tile == (40, 104)
    assert grid.starts[0] == (-1,)
    assert len(grid) == len(grid.starts[1]) and grid.ndim == 2


def test_tile_grid_rejects_wrong_dimensionality() -> None:
    with pytest.raises(ValueError, match="dimensionality"):
        tile_grid((10, 10, 10), (8, 8), 0.25)


# --------------------------------------------------------------------------- windows


def test_constant_window_is_all_ones() -> None:
    w = blend_window((5, 7, 4), "constant")
    assert w.shape == (5, 7, 4) and w.dtype == np.float32 and np.all(w == 1)


@pytest.mark.parametrize("n", [8, 9, 64])
def test_linear_window_is_a_symmetric_ramp_positive_at_the_border(n: int) -> None:
    w = window_1d(n, "linear")
    c = (n - 1) / 2
    np.testing.assert_allclose(w, w[::-1])
    assert w.max() == w[(n - 1) // 2] == w[n // 2]  # peak in the centre
    assert w[0] == pytest.approx(1 / (c + 1)) and w[0] > 0
    assert np.all(np.diff(w[: n // 2]) > 0)
    if n % 2:
        assert w[n // 2] == 1.0


@pytest.mark.parametrize("n", [8, 9, 256])
def test_gaussian_window_follows_its_formula(n: int) -> None:
    w = window_1d(n, "gaussian")
    c, sigma = (n - 1) / 2, n / 8
    expected = np.exp(-((np.arange(n) - c) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w[0] == pytest.approx(np.exp(-(c**2) / (2 * sigma**2)), rel=1e-6)
    assert w.max() == pytest.approx(np.exp(-((0.5 if n % 2 == 0 else 0) ** 2) / (2 * sigma**2)), rel=1e-6)
    assert 0 < w[0] < 0.01 * w.max()  # the border counts, but little


def test_windows_are_outer_products_and_never_zero_in_3d() -> None:
    for kind in BLEND_KINDS:
        w = blend_window((32, 128, 128), kind)
        assert w.min() > 0
        wz, wy = window_1d(32, kind), window_1d(128, kind)
        assert w[3, 5, 7] == pytest.approx(wz[3] * wy[5] * wy[7], rel=1e-6)


def test_unknown_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown blend"):
        window_1d(8, "cosine")


def test_trim_zeroes_only_sides_facing_a_neighbour() -> None:
    grid = tile_grid((100,), (40,), overlap=0.5)
    m = trim_margin(grid, 0, 0.25)
    assert m == 5  # smallest overlap 20 px (starts 0, 20, 40, 60) x 0.25
    windows = axis_windows(grid, "constant", trim=0.25)[0]
    first, inner, last = windows[0], windows[20], windows[60]
    assert np.all(first[:m] == 1) and np.all(first[-m:] == 0)
    assert np.all(inner[:m] == 0) and np.all(inner[-m:] == 0) and np.all(inner[m:-m] == 1)
    assert np.all(last[:m] == 0) and np.all(last[-m:] == 1)


@pytest.mark.parametrize("kind", BLEND_KINDS)
def test_separable_weight_sums_match_brute_force(kind: str) -> None:
    grid = tile_grid((23, 41), (8, 16), overlap=0.4)
    windows = axis_windows(grid, kind, trim=0.25)
    wy, wx = weight_sums_1d(grid, windows)
    brute = np.zeros(grid.shape)
    for start in grid:
        w = np.multiply.outer(windows[0][start[0]], windows[1][start[1]])
        sl = tuple(slice(s, s + t) for s, t in zip(start, grid.tile))
        brute[sl] += w
    np.testing.assert_allclose(np.multiply.outer(wy, wx), brute, rtol=1e-6)
    assert brute.min() > 0


# --------------------------------------------------------------------------- reassembly


@pytest.mark.parametrize("blend", BLEND_KINDS)
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize(
    "shape, tile",
    [
        ((37, 51, 1), (16, 16)),  # odd 2D
        ((300, 97, 2), (64, 48)),  # odd 2D, two channels
        ((7, 5, 1), (64, 64)),  # smaller than the tile
        ((9, 37, 23, 1), (4, 16, 16)),  # odd 3D
        ((3, 10, 70, 1), (8, 16, 32)),  # 3D, partly smaller than the tile
    ],
)
def test_identity_reassembles_the_image(shape: tuple, tile: tuple, overlap: float, blend: str) -> None:
    image = rand_image(shape)
    result = run_tiled(image, identity, tile, overlap=overlap, blend=blend, batch_size=3, divisor=4)
    assert_reassembled(result, image)


@pytest.mark.parametrize("trim", [0.0, 0.25, 0.5])
def test_identity_reassembles_for_any_trim(trim: float) -> None:
    image = rand_image((45, 61, 1))
    assert_reassembled(run_tiled(image, identity, (16, 16), overlap=0.5, trim=trim), image)


def test_single_pixel_and_single_slice_images() -> None:
    for shape, tile in [((1, 1, 1), (16, 16)), ((1, 20, 20, 1), (8, 8, 8))]:
        image = rand_image(shape)
        assert_reassembled(run_tiled(image, identity, tile, overlap=0.25, divisor=8), image)


def test_output_channels_may_differ_from_input() -> None:
    image = rand_image((33, 40, 1))
    result = run_tiled(image, lambda b: np.concatenate([b, 2 * b, -b], axis=-1), (16, 16), overlap=0.25)
    assert result.shape == (33, 40, 3)
    np.testing.assert_allclose(result, np.concatenate([image, 2 * image, -image], axis=-1), rtol=1e-6, atol=1e-7)


def test_batches_hold_at_most_batch_size_tiles_of_the_tile_shape() -> None:
    """Working memory is bounded by tile x batch, whatever the number of tiles."""
    seen: list[tuple[int, ...]] = []

    def record(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return batch

    image = rand_image((200, 150, 1))
    run_tiled(image, record, (32, 32), overlap=0.25, batch_size=5)
    n_tiles = len(tile_grid((200, 150), (32, 32), 0.25))
    assert len(seen) == math.ceil(n_tiles / 5)
    assert all(s[0] <= 5 and s[1:] == (32, 32, 1) for s in seen)


def test_lazy_zarr_input_and_memmap_output(tmp_path) -> None:  # noqa: ANN001
    image = rand_image((50, 70, 1))
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=image.shape, dtype="float32", chunks=(16, 16, 1))
    z[...] = image
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=image.shape)
    result = run_tiled(z, identity, (32, 32), overlap=0.25, out=out)
    assert result is out
    assert_reassembled(np.asarray(out), image)


def test_read_tile_reflects_past_the_border() -> None:
    image = np.arange(5, dtype=np.float32)[:, None]
    tile = read_tile(image, (-2,), (8,))
    np.testing.assert_array_equal(tile[:, 0], [2, 1, 0, 1, 2, 3, 4, 3])


def test_a_tile_function_changing_the_spatial_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="tile function returned"):
        run_tiled(rand_image((20, 20, 1)), lambda b: b[:, :-1], (16, 16))
