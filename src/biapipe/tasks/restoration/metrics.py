"""Quality of a restored image against its ground truth, per channel: PSNR, SSIM, NRMSE and
Pearson r, all from scikit-image.

Range normalization (``evaluate.restoration.data_range``): PSNR and SSIM depend on the range
the intensities are measured in. Both images are scored on the ground truth's range R: by
default the range of its integer dtype (uint8: 255, the convention of the FMD benchmark), its
min..max when it is float (or with ``minmax``), or a given number. Dividing both images by R
and scoring with a data range of 1 gives the same numbers. NRMSE is the RMSE divided by the
ground truth's min..max (scikit-image's ``min-max``); Pearson r is range-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from skimage.measure import pearson_corr_coeff
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from ...core.errors import InputError

METRICS = ("psnr", "ssim", "nrmse", "pearson_r")


def data_range(gt: np.ndarray, setting: Any) -> float:
    """The range R of one ground-truth channel (see the module docstring)."""
    if isinstance(setting, int | float) and not isinstance(setting, bool):
        return float(setting)
    if setting == "dtype" and np.dtype(gt.dtype).kind in "ui":
        info = np.iinfo(gt.dtype)
        return float(info.max) - float(info.min) if info.min < 0 else float(info.max)
    span = float(np.max(gt)) - float(np.min(gt))
    return span if span > 0 else 1.0


def ssim_window(shape: Sequence[int]) -> int:
    """scikit-image's 7-pixel window, cut to the smallest axis (odd, at least 3)."""
    smallest = min(int(s) for s in shape)
    return max(3, min(7, smallest if smallest % 2 else smallest - 1))


def channel_metrics(pred: np.ndarray, gt: np.ndarray, setting: Any) -> dict[str, float]:
    """The four figures of one (Z)YX channel."""
    r = data_range(gt, setting)
    truth, guess = np.asarray(gt, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    exact = np.array_equal(truth, guess)
    flat = truth.max() == truth.min() or guess.max() == guess.min()
    return {
        "psnr": float("inf") if exact else float(peak_signal_noise_ratio(truth, guess, data_range=r)),
        "ssim": float(structural_similarity(truth, guess, data_range=r, win_size=ssim_window(truth.shape))),
        "nrmse": float(normalized_root_mse(truth, guess, normalization="min-max")) if truth.max() > truth.min()
        else float("nan"),
        "pearson_r": float("nan") if flat else float(pearson_corr_coeff(truth, guess)[0]),
    }


def restoration_metrics(pred: np.ndarray, gt: np.ndarray, names: Sequence[str], setting: Any,
                        path: Any = None) -> dict[str, float]:
    """Per channel ``<metric>_<name>`` and their means over channels ``<metric>``, of two (Z)YXC images."""
    if pred.shape != gt.shape:
        raise InputError(path, f"restored image of shape {tuple(pred.shape)} does not match its ground truth of "
                               f"shape {tuple(gt.shape)}")
    out: dict[str, float] = {}
    per_channel = [channel_metrics(pred[..., c], gt[..., c], setting) for c in range(gt.shape[-1])]
    for m in METRICS:
        out[m] = float(np.mean([row[m] for row in per_channel]))
    if len(names) > 1:
        for name, row in zip(names, per_channel):
            out.update({f"{m}_{name}": row[m] for m in METRICS})
    return out


def summarize_restoration(metrics: pd.DataFrame) -> pd.DataFrame:
    """Means over images of every figure (per channel too), and the number of images."""
    numeric = metrics.select_dtypes("number")
    row: dict[str, Any] = {"n_images": len(metrics)}
    row.update({f"mean_{c}": float(numeric[c].replace([np.inf], np.nan).mean()) for c in numeric.columns})
    return pd.DataFrame([row])
