"""Post-processing per workflow: model output (probabilities) -> the file a user wants."""

from .semantic import semantic_postprocess

__all__ = ["semantic_postprocess"]
