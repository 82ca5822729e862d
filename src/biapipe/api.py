"""``biapipe.predict``: a model applied to an array, for notebooks and napari.

The same path as the workflow's prediction jobs (``workflow.stages``): the model's own
config (``tasks.from_model``) decides normalization, tiling divisors and post-processing,
so an array predicted here equals the workflow's output for the same image. Importing
``biapipe`` does not import this module: torch loads on the first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .core.axes import canonical_image
from .core.config import merge
from .core.errors import InputError
from .data.normalize import check_finite, normalize
from .inference.predictor import load_predictor
from .models.info import read_model_info
from .tasks import get_task
from .tasks.from_model import config_with_model
from .workflow.prediction import predict_array


def predict(model: str | Path, image: np.ndarray, *, axes: str | None = None, probabilities: bool = False,
            config: dict[str, Any] | None = None) -> Any:
    """Predict one image with a model (a biapipe checkpoint or a BioImage Model Zoo package).

    ``image`` is (Z)YX, (Z)YXC or laid out as ``axes`` says (e.g. ``"CYX"``). Returns what the
    workflow writes for the image: a mask (semantic) or label image (instance) of the image's
    shape, a points table (detection: coordinates, score, class), the class with its
    probabilities (classification) or the restored image (restoration workflows); with
    ``probabilities`` the network's activated maps, (Z)YXC float32. ``config`` overrides the model's keys as a run's config does (e.g.
    ``{"postprocess": {"threshold": 0.3}}``, ``{"predict": {"tile_size": [512, 512]}}``;
    ``workflow`` is needed for a package that does not say its own).
    """
    if isinstance(image, (str, Path)):
        raise InputError(image, "biapipe.predict takes an image array, not a file name: read the file first "
                                "(e.g. tifffile.imread), or predict files with `biapipe predict MODEL FILES --out DIR`")
    given = merge({"experiment": "predict", "model": str(model), "data": {"test": {"images": "."}}}, config or {})
    cfg = config_with_model(given)
    task = get_task(cfg)
    info = read_model_info(model)
    array = canonical_image(np.asarray(image), cfg["ndim"], "image", axes, expects=f"the model {model} has")
    if array.shape[-1] != info.in_channels:
        raise InputError("image", f"has {array.shape[-1]} channel(s) but the model {model} takes {info.in_channels}")
    check_finite(array, "image")
    predictor = load_predictor(model, cfg["predict"]["device"])
    network_input = np.asarray(task.network_input(normalize(array, cfg["normalize"])))  # e.g. upsampled for SR
    prediction = predict_array(str(predictor.path), "image", network_input, task, cfg["predict"])
    if probabilities:
        return prediction
    return task.output_value(task.postprocess(prediction))
