"""biapipe: deep-learning bioimage analysis as a Snakemake workflow.

The library is importable and testable without Snakemake; the workflow under
``workflow/`` only wires files to the functions defined here. ``biapipe.predict`` applies
a model to an array (:mod:`biapipe.api`); importing biapipe stays light, torch loads on
its first call.
"""

from typing import Any as _Any

__version__ = "0.1.0"


def predict(model: _Any, image: _Any, *, axes: str | None = None, probabilities: bool = False,
            config: dict[str, _Any] | None = None) -> _Any:
    """Predict one image array with a model (a biapipe checkpoint or a BioImage Model Zoo package).

    ``image`` is a numpy array, (Z)YX, (Z)YXC or laid out as ``axes`` says (e.g. ``"CYX"``); for
    files, read them first (``tifffile.imread``) or use ``biapipe predict MODEL FILES --out DIR``.
    Returns what the workflow writes for the image (a label image, a mask, a points table, a class,
    a restored image); ``probabilities``: the network's activated maps instead; ``config``:
    overrides of the model's keys. Details: :func:`biapipe.api.predict`.
    """
    from .api import predict as run

    return run(model, image, axes=axes, probabilities=probabilities, config=config)
