"""The prediction of one normalized test image, as the predict stages and ``biapipe.predict``
make it: the model's input check, the task's activation (undone normalization included), the
object scale, and the stored prediction with what made it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..core import imageio
from ..core.config import Section
from ..core.errors import InputError
from ..inference.rescale import predict_at_training_scale
from ..tasks.base import Task


def zarr_chunks(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Chunk (Z)YXC arrays in spatial blocks with all channels together."""
    spatial = (16, 256, 256) if ndim == 3 else (512, 512)
    return tuple(min(s, c) for s, c in zip(shape[:-1], spatial)) + (shape[-1],)


def predict_rescaled(model: str, image: str, array: np.ndarray, task: Task, pcfg: Section,
                     logger: logging.Logger) -> tuple[np.ndarray, dict[str, Any]]:
    """The prediction of one normalized test image, at the model's object scale when
    ``predict.rescale`` is on (inference/rescale.py), and what was done (prediction attrs)."""
    if not (pcfg["rescale"] and task.measures_objects):
        return predict_array(model, image, array, task, pcfg), {}
    from ..inference.predictor import load_predictor

    return predict_at_training_scale(lambda a: predict_array(model, image, a, task, pcfg), array,
                                     load_predictor(model, pcfg["device"]).meta, task.prediction_diameter,
                                     task.cfg["data"]["object_diameter"], logger, image, task.image_diameter)


def predict_array(model: str, image: str | None, array: np.ndarray, task: Task, pcfg: Section) -> np.ndarray:
    """The task's activated prediction of one normalized image (tiles, or one pass for whole-image
    tasks); ``image`` names it in errors."""
    from ..inference.predict import predict_image
    from ..inference.predictor import load_predictor

    predictor = load_predictor(model, pcfg["device"])
    expected = int(predictor.spec["in_channels"])
    if array.shape[-1] != expected:
        raise InputError(image, f"has {array.shape[-1]} channel(s) but the model {model} expects {expected}")
    if task.whole_image:
        return task.predict_whole(predictor, array)
    trained = task if predictor.activated else task.for_model(predictor.meta)  # a package may come activated
    return predict_image(predictor.model, np.asarray(array, dtype=np.float32), pcfg,
                         predictor.activation(trained.activate), predictor.divisor, predictor.device)


def write_prediction(out: str, result: np.ndarray, task: Task, model: str, pcfg: Section,
                     scale: dict[str, Any] | None = None) -> None:
    """The prediction as a float32 Zarr that records the model, the tiling and the scale."""
    attrs = {"model": str(model), "mode": pcfg["mode"], "tile_size": list(pcfg["tile_size"]),
             "overlap": pcfg["overlap"], **task.prediction_attrs(), **(scale or {})}
    chunks = zarr_chunks(result.shape, task.ndim) if result.ndim == task.ndim + 1 else None
    imageio.write_zarr(out, result.astype(np.float32, copy=False), chunks=chunks, attrs=attrs)
