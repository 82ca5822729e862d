"""Noise2Void blind spots: the network never sees a masked pixel's value, and the loss scores
only masked pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biapipe.tasks.restoration.data import BlindSpotPatches
from biapipe.tasks.restoration.masking import blind_spot, grid_positions, replacements
from biapipe.training.losses import RestorationLoss

SETTINGS = {"mask_fraction": 0.02, "mask_radius": 2, "replace": "neighbour", "structured": None}


class _Patches:
    """A stand-in patch dataset: item i is a fixed random patch, its own target."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.images = [np.random.default_rng(i).normal(size=shape).astype(np.float32) for i in range(3)]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(self.images[i].copy())
        return t, t.clone()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


@pytest.mark.parametrize("replace", ["neighbour", "median"])
@pytest.mark.parametrize("shape", [(2, 40, 40), (1, 8, 24, 24)])
def test_the_network_input_does_not_depend_on_masked_pixels(replace: str, shape: tuple[int, ...]) -> None:
    """Change every masked pixel of a patch: the network input must not change at all (so no
    blind spot's value reaches the network, through itself or another blind spot)."""
    inner = _Patches(shape)
    data = BlindSpotPatches(inner, {**SETTINGS, "replace": replace}, seed=4, stream=11)
    data.set_epoch(2)
    x, y = data[1]
    mask = y[-1].numpy().astype(bool)
    assert mask.sum() >= 3
    original = inner.images[1].copy()
    inner.images[1][:, mask] += 100.0  # what the network must not see
    x2, y2 = data[1]
    assert torch.equal(x, x2)
    # the target still holds the true (changed) values at the masked pixels: that is what is scored
    assert torch.allclose(y2[:-1][:, torch.from_numpy(mask)], torch.from_numpy(inner.images[1][:, mask]))
    # the check would fail without masking: the plain patch changes where the mask is
    assert not np.array_equal(original, inner.images[1])


def test_structured_masks_also_hide_the_pixels_along_x() -> None:
    image = np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)
    masked, mask = blind_spot(image, (1, 2, 3), 0.02, 2, "neighbour", structured=2)
    points = np.argwhere(mask[0] > 0)
    changed = masked[0] != image[0]
    for y, x in points:
        for dx in (-2, -1, 1, 2):
            if 0 <= x + dx < 32:
                assert changed[y, x + dx] or masked[0, y, x + dx] == image[0, y, x + dx]
    # a change of the pixels next to a blind spot along X does not reach the input either
    image2 = image.copy()
    for y, x in points:
        image2[0, y, max(0, x - 2):x + 3] += 50
    assert np.array_equal(blind_spot(image2, (1, 2, 3), 0.02, 2, "neighbour", structured=2)[0], masked)


def test_median_replacement_is_the_median_of_the_visible_neighbourhood() -> None:
    image = np.arange(49, dtype=np.float32).reshape(1, 7, 7) ** 2
    masked, mask = blind_spot(image, (0,), 1 / 49, 1, "median")  # one cell: one blind spot
    (y, x), = np.argwhere(mask[0] > 0)
    window = image[0, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].ravel()
    neighbours = window[window != image[0, y, x]]
    assert masked[0, y, x] == np.median(neighbours)


def test_blind_spots_are_spread_one_per_grid_cell() -> None:
    points = grid_positions((40, 40), 1 / 100, np.random.default_rng(0))  # cells of 10 x 10
    assert len(points) == 16
    assert sorted({(int(y) // 10, int(x) // 10) for y, x in points}) == [(a, b) for a in range(4) for b in range(4)]


def test_masked_loss_scores_only_the_masked_pixels() -> None:
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]]])  # values, then the mask
    l2 = RestorationLoss(l1=0.0, l2=1.0, masked=True)(pred, target)
    l1 = RestorationLoss(l1=1.0, l2=0.0, masked=True)(pred, target)
    assert float(l2) == pytest.approx((1 + 16) / 2)
    assert float(l1) == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="SSIM"):
        RestorationLoss(ssim=1.0, masked=True)


@pytest.mark.parametrize("shape, structured", [((2, 48, 48), None), ((2, 48, 48), 2), ((1, 10, 20, 20), None)])
def test_every_replacement_comes_from_the_visible_neighbourhood(shape: tuple[int, ...], structured: int | None) -> None:
    """Each blind spot (all at once, vectorized) gets, per channel, the median of the pixels
    within the radius that are not hidden, computed here one spot at a time; with ``neighbour``
    it gets the values of one such pixel, drawn anew per spot (more than one offset in use)."""
    image = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    radius, fraction = 2, 0.05
    masked, mask = blind_spot(image, (7,), fraction, radius, "median", structured)
    hidden = np.zeros(shape[1:], dtype=bool)
    for d in range(-(structured or 0), (structured or 0) + 1):  # the blind spots and their X neighbours
        moved = np.argwhere(mask[0] > 0)
        moved[:, -1] += d
        moved = moved[(moved[:, -1] >= 0) & (moved[:, -1] < shape[-1])]
        hidden[tuple(moved.T)] = True
    replaced = np.argwhere(hidden)
    assert mask.sum() >= 10
    assert np.array_equal(np.any(masked != image, axis=0), hidden)  # exactly those pixels are replaced
    for p in replaced:
        window = tuple(slice(max(c - radius, 0), c + radius + 1) for c in p)
        visible = image[(slice(None), *window)][:, ~hidden[window]]
        assert np.allclose(masked[(slice(None), *p)], np.median(visible, axis=1))
    picked, mask_n = blind_spot(image, (7,), fraction, radius, "neighbour", structured)
    offsets = set()
    for p in np.argwhere(mask_n[0] > 0):
        window = tuple(slice(max(c - radius, 0), c + radius + 1) for c in p)
        value = picked[(slice(None), *p)].reshape(-1, *[1] * len(p))
        candidates = np.argwhere(np.all(image[(slice(None), *window)] == value, axis=0))
        assert len(candidates) == 1, "the values must be those of one pixel of the neighbourhood"
        source = candidates[0] + np.array([w.start for w in window])
        assert not hidden[tuple(source)]
        offsets.add(tuple(source - p))
    assert len(offsets) > 3


@pytest.mark.parametrize("replace", ["neighbour", "median"])
def test_a_blind_spot_with_nothing_visible_around_gets_zero(replace: str) -> None:
    image = np.full((2, 5, 5), 7.0, dtype=np.float32)
    hidden = np.ones((5, 5), dtype=bool)
    hidden[0, 0] = False  # visible, but outside the radius of (3, 3)
    points = np.array([[3, 3], [1, 1]])
    values = replacements(image, hidden, points, 1, replace, np.random.default_rng(0))
    assert values.shape == (2, 2)
    assert np.array_equal(values[:, 0], [0, 0])  # nothing visible within 1 of (3, 3)
    assert np.array_equal(values[:, 1], [7, 7])  # (0, 0) is within 1 of (1, 1)
