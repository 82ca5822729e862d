"""Restored images on disk: clipped and cast as configured, written as ImageJ hyperstack TIFFs
((Z)(C)YX, with the voxel size) or, for large images, OME-Zarr, and read back as (Z)YXC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ...core import imageio
from ...core.errors import InputError

DTYPES = {"float32": np.float32, "uint8": np.uint8, "uint16": np.uint16}


def finish(prediction: np.ndarray, clip: Sequence[float] | None, dtype: str) -> np.ndarray:
    """Clip to ``clip`` (when given), then cast: integer types are rounded and clipped to their range."""
    out = np.asarray(prediction, dtype=np.float32)
    if clip is not None:
        out = np.clip(out, float(clip[0]), float(clip[1]))
    kind = np.dtype(DTYPES[dtype])
    if kind.kind == "u":
        info = np.iinfo(kind)
        return np.clip(np.round(out), info.min, info.max).astype(kind)
    return out.astype(kind, copy=False)


def write_restored(path: str | Path, image: np.ndarray, voxel_size: Sequence[float]) -> None:
    """A (Z)YXC image as an ImageJ hyperstack TIFF with its voxel size (YX resolution, z spacing)."""
    ndim = image.ndim - 1
    data = np.moveaxis(image, -1, -3)  # (Z)CYX
    axes = "ZCYX" if ndim == 3 else "CYX"
    if image.shape[-1] == 1:
        data, axes = data[..., 0, :, :], axes.replace("C", "")
    metadata: dict[str, Any] = {"axes": axes, "unit": "um"}
    if ndim == 3:
        metadata["spacing"] = float(voxel_size[0])
    with imageio.atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(data), imagej=True, metadata=metadata,
                         resolution=(1.0 / float(voxel_size[-1]), 1.0 / float(voxel_size[-2])))


def read_restored(path: str | Path, ndim: int) -> np.ndarray:
    """A restored image (ours, or any TIFF with axes metadata) as (Z)YXC."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes.upper().replace("S", "C").replace("Q", "")
    except Exception as exc:
        raise InputError(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    spatial = "ZYX"[3 - ndim:]
    if "C" not in axes:
        data, axes = data[..., np.newaxis], axes + "C"
    if sorted(axes) != sorted(spatial + "C"):
        raise InputError(path, f"axes {axes} are not those of a {ndim}D restored image")
    return np.transpose(data, [axes.index(a) for a in spatial + "C"])


def voxel_size_of(path: str | Path) -> tuple[float, ...]:
    """The (Z)YX voxel size a written TIFF says (ImageJ spacing and resolution)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        y = page.tags["YResolution"].value
        x = page.tags["XResolution"].value
        yx = (y[1] / y[0], x[1] / x[0])
        spacing = (tif.imagej_metadata or {}).get("spacing")
    return ((float(spacing),) if spacing is not None else ()) + yx
