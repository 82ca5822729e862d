"""The one place that decides which axis of an array is what.

On disk and in memory images are (Z)YX[C]; in torch they are (C)(Z)YX. Everything
else in biapipe receives canonical arrays from here and never guesses axes itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

#: Largest trailing axis that is read as channels when no axes string is given.
MAX_IMPLICIT_CHANNELS = 4


def canonical_image(
    arr: np.ndarray, ndim: int, path: str | Path | None = None, axes: str | None = None,
    expects: str = "the config has",
) -> np.ndarray:
    """Return an image as spatial axes followed by one channel axis, (Z)YXC.

    ``axes`` (letters from "TCZYX", e.g. "CZYX") says how ``arr`` is laid out; without
    it a trailing axis of at most 4 beyond ``ndim`` spatial axes is taken as channels
    (RGB, RGBA, a few fluorescence channels). Anything else is an error that names the
    file, because silently treating Z as channels trains on nonsense. ``expects`` says whose
    ``ndim`` the array must have, for the message ("the model has" for a notebook call).
    """
    if axes:
        return _apply_axes(arr, axes.upper(), ndim, path)
    if arr.ndim == ndim:
        return arr[..., np.newaxis]
    if arr.ndim == ndim + 1 and arr.shape[-1] <= MAX_IMPLICIT_CHANNELS:
        return arr
    if arr.ndim == ndim + 1 and ndim == 2:
        raise InputError(path, f"array of shape {arr.shape} looks 3D (ZYX) but {expects} ndim: 2")
    if arr.ndim == ndim + 1 and ndim == 3 and arr.shape[0] <= MAX_IMPLICIT_CHANNELS:
        return np.moveaxis(arr, 0, -1)
    if arr.ndim < ndim:
        raise InputError(path, f"array of shape {arr.shape} is {arr.ndim}D but {expects} ndim: {ndim}")
    raise InputError(
        path,
        f"cannot tell the axes of an array of shape {arr.shape} for ndim: {ndim}; set data.axes (e.g. 'CZYX')",
    )


def canonical_label(arr: np.ndarray, ndim: int, path: str | Path | None = None) -> np.ndarray:
    """Return a label image with exactly ``ndim`` spatial axes (singleton axes dropped)."""
    squeezed = arr
    while squeezed.ndim > ndim and 1 in squeezed.shape:
        squeezed = np.squeeze(squeezed, axis=squeezed.shape.index(1))
    if squeezed.ndim != ndim:
        raise InputError(
            path, f"label array of shape {arr.shape} is {squeezed.ndim}D but the config has ndim: {ndim}"
        )
    return squeezed


def _apply_axes(arr: np.ndarray, axes: str, ndim: int, path: str | Path | None) -> np.ndarray:
    if len(axes) != arr.ndim or len(set(axes)) != len(axes) or set(axes) - set("TCZYXS"):
        raise InputError(path, f"axes '{axes}' do not fit an array of shape {arr.shape}")
    axes = axes.replace("S", "C")
    if "T" in axes:
        t = axes.index("T")
        if arr.shape[t] != 1:
            raise InputError(path, f"axes '{axes}': time axis of length {arr.shape[t]} is not supported")
        arr = np.take(arr, 0, axis=t)
        axes = axes.replace("T", "")
    spatial = "ZYX"[3 - ndim:]
    if set(axes) - set("C") != set(spatial):
        raise InputError(path, f"axes '{axes}' do not have the spatial axes {spatial} that ndim: {ndim} needs")
    if "C" not in axes:
        arr = arr[..., np.newaxis]
        axes = axes + "C"
    order = [axes.index(a) for a in spatial + "C"]
    return np.transpose(arr, order)


def to_torch_layout(arr: np.ndarray) -> np.ndarray:
    """(Z)YXC -> C(Z)YX, contiguous, for building tensors."""
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0))


def from_torch_layout(arr: np.ndarray) -> np.ndarray:
    """C(Z)YX -> (Z)YXC."""
    return np.moveaxis(arr, 0, -1)
