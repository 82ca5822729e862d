"""Arithmetic of metric tables shared by every workflow's scores: ratios that are NaN when
there is nothing to measure, means that skip those NaNs, and column sums for pooled figures."""

from __future__ import annotations

import numpy as np
import pandas as pd


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when there is nothing to measure (0/0)."""
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def column_sum(metrics: pd.DataFrame, column: str) -> float:
    """Sum of a per-image column, 0 when the column is absent (no image had that class)."""
    return float(metrics[column].sum()) if column in metrics else 0.0


def nanmean(values: object) -> float:
    """Mean over the defined values: NaN marks 'not applicable to this image', not zero."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")
