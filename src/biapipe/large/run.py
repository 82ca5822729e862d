"""Stage-level entry points for large volumes: file in, file out, memory bounded by blocks.

``predict_large`` and ``postprocess_large`` do a whole volume in one job, block by block;
``predict_block_job`` does a subset of the blocks so several jobs (SLURM array-like) share
one volume, each writing only its own chunk-aligned region of a store made beforehand by
``prepare_prediction``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import imageio
from ..errors import ConfigError
from ..omezarr import create_ome_zarr
from .blocks import Block
from .lazy import LazyImage, NormalizedImage, check_chunk_budget, lazy_stats, open_lazy
from .predict import BlockPredictor, create_prediction_store, plan_blocks, predict_into, prediction_chunks

DEFAULT_MEMORY_GB = 4.0

#: float32-sized working arrays per voxel that block-wise post-processing budgets for.
WATERSHED_TEMPORARIES = 16


def is_large(shape: Sequence[int], image_id: str, pcfg: dict[str, Any]) -> bool:
    """Whether an image takes the block-wise path: listed by name, or over ``large_voxels``."""
    if image_id in (pcfg.get("large_images") or []):
        return True
    threshold = int(pcfg.get("large_voxels") or 0)
    return threshold > 0 and math.prod(shape) >= threshold


def memory_bytes(pcfg: dict[str, Any]) -> float:
    return float(pcfg.get("memory_gb") or DEFAULT_MEMORY_GB) * 2**30


def halo(pcfg: dict[str, Any], ndim: int) -> tuple[int, ...]:
    value = pcfg.get("halo", 16)
    values = [value] * ndim if isinstance(value, int) else list(value)
    if len(values) != ndim:
        raise ConfigError("predict.halo", f"has {len(values)} entries for a {ndim}D image")
    return tuple(int(v) for v in values)


# --------------------------------------------------------------------------- prediction


def _predictor(model_path: str | Path, image: Any, task: Any, pcfg: dict[str, Any]) -> BlockPredictor:
    import torch

    from ..predict import _precision, _tile_size, load_predictor, make_batch_fn

    torch.set_num_threads(int(pcfg.get("threads", torch.get_num_threads())))
    loaded = load_predictor(model_path, pcfg.get("device", "auto"))
    dev = loaded.device
    fn = make_batch_fn(loaded.model, task.activate, dev, channels_last=dev.type == "cpu",
                       dtype=_precision(pcfg.get("precision", "float32")), tta=bool(pcfg.get("tta", False)))
    return BlockPredictor(image, fn, _tile_size(pcfg, image.ndim - 1), float(pcfg.get("overlap", 0.25)),
                          pcfg.get("blend", "gaussian"), int(pcfg.get("batch_size", 4)), loaded.divisor,
                          float(pcfg.get("trim", 0.25)))


def prediction_plan(image: Any, task: Any, pcfg: dict[str, Any]) -> tuple[tuple[int, ...], list[Block]]:
    """Output shape (Z)YXC and its chunk-aligned blocks."""
    return plan_for_shape(image.shape, task, pcfg)


def plan_for_shape(shape: Sequence[int], task: Any, pcfg: dict[str, Any]) -> tuple[tuple[int, ...], list[Block]]:
    """The plan of an input of canonical (Z)YXC ``shape``; from a header alone, so the workflow
    knows the block jobs of a volume when it builds the DAG."""
    shape = tuple(int(s) for s in shape)
    out_shape = shape[:-1] + (task.out_channels(),)
    chunks = prediction_chunks(out_shape, len(shape) - 1, pcfg.get("chunks"))
    tile = pcfg.get("tile_size")
    blocks = plan_blocks(out_shape[:-1], chunks[:-1], shape[-1], out_shape[-1], memory_bytes(pcfg) / 2**30,
                         pcfg.get("split"), tile if tile and len(tile) == len(shape) - 1 else None)
    return out_shape, blocks


def open_raw(image_path: str | Path, cfg: dict[str, Any]) -> LazyImage:
    """A raw input image in the order ``data.axes`` gives, checked against the memory budget."""
    image = open_lazy(image_path, cfg["ndim"], cfg["data"].get("axes"))
    check_chunk_budget(image, memory_bytes(cfg["predict"]))
    return image


def open_normalized(image_path: str | Path, cfg: dict[str, Any], stats: dict[str, Any] | None = None) -> NormalizedImage:
    """The raw image normalized tile by tile; ``stats`` (dataset scope) or its own, read by blocks."""
    image = open_raw(image_path, cfg)
    if stats is None:
        stats = lazy_stats(image, cfg["normalize"], memory_bytes(cfg["predict"]))
    return NormalizedImage(image, cfg["normalize"], stats)


def predict_large(model_path: str | Path, image_path: str | Path, out_zarr: str | Path, cfg: dict[str, Any],
                  stats: dict[str, Any] | None = None) -> int:
    """Predict one raw volume block by block into ``out_zarr`` (atomic); returns the number of blocks."""
    from ..tasks import get_task

    task, pcfg = get_task(cfg), cfg["predict"]
    image = open_normalized(image_path, cfg, stats)
    out_shape, blocks = prediction_plan(image, task, pcfg)
    predictor = _predictor(model_path, image, task, pcfg)
    with imageio.atomic_path(out_zarr) as tmp:
        out = create_prediction_store(tmp, out_shape, prediction_chunks(out_shape, image.ndim - 1, pcfg.get("chunks")),
                                      {"model": str(model_path), "blocks": len(blocks), "normalize": image.stats})
        predict_into(predictor, out, blocks)
    return len(blocks)


def prepare_prediction(image_path: str | Path, store: str | Path, cfg: dict[str, Any],
                       stats: dict[str, Any] | None = None) -> list[int]:
    """Create the empty output store that block jobs fill, with the image's normalization
    statistics in its attributes (computed once, so every block job normalizes alike);
    returns the block indices."""
    from ..tasks import get_task

    pcfg = cfg["predict"]
    image = open_normalized(image_path, cfg, stats)
    out_shape, blocks = prediction_plan(image, get_task(cfg), pcfg)
    with imageio.atomic_path(store) as tmp:
        create_prediction_store(tmp, out_shape, prediction_chunks(out_shape, image.ndim - 1, pcfg.get("chunks")),
                                {"blocks": len(blocks), "normalize": image.stats})
    return [b.index for b in blocks]


def predict_block_job(model_path: str | Path, image_path: str | Path, store: str | Path, block_ids: Sequence[int],
                      marker: str | Path, cfg: dict[str, Any]) -> None:
    """Predict some blocks of a volume into the shared store, then write ``marker``."""
    import zarr

    from ..tasks import get_task

    task = get_task(cfg)
    out = zarr.open_array(str(store), mode="r+")
    image = open_normalized(image_path, cfg, dict(out.attrs)["normalize"])
    _, blocks = prediction_plan(image, task, cfg["predict"])
    if len(blocks) != int(out.attrs["blocks"]):
        raise ConfigError("predict.memory_gb", f"{image_path}: the block plan ({len(blocks)} blocks) differs from the "
                          f"one the store was made for ({out.attrs['blocks']}); rerun the whole image")
    chosen = [b for b in blocks if b.index in set(int(i) for i in block_ids)]
    predict_into(_predictor(model_path, image, task, cfg["predict"]), out, chosen)
    imageio.write_text(marker, f"{len(chosen)} blocks\n")


# --------------------------------------------------------------------------- post-processing


def postprocess_large(pred_zarr: str | Path, out_path: str | Path, cfg: dict[str, Any],
                      side: dict[str, str] | None = None, image_path: str | Path | None = None,
                      segmented: tuple[str, list[str]] | None = None) -> int:
    """Semantic masks or instance labels of a prediction Zarr, block by block, written as OME-Zarr
    at ``out_path`` (``*.ome.zarr``) or as a BigTIFF streamed plane by plane (``*.tif``).
    ``side`` names the task's extra outputs (the instance object table, with mean intensities
    of the raw image at ``image_path``). ``segmented`` = (raw-id store, per-block record files
    in block order) when instance blocks were segmented by separate jobs: then this job is the
    seam merge alone."""
    import zarr

    from ..tasks import get_task

    task, pcfg = get_task(cfg), cfg["predict"]
    pred = zarr.open_array(str(pred_zarr), mode="r")
    spatial = tuple(pred.shape[:-1])
    chunks = tuple(pred.chunks[:-1])
    if task.name == "detection":  # points: a CSV in global coordinates, no image output
        from .points import detection_table

        # peak finding holds about C + 3 float32 arrays of a grown block
        blocks = plan_blocks(spatial, chunks, pred.shape[-1], 4, memory_bytes(pcfg) / 2**30)
        table = detection_table(pred, blocks, task)
        imageio.write_csv(out_path, table)
        return len(table)
    blocks = postprocess_plan(pred.shape, pred.chunks, pcfg)
    work = Path(out_path).with_name(f".{Path(out_path).name}.work")
    work.mkdir(parents=True, exist_ok=True)
    try:
        omez = work / "labels.ome.zarr"
        dtype = np.uint8 if task.name == "semantic" else np.uint32
        out = create_ome_zarr(omez, spatial, dtype, chunks, "zyx"[3 - len(spatial):], cfg["data"].get("voxel_size"),
                              name=Path(out_path).name)
        n = _postprocess_into(task, pred, out, blocks, work, pcfg, segmented)
        if side and "objects" in side:
            from .objects import object_table_blocks

            image = open_raw(image_path, cfg) if image_path else None
            imageio.write_csv(side["objects"], object_table_blocks(out, blocks, n, image, task.voxel_size))
        _publish(omez, out, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return n


def postprocess_plan(pred_shape: Sequence[int], pred_chunks: Sequence[int], pcfg: dict[str, Any]) -> list[Block]:
    """Blocks of block-wise segmentation: the watershed holds about a dozen float/int
    temporaries per voxel besides the prediction, so they are smaller than prediction blocks."""
    return plan_blocks(tuple(pred_shape[:-1]), tuple(pred_chunks[:-1]), int(pred_shape[-1]), WATERSHED_TEMPORARIES,
                       memory_bytes(pcfg) / 2**30)


def instance_block_ids(image_shape: Sequence[int], cfg: dict[str, Any]) -> list[int]:
    """The segmentation blocks of a large image, from its (Z)YXC shape (one job each)."""
    from ..tasks import get_task

    out_shape, _ = plan_for_shape(image_shape, get_task(cfg), cfg["predict"])
    chunks = prediction_chunks(out_shape, len(out_shape) - 1, cfg["predict"].get("chunks"))
    return [b.index for b in postprocess_plan(out_shape, chunks, cfg["predict"])]


def create_raw_labels(pred_zarr: str | Path, raw_store: str | Path) -> None:
    """The empty store of block-local instance ids that segmentation block jobs fill."""
    import zarr

    pred = zarr.open_array(str(pred_zarr), mode="r")
    with imageio.atomic_path(raw_store) as tmp:
        zarr.create_array(store=str(tmp), shape=pred.shape[:-1], dtype=np.uint64, chunks=pred.chunks[:-1], fill_value=0)


def instance_block_job(pred_zarr: str | Path, raw_store: str | Path, block_id: int, record_npz: str | Path,
                       cfg: dict[str, Any]) -> None:
    """Segment one block (with its halo) into the shared raw-id store; what the seam merge needs
    of it (id sizes, border ids, seam strips) goes to ``record_npz``."""
    import zarr

    from ..tasks import get_task
    from .labels import id_stride, instance_block

    task, pcfg = get_task(cfg), cfg["predict"]
    pred = zarr.open_array(str(pred_zarr), mode="r")
    raw = zarr.open_array(str(raw_store), mode="r+")
    blocks = postprocess_plan(pred.shape, pred.chunks, pcfg)
    h = halo(pcfg, len(raw.shape))
    record = instance_block(pred, raw, blocks[int(block_id)], h, id_stride(blocks, h), task.channels,
                            task.postprocess_params(), task.voxel_size)
    with imageio.atomic_path(record_npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **record)


def _postprocess_into(task: Any, pred: Any, out: Any, blocks: list[Block], work: Path, pcfg: dict[str, Any],
                      done: tuple[str, list[str]] | None = None) -> int:
    from .labels import id_stride, instance_block, instance_merge, semantic_blocks

    if task.name == "semantic":
        pp = task.cfg["postprocess"]
        semantic_blocks(pred, out, blocks, work / "components.zarr", pp["threshold"], pp["z_median"], pp["min_size"])
        return len(blocks)
    if task.name != "instance":
        raise NotImplementedError(f"block-wise post-processing for workflow '{task.name}'")
    import zarr

    params = task.postprocess_params()
    if done is not None:  # segmented by block jobs: only the seam merge is left
        raw_store, record_files = done
        records = {i: dict(np.load(f)) for i, f in enumerate(record_files)}
        return instance_merge(zarr.open_array(str(raw_store), mode="r"), out, blocks, records, params)
    h = halo(pcfg, len(out.shape))
    raw = zarr.create_array(store=str(work / "raw.zarr"), shape=out.shape, dtype=np.uint64, chunks=out.chunks,
                            fill_value=0)
    stride = id_stride(blocks, h)
    records = {b.index: instance_block(pred, raw, b, h, stride, task.channels, params, task.voxel_size)
               for b in blocks}
    return instance_merge(raw, out, blocks, records, params)


def _publish(omez: Path, out: Any, out_path: str | Path) -> None:
    """Move the OME-Zarr into place, or stream it into a BigTIFF one z-plane at a time."""
    out_path = Path(out_path)
    if out_path.name.lower().endswith(".zarr"):
        with imageio.atomic_path(out_path) as tmp:
            shutil.move(str(omez), tmp)
        return
    import tifffile

    def planes() -> Any:
        if out.ndim == 2:
            yield np.asarray(out[...])
            return
        for z in range(out.shape[0]):
            yield np.asarray(out[z])

    with imageio.atomic_path(out_path) as tmp:
        tifffile.imwrite(tmp, planes(), shape=tuple(out.shape), dtype=out.dtype, bigtiff=True,
                         compression="zlib")


# --------------------------------------------------------------------------- metrics


class _Spatial:
    """A single-channel lazy image seen without its channel axis (label volumes)."""

    def __init__(self, image: LazyImage) -> None:
        if image.shape[-1] != 1:
            raise ConfigError("data", f"{image.path}: a label volume must have one channel, found {image.shape[-1]}")
        self.image, self.shape, self.chunks = image, image.shape[:-1], image.chunks[:-1]

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return self.image[tuple(key) + (slice(None),)][..., 0]


def evaluate_large(output_path: str | Path, label_path: str | Path, cfg: dict[str, Any]) -> dict[str, float]:
    """Metrics of a block-wise output against a ground truth that may be larger than memory,
    from counts summed block by block (equal to the whole-volume figures)."""
    from ..tasks import get_task
    from .blocks import block_grid, choose_block_shape
    from .metrics import instance_metrics_blocks, semantic_metrics_blocks

    task, ndim = get_task(cfg), cfg["ndim"]
    pred = _Spatial(open_lazy(output_path, ndim))
    gt = _Spatial(open_lazy(label_path, ndim))
    # int64 prediction + ground truth + their mapped copies and pair keys per voxel
    blocks = block_grid(pred.shape, choose_block_shape(pred.shape, pred.chunks, memory_bytes(cfg["predict"]), 8))
    if task.name == "semantic":
        from ..tasks.semantic import IGNORE

        def classes(g: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            c = task.class_map(g, label_path)
            ignored = c == IGNORE
            c[ignored] = 0
            return c, (ignored if ignored.any() else None)

        return semantic_metrics_blocks(pred, gt, task.n_classes, blocks, classes)
    if task.name == "instance":
        return instance_metrics_blocks(pred, gt, blocks, task.iou_thresholds,
                                       lambda g: np.asarray(g).astype(np.uint32, copy=False))
    raise NotImplementedError(f"block-wise metrics for workflow '{task.name}'")
