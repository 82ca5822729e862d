"""Restored volumes larger than memory: the prediction (already in the targets' units) is
clipped and cast block by block into OME-Zarr, and scored block by block against a ground
truth that may itself exceed memory, with the figures of :mod:`.metrics` on the whole volume.

PSNR, NRMSE and Pearson r are sums over voxels, so per-block sums add up exactly. SSIM is a
mean of a local map: each block is read with a halo of half the window, so its map equals the
whole volume's, and the mean is taken over the voxels scikit-image averages (the volume minus
half a window at its faces).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from skimage.metrics import structural_similarity

from ...core import imageio
from ...core.errors import InputError
from ...core.omezarr import create_ome_zarr, open_level
from ...data.lazy import open_lazy
from ...large.plan import postprocess_plan
from .metrics import METRICS, data_range, ssim_window
from .output import DTYPES, finish


def finish_blocks(pred_zarr: str | Path, out_path: str | Path, clip: Sequence[float] | None, dtype: str,
                  voxel_size: Sequence[float], pcfg: dict[str, Any]) -> None:
    """The (Z)YXC prediction store -> an OME-Zarr image, C(Z)YX, written block by block."""
    pred = zarr.open_array(str(pred_zarr), mode="r")
    spatial, channels = tuple(pred.shape[:-1]), int(pred.shape[-1])
    blocks = postprocess_plan(pred.shape, pred.chunks, pcfg)
    axes = "c" + "zyx"[3 - len(spatial):]
    with imageio.atomic_path(out_path) as tmp:
        out = create_ome_zarr(tmp, (channels, *spatial), DTYPES[dtype], (channels, *pred.chunks[:-1]), axes,
                              voxel_size, name=Path(out_path).name)
        for block in blocks:
            out[(slice(None), *block.slices)] = np.moveaxis(finish(np.asarray(pred[block.slices]), clip, dtype), -1, 0)


class _Sums:
    """Running sums of one channel: squared error, moments for Pearson r, SSIM map."""

    def __init__(self) -> None:
        self.n = 0
        self.sse = self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0
        self.ssim_sum, self.ssim_n = 0.0, 0

    def add(self, p: np.ndarray, g: np.ndarray) -> None:
        d = p - g
        self.n += p.size
        self.sse += float(np.sum(d * d))
        self.sx, self.sy = self.sx + float(p.sum()), self.sy + float(g.sum())
        self.sxx, self.syy = self.sxx + float(np.sum(p * p)), self.syy + float(np.sum(g * g))
        self.sxy += float(np.sum(p * g))

    def figures(self, r: float, span: float) -> dict[str, float]:
        mse = self.sse / self.n
        cov = self.sxy / self.n - (self.sx / self.n) * (self.sy / self.n)
        vp = self.sxx / self.n - (self.sx / self.n) ** 2
        vg = self.syy / self.n - (self.sy / self.n) ** 2
        return {"psnr": float(10 * np.log10(r * r / mse)) if mse > 0 else float("inf"),
                "ssim": self.ssim_sum / self.ssim_n,
                "nrmse": float(np.sqrt(mse) / span) if span > 0 else float("nan"),
                "pearson_r": float(cov / np.sqrt(vp * vg)) if vp > 0 and vg > 0 else float("nan")}


def _at_least(region: tuple[slice, ...], size: int, shape: Sequence[int]) -> tuple[slice, ...]:
    """``region`` widened (inwards) to at least ``size`` voxels per axis, for the SSIM window."""
    out = []
    for sl, n in zip(region, shape):
        missing = max(0, min(size, n) - (sl.stop - sl.start))
        start = max(0, sl.start - missing)
        out.append(slice(start, min(n, max(sl.stop, start + min(size, n)))))
    return tuple(out)


def metrics_blocks(output_path: str | Path, label_path: str | Path, ndim: int, axes: str | None,
                   names: Sequence[str], setting: Any, pcfg: dict[str, Any]) -> dict[str, float]:
    """:func:`biapipe.tasks.restoration.metrics.restoration_metrics` of a block-wise output."""
    out = open_level(output_path)  # C(Z)YX
    gt = open_lazy(label_path, ndim, axes)  # (Z)YXC
    spatial, channels = tuple(out.shape[1:]), int(out.shape[0])
    if tuple(gt.shape) != (*spatial, channels):
        raise InputError(label_path, f"ground truth of shape {tuple(gt.shape)} does not match the restored image "
                                     f"{(*spatial, channels)}")
    blocks = postprocess_plan((*spatial, channels), (*out.chunks[1:], channels), pcfg)
    low, high = np.full(channels, np.inf), np.full(channels, -np.inf)
    for block in blocks:
        g = np.asarray(gt[block.slices], dtype=np.float64).reshape(-1, channels)
        low, high = np.minimum(low, g.min(axis=0)), np.maximum(high, g.max(axis=0))
    win = ssim_window(spatial)
    half = (win - 1) // 2
    sums = [_Sums() for _ in range(channels)]
    for block in blocks:
        grown = _at_least(block.grown((half,) * len(spatial), spatial), win, spatial)
        p_all = np.moveaxis(np.asarray(out[(slice(None), *grown)], dtype=np.float64), 0, -1)
        g_all = np.asarray(gt[grown], dtype=np.float64)
        core = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(block.slices, grown))
        # the voxels scikit-image averages SSIM over: at least half a window from every face
        valid = tuple(slice(max(b.start, half) - g.start, min(b.stop, n - half) - g.start)
                      for b, g, n in zip(block.slices, grown, spatial))
        for c in range(channels):
            sums[c].add(p_all[core + (c,)], g_all[core + (c,)])
            r = data_range(np.asarray([low[c], high[c]]).astype(gt.dtype), setting)
            _, smap = structural_similarity(g_all[..., c], p_all[..., c], data_range=r, win_size=win, full=True)
            region = smap[valid]
            sums[c].ssim_sum += float(region.sum())
            sums[c].ssim_n += region.size
    rows = [s.figures(data_range(np.asarray([low[c], high[c]]).astype(gt.dtype), setting), high[c] - low[c])
            for c, s in enumerate(sums)]
    result = {m: float(np.mean([row[m] for row in rows])) for m in METRICS}
    if len(names) > 1:
        for name, row in zip(names, rows):
            result.update({f"{m}_{name}": row[m] for m in METRICS})
    return result
