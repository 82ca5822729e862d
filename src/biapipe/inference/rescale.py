"""Prediction at the training object scale (``predict.rescale``).

A model records the typical object diameter of what it was trained on. A test image is
predicted once as it is; the objects of that prediction give the image's own typical
diameter (``measure``: the task's post-processing, see ``Task.prediction_diameter``); when it
differs from the training diameter by more than ``data.scale.TOLERANCE``, the image is zoomed
by their ratio and predicted again, and the diameter measured again, up to ``passes``
predictions in all (a first pass at the wrong scale can split large objects or merge small
ones, which biases the first estimate towards 1; the second pass at a better scale corrects
most of it).

An estimated diameter only ever zooms an image down: small crowded objects come out of a first
pass as merged blobs and specks whose measure is unreliable, and zooming up on it lost 12
points of F1 on DSB2018's dense clusters while zooming down gained 20 on its large nuclei
(benchmarks/README.md, generalization). Objects far larger than the training ones can also
come out as specks (CHO nuclei 3.5 times the training scale measured 4-16 px) and would then
never be zoomed down; so when the first pass would leave the image at its own scale (it finds
nothing, or objects no larger than about the training ones), the image's own blobs (``blobs``,
from intensities alone) are measured, and when they are at least ``BLOB_RATIO`` times the
training diameter they set the zoom, as a given diameter would. A given diameter (``data.object_diameter``) zooms either way and skips the
estimate. The last prediction is zoomed back to the image's own shape, so everything downstream
sees the image's grid. Why the scale matters: docs/architecture.md, "object scale".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.scale import TOLERANCE, resize_image, scale_factor, scaled_shape

Predict = Callable[[np.ndarray], np.ndarray]
Measure = Callable[[np.ndarray], "float | None"]

#: Predictions per image at most, the first one included.
PASSES = 3

#: The image's blob measure overrides a first estimate that zooms nothing down when the blobs
#: are at least this many times the training diameter (benchmarks/README.md, generalization).
BLOB_RATIO = 2.0


def predict_rescaled(predict: Predict, image: np.ndarray, training_diameter: float | None, measure: Measure,
                     given: float | None = None, passes: int = PASSES, log: logging.Logger | None = None,
                     blobs: Measure | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """``predict`` of a (Z)YXC image at the training scale, on the image's own grid, and what was
    done: ``scale`` (the zoom used), ``object_diameter`` (the image's diameter, given or
    estimated; None when no object was found) and ``passes`` (predictions made). ``blobs``
    measures the (Z)YXC image itself, the check on a first estimate too small to zoom down."""
    shape = tuple(image.shape[:-1])
    if not training_diameter:
        return predict(image), {"scale": 1.0, "object_diameter": given, "passes": 1}
    if given:
        factor = scale_factor(training_diameter, given)
        return _back(_predict_at(predict, image, factor), shape), \
            {"scale": factor, "object_diameter": float(given), "passes": 1}
    factor, prediction = 1.0, predict(image)
    diameter = measure(prediction)
    made = 1
    stays = scale_factor(training_diameter, diameter) >= 1.0  # nothing found, or no zoom down asked
    blob = blobs(image) if blobs is not None and stays else None
    if blob is not None and blob >= BLOB_RATIO * training_diameter:
        if log is not None:
            log.info("first estimate %s; the image's blobs measure %.1f px and set the zoom",
                     "none" if diameter is None else f"{diameter:.1f} px", blob)
        factor, diameter, made = scale_factor(training_diameter, blob), blob, 2
        prediction = _predict_at(predict, image, factor)
    else:
        while diameter is not None and made < passes:
            wanted = min(1.0, scale_factor(training_diameter, diameter))  # estimates zoom down only
            if 1.0 / TOLERANCE <= wanted / factor <= TOLERANCE:
                break
            factor = wanted
            prediction = _predict_at(predict, image, factor)
            made += 1
            seen = measure(prediction)
            diameter = seen / factor if seen is not None else diameter
    if log is not None:
        found = "no objects found" if diameter is None else f"object diameter {diameter:.1f} px"
        log.info("%s; training diameter %.1f px: predicted at scale %.3g (%d pass%s)", found,
                 training_diameter, factor, made, "" if made == 1 else "es")
    return _back(prediction, shape), {"scale": factor, "object_diameter": diameter, "passes": made}


def training_diameter(meta: dict[str, Any]) -> float | None:
    """The training object diameter a checkpoint records (``Predictor.meta``); None for checkpoints
    of workflows without objects, or written before it was recorded."""
    value = (meta.get("data") or {}).get("object_diameter")
    return float(value) if value else None


def predict_at_training_scale(predict: Predict, image: np.ndarray, meta: dict[str, Any], measure: Measure,
                              given: float | None, log: logging.Logger, name: str,
                              blobs: Measure | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`predict_rescaled` with the training diameter of a loaded model (its ``meta``), for
    the image called ``name``; the returned record is what the stored prediction's attrs keep."""
    diameter = training_diameter(meta)
    if diameter is None:
        log.info("the model records no object diameter of its training data: %s is predicted at its own scale", name)
    result, info = predict_rescaled(predict, image, diameter, measure, given, log=log, blobs=blobs)
    return result, {**info, "training_diameter": diameter}


def _predict_at(predict: Predict, image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return predict(image)
    return predict(resize_image(image, scaled_shape(image.shape[:-1], factor)))


def _back(prediction: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The prediction on the image's own grid (linear: the maps are smooth probabilities/distances)."""
    if tuple(prediction.shape[:-1]) == shape:
        return prediction
    return resize_image(prediction, shape)
