"""Volumes larger than memory: block-wise results must equal whole-volume results."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage
from skimage.segmentation import find_boundaries

from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.core.omezarr import create_ome_zarr
from biapipe.data.blocks import block_grid, choose_block_shape, merge_ids
from biapipe.data.lazy import check_chunk_budget, open_lazy
from biapipe.inference.tiling import run_tiled
from biapipe.large.predict import BlockPredictor, plan_blocks
from biapipe.tasks import get_task
from biapipe.tasks.instance.large import (
    id_stride,
    instance_block,
    instance_merge,
    instance_metrics_blocks,
)
from biapipe.tasks.instance.metrics import matching_metrics
from biapipe.tasks.instance.postprocess import InstanceParams, instance_postprocess
from biapipe.tasks.semantic.large import semantic_blocks, semantic_metrics_blocks
from biapipe.tasks.semantic.metrics import semantic_metrics
from biapipe.tasks.semantic.postprocess import semantic_postprocess

SHAPE = (24, 80, 80)


def ellipsoids(shape=SHAPE, n=40, radius=7, seed=0) -> np.ndarray:
    """Touching, seam-crossing objects: flattened in z like real nuclei stacks."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    zz, yy, xx = np.indices(shape)
    for i in range(1, n + 1):
        c = [rng.integers(0, s) for s in shape]
        inside = ((zz - c[0]) / (0.5 * radius)) ** 2 + ((yy - c[1]) / radius) ** 2 + ((xx - c[2]) / radius) ** 2 <= 1
        lab[inside & (lab == 0)] = i
    return lab


def fake_net(batch: np.ndarray) -> np.ndarray:
    """A translation-equivariant stand-in for a network: a local mean and a pointwise map."""
    return np.concatenate([ndimage.uniform_filter(batch, size=(1, 3, 3, 3, 1)), batch**2], axis=-1)


def zarr_like(tmp_path, name, shape, dtype, chunks=(8, 16, 16)):
    return zarr.create_array(store=str(tmp_path / name), shape=shape, dtype=dtype, chunks=chunks, fill_value=0)


# --------------------------------------------------------------------------- prediction


def test_block_prediction_equals_whole_volume(tmp_path):
    image = np.random.default_rng(0).random(SHAPE + (1,)).astype(np.float32)
    whole = run_tiled(image, fake_net, (16, 32, 32), overlap=0.25, batch_size=3, divisor=8)
    predictor = BlockPredictor(image, fake_net, (16, 32, 32), overlap=0.25, batch_size=3, divisor=8)
    out = zarr_like(tmp_path, "p.zarr", whole.shape, np.float32, (8, 16, 16, 2))
    for block in plan_blocks(SHAPE, (8, 16, 16), 1, 2, memory_gb=2e-4):
        out[block.slices] = predictor.predict(block)
    np.testing.assert_allclose(out[...], whole, atol=1e-6)


def test_blocks_align_to_chunks_and_fit_budget():
    shape, chunks = (100, 1000, 1000), (32, 128, 128)
    block = choose_block_shape(shape, chunks, memory_bytes=2**28, bytes_per_voxel=8)
    assert all(b % c == 0 or b == s for b, c, s in zip(block, chunks, shape))
    assert np.prod(block) * 8 * 4 <= 2**28
    split = choose_block_shape(shape, chunks, 2**40, 8, n_blocks=6)
    assert 6 <= len(block_grid(shape, split)) <= 12


def test_blocks_shaped_like_the_tile_cut_fewer_tiles():
    shape, chunks, tile = (512, 2048, 2048), (32, 128, 128), (32, 128, 128)
    cube = choose_block_shape(shape, chunks, 2**30, 12)
    like_tile = choose_block_shape(shape, chunks, 2**30, 12, aspect=tile)
    assert np.prod(like_tile) * 12 * 4 <= 2**30
    assert like_tile[1] / like_tile[0] >= 3 > cube[1] / cube[0]  # y four times z, as in the tile

    def recompute(block):  # a tile straddles a face of axis a with probability ~ tile_a / block_a
        return np.prod([1 + t / b for b, t in zip(block, tile)])

    assert recompute(like_tile) < recompute(cube)


def test_merge_ids_joins_chains():
    roots = merge_ids(np.array([3, 5, 7, 9, 11], np.uint64), np.array([[5, 9], [9, 11], [99, 3]], np.uint64))
    assert roots.tolist() == [3, 5, 7, 5, 5]


# --------------------------------------------------------------------------- post-processing


def instance_maps(lab: np.ndarray) -> np.ndarray:
    return np.stack([(lab > 0).astype(np.float32), find_boundaries(lab, mode="inner").astype(np.float32)], -1)


def test_semantic_blocks_identical(tmp_path):
    lab = ellipsoids()
    prob = np.stack([lab == 0, lab > 0], -1).astype(np.float32)
    prob[..., 1] *= np.random.default_rng(1).random(SHAPE).astype(np.float32) * 0.6 + 0.5
    whole = semantic_postprocess(prob, 0.6, 3, 60)
    out = zarr_like(tmp_path, "m.zarr", SHAPE, np.uint8)
    semantic_blocks(prob, out, block_grid(SHAPE, (8, 32, 32)), tmp_path / "c.zarr", 0.6, 3, 60)
    np.testing.assert_array_equal(out[...], whole)


def test_instance_blocks_match_whole_volume_across_seams(tmp_path):
    lab = ellipsoids()
    maps, channels = instance_maps(lab), ("foreground", "contour")
    params = InstanceParams.defaults(min_size=10)
    whole = instance_postprocess(maps, channels, params)
    blocks, halo = block_grid(SHAPE, (8, 32, 32)), (4, 12, 12)
    cut = [i for i in np.unique(lab)[1:] if len({b.index for b in blocks if (lab[b.slices] == i).any()}) > 1]
    assert len(cut) >= 10  # the test means something: many objects cross block faces
    raw = zarr_like(tmp_path, "raw.zarr", SHAPE, np.uint64)
    out = zarr_like(tmp_path, "out.zarr", SHAPE, np.uint32)
    stride = id_stride(blocks, halo)
    records = {b.index: instance_block(maps, raw, b, halo, stride, channels, params) for b in blocks}
    n = instance_merge(raw, out, blocks, records, params)
    labels = out[...]
    assert n == len(np.unique(whole)) - 1 and labels.max() == n  # ids 1..N, unique across the volume
    assert matching_metrics(labels, whole.astype(np.uint32), [0.5])["f1@0.5"] == 1.0


def test_postprocess_large_writes_ome_zarr_and_tiff(tmp_path):
    lab = ellipsoids()
    prob = np.stack([lab == 0, lab > 0], -1).astype(np.float32)
    zarr.create_array(store=str(tmp_path / "pred.zarr"), data=prob, chunks=(8, 32, 32, 2))
    task = get_task(validate_config({"experiment": "t", "workflow": "semantic", "ndim": 3,
                                     "data": {"demo": {}, "voxel_size": [2.0, 0.5, 0.5]},
                                     "targets": {"classes": 2, "binarize": True}, "predict": {"memory_gb": 0.001}}))
    task.postprocess_large(tmp_path / "pred.zarr", tmp_path / "m.ome.zarr", None, None, None)
    task.postprocess_large(tmp_path / "pred.zarr", tmp_path / "m.tif", None, None, None)
    group = zarr.open_group(str(tmp_path / "m.ome.zarr"), mode="r")
    ms = group.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(group["0"][...], (lab > 0).astype(np.uint8))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif"), (lab > 0).astype(np.uint8))


# --------------------------------------------------------------------------- metrics


def test_block_metrics_equal_whole_volume():
    gt = ellipsoids(seed=2)
    pred = ellipsoids(seed=2)
    pred[:, :, 40:] = ndimage.grey_dilation(pred, size=(1, 3, 3))[:, :, 40:]  # imperfect on one side
    pred[pred == 5] = 0
    blocks = block_grid(SHAPE, (8, 16, 32))
    thresholds = [0.3, 0.5, 0.75]
    assert instance_metrics_blocks(pred, gt, blocks, thresholds) == matching_metrics(pred, gt, thresholds)
    sem_p, sem_g = (pred > 0).astype(np.uint8), (gt > 0).astype(np.uint8)
    assert semantic_metrics_blocks(sem_p, sem_g, 2, blocks) == semantic_metrics(sem_p, sem_g, 2)


# --------------------------------------------------------------------------- lazy input


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4000, (2, 10, 40, 50), dtype=np.uint16)  # CZYX


def test_lazy_reads_agree_across_formats(tmp_path, volume):
    expected = np.moveaxis(volume, 0, -1)  # (Z)YXC
    tifffile.imwrite(tmp_path / "plain.tif", volume)
    tifffile.imwrite(tmp_path / "tiled.tif", volume, tile=(16, 16), compression="zlib")
    zarr.create_array(store=str(tmp_path / "v3.zarr"), data=volume, chunks=(1, 5, 16, 16), zarr_format=3)
    zarr.create_array(store=str(tmp_path / "v2.zarr"), data=volume, chunks=(1, 5, 16, 16), zarr_format=2)
    ome = create_ome_zarr(tmp_path / "img.ome.zarr", volume.shape, volume.dtype, (1, 5, 16, 16), "czyx")
    ome[...] = volume
    for name in ("plain.tif", "tiled.tif", "v3.zarr", "v2.zarr"):
        image = open_lazy(tmp_path / name, 3, "CZYX")
        np.testing.assert_array_equal(image[...], expected, err_msg=name)
        np.testing.assert_array_equal(image[2:7, 5:30, 10:20], expected[2:7, 5:30, 10:20], err_msg=name)
    image = open_lazy(tmp_path / "img.ome.zarr", 3)  # axes from the OME metadata
    assert image.shape == (10, 40, 50, 2)
    np.testing.assert_array_equal(image[...], expected)


def test_zarr_group_without_array_is_named(tmp_path):
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(InputError, match="empty.zarr.*no array"):
        open_lazy(tmp_path / "empty.zarr", 3)


def test_axes_that_do_not_fit_are_named(tmp_path, volume):
    zarr.create_array(store=str(tmp_path / "v.zarr"), data=volume, chunks=(1, 5, 16, 16))
    with pytest.raises(InputError, match="axes 'ZYX' do not fit"):
        open_lazy(tmp_path / "v.zarr", 3, "ZYX")
    with pytest.raises(InputError, match="spatial axes"):
        open_lazy(tmp_path / "v.zarr", 3, "CTYX")


def test_chunks_beyond_the_budget_stop_with_advice(tmp_path, volume):
    zarr.create_array(store=str(tmp_path / "big.zarr"), data=volume, chunks=volume.shape)
    image = open_lazy(tmp_path / "big.zarr", 3, "CZYX")
    with pytest.raises(InputError, match="rechunk"):
        check_chunk_budget(image, memory_bytes=10_000)
    with pytest.warns(UserWarning, match="consider rechunking"):
        check_chunk_budget(image, memory_bytes=volume.nbytes * 2)
