"""Patch sampling: foreground bias, padding, size-proportional picking, fixed validation, determinism."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.core.imageio import write_zarr
from biapipe.data.patches import PatchSampler, build_datasets
from biapipe.data.sources import ChannelsFirst, ForegroundIndex, load_samples


class ForegroundTask:
    """Just the part of the Task interface that sampling uses."""

    def foreground(self, target: np.ndarray) -> np.ndarray:
        return target[..., 0] > 0


TASK = ForegroundTask()


def config(ndim: int = 2, **train) -> dict:
    base = {"patch_size": [16] * ndim, "patches_per_epoch": 20, "val_patches": 5, "foreground_fraction": 0.5}
    return validate_config({"experiment": "t", "workflow": "semantic", "ndim": ndim,
                            "data": {"train": {"images": "x"}}, "train": {**base, **train}})


def write_pair(folder: Path, name: str, label: np.ndarray, target_dtype=np.int16, channels: int = 1) -> tuple:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    image = np.stack([label + rng.normal(0, 0.1, label.shape)] * channels, axis=-1).astype(np.float32)
    img_path, tgt_path = folder / f"{name}_image.zarr", folder / f"{name}_target.zarr"
    write_zarr(img_path, image)
    write_zarr(tgt_path, label[..., None].astype(target_dtype))
    return img_path, tgt_path


def small_object(shape: tuple[int, ...], at: tuple[int, ...]) -> np.ndarray:
    label = np.zeros(shape, dtype=np.int16)
    label[tuple(slice(a, a + 2) for a in at)] = 1
    return label


def test_foreground_fraction_one_puts_foreground_in_every_patch(tmp_path: Path) -> None:
    pairs = [write_pair(tmp_path, "a", small_object((64, 64), (50, 7))),
             write_pair(tmp_path, "b", np.zeros((64, 64), np.int16))]  # no foreground at all
    data = build_datasets(config(foreground_fraction=1.0, patches_per_epoch=60), TASK, pairs, [])
    for i in range(len(data.train)):
        _, target = data.train[i]
        assert (target > 0).any()
    # without the bias most patches of this sparse image miss the object
    data0 = build_datasets(config(foreground_fraction=0.0, patches_per_epoch=60), TASK, pairs, [])
    hits = sum(bool((data0.train[i][1] > 0).any()) for i in range(len(data0.train)))
    assert hits < 20


def test_3d_patches_have_patch_shape_and_types(tmp_path: Path) -> None:
    pairs = [write_pair(tmp_path, "v", small_object((12, 20, 20), (3, 4, 5)), channels=2)]
    data = build_datasets(config(ndim=3, patch_size=[8, 16, 16], foreground_fraction=1.0), TASK, pairs, pairs)
    image, target = data.train[0]
    assert image.shape == (2, 8, 16, 16) and image.dtype == torch.float32
    assert target.shape == (1, 8, 16, 16) and target.dtype == torch.long
    assert data.in_channels == 2 and data.target_is_class_map
    assert (target > 0).any()


def test_small_images_are_padded_with_ignore_value(tmp_path: Path) -> None:
    label = np.ones((10, 12), np.int16)
    pairs = [write_pair(tmp_path, "s", label)]
    data = build_datasets(config(patch_size=[16, 16], pad=True), TASK, pairs, pairs)
    image, target = data.val[0]
    assert image.shape == (1, 16, 16)
    # 6 rows and 4 columns were added, split evenly around the image
    assert (target[0, 3:13, 2:14] == 1).all()
    assert (target == -1).sum() == 16 * 16 - 10 * 12
    # reflect padding: the padded row above mirrors the second image row
    np.testing.assert_array_equal(image[0, 2, 2:14].numpy(), image[0, 4, 2:14].numpy())


def test_float_targets_are_padded_with_zero_and_returned_as_float(tmp_path: Path) -> None:
    pairs = [write_pair(tmp_path, "f", np.full((10, 16), 0.5), target_dtype=np.float32)]
    # without interpolating transforms, which would blend the padding into the values
    data = build_datasets(config(pad=True, augment={"rotate": 0.0, "scale": 0.0}), TASK, pairs, [])
    _, target = data.train[0]
    assert target.dtype == torch.float32
    assert set(np.unique(target.numpy())) == {0.0, 0.5}
    assert not data.target_is_class_map


def test_small_image_without_pad_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    big = write_pair(tmp_path, "big", small_object((32, 32), (3, 3)))
    small = write_pair(tmp_path, "small", small_object((32, 10), (3, 3)))
    with pytest.raises(InputError) as info:
        build_datasets(config(pad=False), TASK, [big], [small])
    assert info.value.path == str(small[0])
    assert "(32, 10) is smaller than train.patch_size [16, 16]" in str(info.value)
    assert "set train.pad: true" in str(info.value)


def test_mismatched_target_and_channels_are_input_errors(tmp_path: Path) -> None:
    img, _ = write_pair(tmp_path, "m", small_object((32, 32), (3, 3)))
    _, other_tgt = write_pair(tmp_path, "n", small_object((32, 30), (3, 3)))
    with pytest.raises(InputError, match="does not match its image"):
        build_datasets(config(), TASK, [(img, other_tgt)], [])
    one = write_pair(tmp_path, "one", small_object((32, 32), (3, 3)))
    two = write_pair(tmp_path, "two", small_object((32, 32), (3, 3)), channels=2)
    with pytest.raises(InputError, match="channels"):
        build_datasets(config(), TASK, [one, two], [])


def test_images_are_picked_in_proportion_to_their_size(tmp_path: Path) -> None:
    pairs = [write_pair(tmp_path, "large", small_object((64, 64), (3, 3))),
             write_pair(tmp_path, "tiny", small_object((16, 16), (3, 3)))]
    sampler = PatchSampler(load_samples(pairs, TASK.foreground, [16, 16], pad=True), [16, 16], foreground_fraction=0.0)
    rng = np.random.default_rng(0)
    picks = np.array([sampler.draw(rng)[0] for _ in range(850)])
    assert (picks == 0).mean() == pytest.approx(16 / 17, abs=0.03)


def test_patches_are_deterministic_per_seed_and_epoch(tmp_path: Path) -> None:
    pairs = [write_pair(tmp_path, "d", small_object((40, 40), (20, 20)))]

    def epoch_patches(seed: int, epoch: int) -> torch.Tensor:
        cfg = config().replace(seed=seed)
        data = build_datasets(cfg, TASK, pairs, [])
        data.train.set_epoch(epoch)
        return torch.stack([data.train[i][0] for i in range(len(data.train))])

    assert torch.equal(epoch_patches(0, 1), epoch_patches(0, 1))
    assert not torch.equal(epoch_patches(0, 1), epoch_patches(0, 2))
    assert not torch.equal(epoch_patches(0, 1), epoch_patches(5, 1))


def test_validation_patches_are_fixed_and_unaugmented(tmp_path: Path) -> None:
    train = [write_pair(tmp_path, "t", small_object((40, 40), (5, 5)))]
    val = [write_pair(tmp_path, "v", small_object((40, 48), (30, 9)))]
    cfg = config(augment={"flip": 1.0, "rot90": 1.0})
    first = build_datasets(cfg, TASK, train, val).val
    second = build_datasets(cfg, TASK, train, val).val
    assert len(first) == 5
    full = first.sampler.samples[0].image
    for i in range(len(first)):
        index, corner = first.positions[i]
        image, target = first[i]
        assert torch.equal(image, first[i][0])  # same every time it is read (every epoch)
        assert torch.equal(image, second[i][0])  # and across builds with the same seed
        window = full[:, corner[0]:corner[0] + 16, corner[1]:corner[1] + 16]
        np.testing.assert_array_equal(image.numpy(), window)  # no flips or rotations


def test_gpu_path_hands_over_draws_that_reproduce_the_cpu_patches(tmp_path: Path) -> None:
    """With augment_on_device the loader returns un-augmented patches plus draws; applying those
    draws (as the CUDA training loop does) gives exactly the patches of the CPU data path."""
    pairs = [write_pair(tmp_path, "g", small_object((48, 48), (20, 20)))]
    cfg = config(augment={"rotate": 0.8, "scale": 0.5, "brightness": 0.5})
    cpu = build_datasets(cfg, TASK, pairs, []).train
    deferred = build_datasets(cfg, TASK, pairs, [], augment_on_device=True).train
    for ds in (cpu, deferred):
        ds.set_epoch(3)
    items = [deferred[i] for i in range(8)]
    assert all(len(item) == 3 and item[2].dtype == torch.float64 for item in items)
    images, targets, draws = (torch.stack(part) for part in zip(*items))
    aug_images, aug_targets = deferred.augmenter.apply(images, targets, draws)
    for i in range(8):
        image, target = cpu[i]
        torch.testing.assert_close(aug_images[i], image, atol=1e-6, rtol=0)
        assert torch.equal(aug_targets[i], target)
    assert any(not torch.equal(images[i], aug_images[i]) for i in range(8))


def test_zooming_out_reads_the_real_surroundings_not_a_mirror_of_the_patch(tmp_path: Path) -> None:
    """A zoom of 0.5 shows twice the field of view: on an image whose value is its x coordinate,
    the patch spans twice the patch's own range of x (a mirror inside the patch would stay
    within it); the class map follows, ignored only beyond the image."""
    x = np.broadcast_to(np.arange(96, dtype=np.float32), (96, 96))
    image_path, target_path = tmp_path / "ramp_image.zarr", tmp_path / "ramp_target.zarr"
    write_zarr(image_path, np.ascontiguousarray(x)[..., None])
    write_zarr(target_path, (x >= 48).astype(np.int16)[..., None])
    cfg = config(augment={"flip": 0.0, "rot90": 0.0, "rotate": 0.0, "blur": 0.0, "scale": 1.0,
                          "scale_range": [0.5, 0.5]}, foreground_fraction=0.0, patches_per_epoch=12)
    train = build_datasets(cfg, TASK, [(image_path, target_path)], []).train
    windows_inside = 0
    for i in range(len(train)):
        corner_y, corner_x = train.sampler.draw(np.random.default_rng([train.seed, 1, 0, i]))[1]  # patch i's position
        image, target, draw = train.draw_patch(i)
        assert draw["scale"] == 1.0  # done here, not again by the interpolating stage
        if not all(0 <= c - 8 and c + 24 <= 96 for c in (corner_y, corner_x)):
            assert (target == -1).any()  # the class map is ignored beyond the image
            continue
        windows_inside += 1
        row = image[0, 8].numpy()
        expected = corner_x - 8 + 2 * np.arange(16) + 0.5  # the 32-pixel window about the centre, pixel pairs averaged
        np.testing.assert_allclose(row[1:-1], expected[1:-1], atol=1e-3)
        np.testing.assert_allclose(row[[0, -1]], expected[[0, -1]], atol=0.5)
        assert row.max() - row.min() > 28  # twice the 15 of the patch itself
        assert not (target == -1).any()
        assert torch.equal(target[0, 8] == 1, torch.from_numpy(row >= 47.5))
    assert windows_inside >= 2


# --------------------------------------------------------------------------- images kept on disk


def test_foreground_index_finds_every_foreground_voxel_once_in_chunk_major_order() -> None:
    rng = np.random.default_rng(3)
    target = (rng.random((1, 700, 600)) > 0.97).astype(np.int16)  # 2 x 2 chunks of at most 512 x 512
    index = ForegroundIndex(target, TASK.foreground, (256, 256), keep_all=False)
    assert index.size == int(target.sum())
    found = [index.voxel(k) for k in range(index.size)]
    assert len(set(found)) == index.size and all(target[(0, *v)] == 1 for v in found)
    # chunk-major: all voxels of the first chunk (rows < 512, columns < 512) come first
    first_chunk = int(target[0, :512, :512].sum())
    assert all(y < 512 and x < 512 for y, x in found[:first_chunk])
    assert not any(y < 512 and x < 512 for y, x in found[first_chunk:])


def test_a_pair_over_the_memory_budget_is_read_patch_by_patch_and_gives_the_same_patches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((40, 600, 560), np.int16)
    label[rng.random(label.shape) > 0.999] = 1
    pairs = [write_pair(tmp_path, "big", label), write_pair(tmp_path, "small", label[:8, :64, :64])]
    cfg = config(ndim=3, patch_size=[8, 32, 32], foreground_fraction=0.7, patches_per_epoch=24)
    in_memory = build_datasets(cfg, TASK, pairs, pairs[1:])
    on_disk = build_datasets(cfg.with_value("train.memory_gb", 0.001), TASK, pairs, pairs[1:])
    assert isinstance(on_disk.train.sampler.samples[0].image, ChannelsFirst)
    assert isinstance(in_memory.train.sampler.samples[0].image, np.ndarray)
    assert isinstance(on_disk.train.sampler.samples[1].image, np.ndarray)  # the small pair still fits
    for epoch in (0, 3):
        in_memory.train.set_epoch(epoch)
        on_disk.train.set_epoch(epoch)
        for i in range(len(in_memory.train)):
            for a, b in zip(in_memory.train[i], on_disk.train[i]):
                assert torch.equal(a, b)


def test_a_pair_kept_on_disk_is_still_checked_before_training(tmp_path: Path) -> None:
    image = tmp_path / "bad_image.zarr"
    write_zarr(image, np.zeros((64, 64, 1), np.float32))
    target = tmp_path / "bad_target.zarr"
    write_zarr(target, np.zeros((64, 60, 1), np.int16))
    with pytest.raises(InputError, match="bad_target.zarr.*does not match"):
        build_datasets(config(memory_gb=0.000001), TASK, [(image, target)], [])
