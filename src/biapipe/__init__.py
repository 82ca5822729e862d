"""biapipe: deep-learning bioimage analysis as a Snakemake workflow.

The library is importable and testable without Snakemake; the workflow under
``workflow/`` only wires files to the functions defined here. ``biapipe.predict`` applies
a model to an array (:mod:`biapipe.api`); importing biapipe stays light, torch loads on
its first call.
"""

from typing import Any

__version__ = "0.1.0"


def predict(model: Any, image: Any, **options: Any) -> Any:
    """A model applied to one image array; see :func:`biapipe.api.predict`."""
    from .api import predict as run

    return run(model, image, **options)
