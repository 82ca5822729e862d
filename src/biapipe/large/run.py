"""Entry points for large volumes: file in, file out, memory bounded by blocks.

``predict_large`` predicts a whole volume in one job, block by block; ``predict_block_job``
does a subset of the blocks so several jobs share one volume, each writing only its own
chunk-aligned region of a store made beforehand by ``prepare_prediction``. Post-processing
and scoring of large volumes are the task's (``Task.postprocess_large``), built on
:mod:`.volumes` and the block primitives of :mod:`biapipe.data.blocks`. Importing this
module imports torch; the planning the workflow needs at parse time is in :mod:`.plan`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import zarr

from ..core import imageio
from ..core.errors import ConfigError
from ..core.progress import Progress
from ..data.lazy import NormalizedImage, lazy_stats
from ..data.normalize import fixed_stats
from ..inference.predict import batch_fn, tile_size
from ..inference.predictor import load_predictor
from .plan import memory_bytes, plan_for_shape
from .predict import (
    BlockPredictor,
    create_prediction_store,
    predict_into,
    prediction_chunks,
)
from .volumes import open_raw


class Predicted(Protocol):
    """What block-wise prediction needs from a task."""

    def out_channels(self) -> int: ...

    def activate(self, logits: torch.Tensor) -> torch.Tensor: ...

    def network_input(self, image: Any) -> Any: ...

    def for_model(self, meta: dict[str, Any]) -> Any: ...


# --------------------------------------------------------------------------- prediction


def _predictor(model_path: str | Path, image: Any, task: Predicted, pcfg: dict[str, Any]) -> BlockPredictor:
    loaded = load_predictor(model_path, pcfg["device"])
    trained = task if loaded.activated else task.for_model(loaded.meta)  # a package may come activated
    fn = batch_fn(loaded.model, loaded.activation(trained.activate), loaded.device, pcfg)
    return BlockPredictor(image, fn, tile_size(pcfg, image.ndim - 1), float(pcfg["overlap"]), pcfg["blend"],
                          int(pcfg["batch_size"]), loaded.divisor, float(pcfg["trim"]))


def open_normalized(image_path: str | Path, cfg: dict[str, Any], stats: dict[str, Any] | None = None) -> NormalizedImage:
    """The raw image normalized tile by tile; ``stats`` (dataset scope) or its own, read by blocks."""
    image = open_raw(image_path, cfg["ndim"], cfg["data"]["axes"], cfg["predict"])
    if stats is None:
        stats = fixed_stats(cfg["normalize"]) or lazy_stats(image, cfg["normalize"], memory_bytes(cfg["predict"]))
    return NormalizedImage(image, cfg["normalize"], stats)


def predict_large(model_path: str | Path, image_path: str | Path, out_zarr: str | Path, task: Predicted,
                  cfg: dict[str, Any], stats: dict[str, Any] | None = None, log: logging.Logger | None = None) -> int:
    """Predict one raw volume block by block into ``out_zarr`` (atomic), with a line per block
    in ``log``; returns the number of blocks."""
    pcfg = cfg["predict"]
    image = task.network_input(open_normalized(image_path, cfg, stats))
    out_shape, blocks = plan_for_shape(image.shape, task.out_channels(), pcfg)
    predictor = _predictor(model_path, image, task, pcfg)
    with imageio.atomic_path(out_zarr) as tmp:
        out = create_prediction_store(tmp, out_shape, prediction_chunks(out_shape, image.ndim - 1, pcfg["chunks"]),
                                      {"model": str(model_path), "blocks": len(blocks), "normalize": image.stats})
        progress = Progress(len(blocks), f"{Path(image_path).name}: block", log) if log is not None else None
        predict_into(predictor, out, blocks, progress)
    return len(blocks)


def prepare_prediction(image_path: str | Path, store: str | Path, task: Predicted, cfg: dict[str, Any],
                       stats: dict[str, Any] | None = None) -> list[int]:
    """Create the empty output store that block jobs fill, with the image's normalization
    statistics in its attributes (computed once, so every block job normalizes alike);
    returns the block indices."""
    pcfg = cfg["predict"]
    image = task.network_input(open_normalized(image_path, cfg, stats))
    out_shape, blocks = plan_for_shape(image.shape, task.out_channels(), pcfg)
    with imageio.atomic_path(store) as tmp:
        create_prediction_store(tmp, out_shape, prediction_chunks(out_shape, image.ndim - 1, pcfg["chunks"]),
                                {"blocks": len(blocks), "normalize": image.stats})
    return [b.index for b in blocks]


def predict_block_job(model_path: str | Path, image_path: str | Path, store: str | Path, block_ids: Sequence[int],
                      marker: str | Path, task: Predicted, cfg: dict[str, Any],
                      log: logging.Logger | None = None) -> None:
    """Predict some blocks of a volume into the shared store, then write ``marker``."""
    out = zarr.open_array(str(store), mode="r+")
    image = task.network_input(open_normalized(image_path, cfg, dict(out.attrs)["normalize"]))
    _, blocks = plan_for_shape(image.shape, task.out_channels(), cfg["predict"])
    if len(blocks) != int(out.attrs["blocks"]):
        raise ConfigError("predict.memory_gb", f"{image_path}: the block plan ({len(blocks)} blocks) differs from the "
                          f"one the store was made for ({out.attrs['blocks']}); rerun the whole image")
    chosen = [b for b in blocks if b.index in set(int(i) for i in block_ids)]
    progress = Progress(len(chosen), f"{Path(image_path).name}: block", log) if log is not None else None
    predict_into(_predictor(model_path, image, task, cfg["predict"]), out, chosen, progress)
    imageio.write_text(marker, f"{len(chosen)} blocks\n")
