"""Augmentation moves image and target together, deterministically; intensity changes touch the image only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biapipe.data.augment import Augmenter


def augment_pair(image, target, seed, flip=0.5, rot90=0.5):
    """The exact stage alone, for the patch key (0, 0, 0, seed)."""
    return Augmenter.defaults(flip=flip, rot90=rot90).exact(image, target, (0, 0, 0, seed))


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
        img, tgt = augment_pair(image, target, seed, flip=0.5, rot90=0.5)
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
    img, tgt = augment_pair(image, target, 1, flip=1.0, rot90=0.0)
    np.testing.assert_array_equal(img, image[:, ::-1, ::-1])
    np.testing.assert_array_equal(tgt, target[:, ::-1, ::-1])


def test_rotation_skipped_for_non_square_patches() -> None:
    image, target = marked_pair((4, 6), (0, 1))
    for seed in range(10):
        img, tgt = augment_pair(image, target, seed, flip=0.0, rot90=1.0)
        np.testing.assert_array_equal(img, image)
        np.testing.assert_array_equal(tgt, target)


def test_rotation_uses_all_three_quarter_turns_in_yx_only() -> None:
    image, target = marked_pair((3, 5, 5), (0, 1, 2))
    seen = set()
    for seed in range(30):
        img, _ = augment_pair(image, target, seed, flip=0.0, rot90=1.0)
        k = next(k for k in range(4) if np.array_equal(img, np.rot90(image, k, axes=(-2, -1))))
        seen.add(k)
    assert seen == {1, 2, 3}


def test_same_key_same_result_and_probability() -> None:
    image, target = marked_pair((8, 8), (2, 3))
    a = augment_pair(image, target, 7)
    b = augment_pair(image, target, 7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    flipped_y = 0
    for seed in range(400):
        img, _ = augment_pair(image, target, seed, flip=0.25, rot90=0.0)
        flipped_y += int(np.array_equal(img, image[:, ::-1, :]) or np.array_equal(img, image[:, ::-1, ::-1]))
    assert 70 < flipped_y < 130  # 0.25 * 400 = 100


def test_augmenter_from_config() -> None:
    aug = Augmenter.defaults(flip=0.0, rot90=0.0)
    image, target = marked_pair((8, 8), (2, 3))
    img, tgt = aug.exact(image, target, (0, 0, 0, 0))
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(tgt, target)


# --------------------------------------------------------------------------- torch stage

import torch  # noqa: E402

from biapipe.data.augment import AugmentDraw, write_augment_samples  # noqa: E402
from biapipe.data.augment.intensity import gaussian_blur  # noqa: E402
from biapipe.data.augment.transforms import NAMES  # noqa: E402

D = AugmentDraw.of

#: Each geometric transform alone, then all together.
GEOMETRIC = {
    "rotate": D(rotate=37.0),
    "scale_up": D(scale=1.3),
    "scale_down": D(scale=0.75),
    "elastic": D(elastic=4.0),
    "all": D(rotate=-121.0, scale=1.2, elastic=3.0),
}
INTENSITY = {
    "blur": D(blur=1.0),
    "poisson": D(poisson_noise=20.0),
    "noise": D(gaussian_noise=0.1),
    "brightness": D(brightness=0.1),
    "contrast": D(contrast=1.2),
    "gamma": D(gamma=1.4),
    "cutout": D(cutout=2.0),
}


def blob_pair(shape: tuple[int, ...], at: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise image with a bright 3-pixel blob; class map and float map marking the same blob."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 1, *shape)).astype(np.float32))
    classes = torch.zeros((1, 1, *shape), dtype=torch.long)
    window = (0, 0) + tuple(slice(a - 1, a + 2) for a in at)
    image[window] = 10.0
    classes[window] = 1
    return image, classes, classes.float()


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize(("shape", "at"), [((48, 48), (30, 14)), ((12, 40, 40), (6, 27, 12))])
def test_geometric_transforms_keep_image_and_targets_aligned(name: str, shape: tuple, at: tuple) -> None:
    image, classes, floats = blob_pair(shape, at)
    aug = Augmenter.defaults(voxel_size=[2.0, 1.0, 1.0] if len(shape) == 3 else None)
    img, cls = aug.apply(image, classes, [GEOMETRIC[name]])
    _, flt = aug.apply(image, floats, [GEOMETRIC[name]])
    assert img.shape == image.shape and cls.shape == classes.shape and cls.dtype == torch.long
    brightest = np.unravel_index(int(img[0, 0].argmax()), shape)
    assert cls[(0, 0, *brightest)] == 1  # the label moved with its pixel
    assert flt[(0, 0, *brightest)] > 0.5  # float targets too (bilinear)
    moved = [int(v) for v in np.argwhere(cls[0, 0].numpy() == 1).mean(axis=0).round()]
    assert moved != list(at)  # it did move
    # and the whole labelled blob sits on bright pixels (noise is < 1; interpolation at the blob's
    # edge mixes in at most 1 - 0.5**ndim of the dark neighbours)
    on_label = img[0, 0][cls[0, 0] == 1]
    assert float(on_label.min()) > 10 * 0.5 ** len(shape) and float(on_label.mean()) > 5.0
    assert set(torch.unique(cls).tolist()) <= {-1, 0, 1}  # nearest: no new class values


def test_outside_of_the_patch_is_ignored_for_class_maps_and_reflected_otherwise() -> None:
    image = torch.full((1, 1, 32, 32), 0.7)
    classes = torch.ones((1, 1, 32, 32), dtype=torch.long)
    floats = torch.full((1, 1, 32, 32), 0.25)
    aug = Augmenter.defaults()
    draw = D(rotate=45.0, scale=0.8)
    img, cls = aug.apply(image, classes, [draw])
    _, flt = aug.apply(image, floats, [draw])
    assert cls[0, 0, 0, 0] == -1 and cls[0, 0, 16, 16] == 1  # corners come from outside: ignored
    assert 0 < int((cls == -1).sum()) < 32 * 32 // 2
    torch.testing.assert_close(img, image)  # reflection of a constant image is that constant
    torch.testing.assert_close(flt, floats)


def test_without_a_draw_nothing_changes_and_identity_grid_is_exact_enough() -> None:
    image, classes, _ = blob_pair((20, 24), (5, 6))
    img, cls = Augmenter.defaults().apply(image, classes, [D()])
    assert torch.equal(img, image) and torch.equal(cls, classes)
    img, cls = Augmenter.defaults().apply(image, classes, [D(scale=1.0 + 1e-9, rotate=1e-9)])
    torch.testing.assert_close(img, image, atol=1e-5, rtol=0)
    assert torch.equal(cls, classes)


@pytest.mark.parametrize("name", sorted(INTENSITY))
@pytest.mark.parametrize("shape", [(32, 32), (6, 24, 24)])
def test_intensity_transforms_change_the_image_only(name: str, shape: tuple) -> None:
    image, classes, floats = blob_pair(shape, tuple(s // 2 for s in shape))
    img, cls = Augmenter.defaults().apply(image, classes, [INTENSITY[name]])
    _, flt = Augmenter.defaults().apply(image, floats, [INTENSITY[name]])
    assert torch.equal(cls, classes) and torch.equal(flt, floats)
    assert img.shape == image.shape and torch.isfinite(img).all()
    assert not torch.equal(img, image)


def test_intensity_transforms_do_what_they_say() -> None:
    image, _, _ = blob_pair((32, 32), (16, 16))
    apply = Augmenter.defaults().apply
    target = torch.zeros((1, 1, 32, 32), dtype=torch.long)
    torch.testing.assert_close(apply(image, target, [D(brightness=0.1)])[0], image + 0.1)
    gamma = apply(image, target, [D(gamma=2.0)])[0]
    assert float(gamma.min()) == pytest.approx(float(image.min())) and float(gamma.max()) == pytest.approx(10.0)
    contrast = apply(image, target, [D(contrast=0.5)])[0]
    assert float(contrast.mean()) == pytest.approx(float(image.mean()), rel=1e-5)
    assert float(contrast.std()) == pytest.approx(0.5 * float(image.std()), rel=1e-4)
    blurred = gaussian_blur(image[0], 1.5)
    assert float(blurred.sum()) == pytest.approx(float(image.sum()), rel=1e-3)  # reflect keeps the mass here
    assert float(blurred.max()) < 10.0
    cut = apply(image, target, [D(cutout=3.0)])[0]
    assert int((cut == 0).sum()) > 0 and int((image == 0).sum()) == 0


def test_batched_application_equals_one_patch_at_a_time() -> None:
    """What the GPU path does for a batch is what the CPU data path does per patch."""
    rng = np.random.default_rng(3)
    aug = Augmenter.defaults(rotate=0.7, scale=0.7, elastic=0.5, blur=0.5, poisson_noise=0.5, gaussian_noise=0.5,
                    brightness=0.5, contrast=0.5, gamma=0.5, cutout=0.5)
    images = torch.from_numpy(rng.random((6, 2, 24, 24)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 3, (6, 1, 24, 24)))
    draws = [aug.draw((3, 1, 1, i)) for i in range(6)]
    batch_img, batch_tgt = aug.apply(images, targets, torch.stack([d.to_tensor() for d in draws]))
    for i, d in enumerate(draws):
        one_img, one_tgt = aug.apply(images[i:i + 1], targets[i:i + 1], [d])
        torch.testing.assert_close(batch_img[i:i + 1], one_img, atol=1e-6, rtol=0)
        assert torch.equal(batch_tgt[i:i + 1], one_tgt)


def test_each_transform_draws_from_its_own_stream() -> None:
    """Switching a transform on or off never changes what the others draw for a patch."""
    key = (1, 1, 3, 7)
    everything = dict(rotate=1, scale=1, elastic=1, blur=1, poisson_noise=1, gaussian_noise=1, brightness=1,
                      contrast=1, gamma=1, cutout=1)
    full = Augmenter.defaults(**everything).draw(key)
    for name in NAMES:
        without = Augmenter.defaults(**{**everything, name: 0}).draw(key)
        assert without[name] != full[name]
        assert [without[n] for n in NAMES if n != name] == [full[n] for n in NAMES if n != name]
        assert without.seeds == full.seeds
    image, target = marked_pair((8, 8), (2, 3))
    flips_only = Augmenter.defaults(flip=1.0, rot90=0.0).exact(image, target, key)
    both = Augmenter.defaults(flip=1.0, rot90=1.0).exact(image, target, key)
    k = next(k for k in (1, 2, 3) if np.array_equal(both[0], np.rot90(flips_only[0], k, axes=(-2, -1))))
    assert k in (1, 2, 3)  # the rotation is applied on top of the very same flips


def test_draws_depend_on_the_key_only_and_round_trip_exactly() -> None:
    aug = Augmenter.defaults(rotate=1, scale=1, elastic=1, blur=1, poisson_noise=1, gaussian_noise=1, brightness=1,
                             contrast=1, gamma=1, cutout=1)
    draw = aug.draw((5, 1, 1, 0))
    assert draw == aug.draw((5, 1, 1, 0)) and draw != aug.draw((5, 1, 2, 0)) and draw != aug.draw((5, 1, 1, 1))
    assert draw.is_geometric and draw.is_intensity
    assert AugmentDraw.from_tensor(draw.to_tensor()) == draw
    assert draw.to_tensor().numel() == 2 * len(NAMES)
    assert not Augmenter.defaults(rotate=0, scale=0, blur=0, gaussian_noise=0, brightness=0, contrast=0,
                                  gamma=0).draw((0, 1, 1, 0)).is_geometric


def test_probabilities_are_respected() -> None:
    draws = [Augmenter.defaults().draw((0, 1, 1, i)) for i in range(2000)]
    assert 0.16 < np.mean([d["rotate"] != 0 for d in draws]) < 0.24  # rotate: 0.2
    assert 0.26 < np.mean([d["gamma"] != 1 for d in draws]) < 0.34  # gamma: 0.3
    assert not any(d["elastic"] or d["poisson_noise"] or d["cutout"] for d in draws)  # off by default
    angles = [d["rotate"] for d in draws if d["rotate"]]
    assert -180 <= min(angles) < -150 and 150 < max(angles) <= 180


def test_config_ranges_and_anisotropy() -> None:
    aug = Augmenter.defaults(voxel_size=[3.0, 0.5, 0.5], rotate=1.0, rotate_range=[10, 20])
    assert aug.anisotropy == 6.0 and list(aug.settings["rotate_range"]) == [10, 20]
    assert 10 <= aug.draw((0, 1, 1, 0))["rotate"] <= 20
    with pytest.raises(Exception, match="train.augment.rotate_range"):
        Augmenter.defaults(rotate_range=[20, 10])


def test_debug_samples_are_written(tmp_path: Path) -> None:
    image, classes, _ = blob_pair((16, 16), (8, 8))
    written = write_augment_samples([(image[0], classes[0]), (image[0], classes[0])], tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["montage.png", "sample_00_image.tif", "sample_00_target.tif", "sample_01_image.tif",
                     "sample_01_target.tif"]
    assert (tmp_path / "montage.png").read_bytes()[:4] == b"\x89PNG"
