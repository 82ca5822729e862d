"""Metrics per workflow; each module turns one output and its ground truth into a flat dict."""

from .semantic import semantic_metrics

__all__ = ["semantic_metrics"]
