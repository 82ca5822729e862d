"""Flips and rotations move image and target together, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from biapipe.augment import Augmenter, augment_pair


def marked_pair(shape: tuple[int, ...], where: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((2, *shape)).astype(np.float32)
    image[(0, *where)] = 10.0
    target = np.zeros((1, *shape), dtype=np.int16)
    target[(0, *where)] = 1
    return image, target


@pytest.mark.parametrize("shape", [(8, 8), (6, 8, 8), (8, 5)])
def test_marked_pixel_stays_aligned(shape: tuple[int, ...]) -> None:
    where = tuple(1 for _ in shape)
    image, target = marked_pair(shape, where)
    positions = set()
    for seed in range(40):
        img, tgt = augment_pair(image, target, np.random.default_rng(seed), flip=0.5, rot90=0.5)
        assert img.shape == image.shape and tgt.shape == target.shape
        assert img.flags.c_contiguous and tgt.flags.c_contiguous
        at_image = np.unravel_index(np.argmax(img[0]), img.shape[1:])
        at_target = np.unravel_index(np.argmax(tgt[0]), tgt.shape[1:])
        assert at_image == at_target
        np.testing.assert_array_equal(np.sort(img, axis=None), np.sort(image, axis=None))  # a permutation
        positions.add(at_image)
    assert len(positions) > 2  # the transforms actually moved the pixel


def test_flip_everything_without_rotation() -> None:
    image, target = marked_pair((4, 6), (0, 1))
    img, tgt = augment_pair(image, target, np.random.default_rng(1), flip=1.0, rot90=0.0)
    np.testing.assert_array_equal(img, image[:, ::-1, ::-1])
    np.testing.assert_array_equal(tgt, target[:, ::-1, ::-1])


def test_rotation_skipped_for_non_square_patches() -> None:
    image, target = marked_pair((4, 6), (0, 1))
    for seed in range(10):
        img, tgt = augment_pair(image, target, np.random.default_rng(seed), flip=0.0, rot90=1.0)
        np.testing.assert_array_equal(img, image)
        np.testing.assert_array_equal(tgt, target)


def test_rotation_uses_all_three_quarter_turns_in_yx_only() -> None:
    image, target = marked_pair((3, 5, 5), (0, 1, 2))
    seen = set()
    for seed in range(30):
        img, _ = augment_pair(image, target, np.random.default_rng(seed), flip=0.0, rot90=1.0)
        k = next(k for k in range(4) if np.array_equal(img, np.rot90(image, k, axes=(-2, -1))))
        seen.add(k)
    assert seen == {1, 2, 3}


def test_same_generator_state_same_result_and_probability() -> None:
    image, target = marked_pair((8, 8), (2, 3))
    a = augment_pair(image, target, np.random.default_rng(7))
    b = augment_pair(image, target, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    rng = np.random.default_rng(3)
    flipped_y = 0
    for _ in range(400):
        img, _ = augment_pair(image, target, rng, flip=0.25, rot90=0.0)
        flipped_y += int(np.array_equal(img, image[:, ::-1, :]) or np.array_equal(img, image[:, ::-1, ::-1]))
    assert 70 < flipped_y < 130  # 0.25 * 400 = 100


def test_augmenter_from_config() -> None:
    aug = Augmenter.from_config({"train": {"augment": {"flip": 0.0, "rot90": 0.0}}})
    image, target = marked_pair((8, 8), (2, 3))
    img, tgt = aug(image, target, np.random.default_rng(0))
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(tgt, target)
