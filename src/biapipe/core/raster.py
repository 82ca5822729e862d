"""PNG, JPEG and BMP images (2D, grey or RGB[A]) through Pillow.

Most classification and brightfield data sets come as these files. They are always 2D
and small enough to read whole, so they need no lazy path; what they need is the same
checks as TIFF: a header probe that reads no pixels (the workflow probes every file at
parse time) and errors that name the file. Pillow's modes map to numpy as
``np.asarray`` does: ``L``/``P`` -> (Y, X) uint8, ``I;16`` -> uint16, ``RGB``/``RGBA`` ->
(Y, X, 3|4) uint8. A palette (``P``) file is read as its indices, which is what a label
saved with a colour map holds; as an image (:func:`read_raster` with ``palette=True``)
its colours are used instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # Pillow is imported where used
    from PIL.Image import Image

#: Suffixes read through Pillow.
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

#: Pillow mode -> (numpy dtype, channels); channels 0 means a plain (Y, X) array.
_MODES: dict[str, tuple[str, int]] = {
    "1": ("uint8", 0), "L": ("uint8", 0), "P": ("uint8", 0), "I;16": ("uint16", 0), "I;16B": ("uint16", 0),
    "I;16L": ("uint16", 0), "I": ("int32", 0), "F": ("float32", 0), "LA": ("uint8", 2), "RGB": ("uint8", 3),
    "RGBA": ("uint8", 4), "CMYK": ("uint8", 3), "YCbCr": ("uint8", 3),
}
#: Modes converted on reading (to the mode that gives the probed shape).
_CONVERT = {"CMYK": "RGB", "YCbCr": "RGB"}


def is_raster(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(RASTER_SUFFIXES)


def check_2d(path: str | Path, ndim: int) -> None:
    """These formats hold one plane: a 3D experiment cannot use them (an RGB file would
    otherwise pass for a volume of 3-pixel-wide slices)."""
    if ndim != 2 and is_raster(path):
        raise InputError(path, f"PNG/JPEG/BMP images are 2D but the config has ndim: {ndim} (use TIFF or Zarr "
                               "for volumes)")


def _open(path: Path) -> Image:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc


def probe_raster(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the file header, without decoding the pixels."""
    path = Path(path)
    with _open(path) as img:
        if getattr(img, "n_frames", 1) > 1:
            raise InputError(path, f"holds {img.n_frames} frames; only single 2D images are supported "
                                   "(save stacks as TIFF)")
        if img.mode not in _MODES:
            raise InputError(path, f"unsupported image mode '{img.mode}'")
        dtype, channels = _MODES[img.mode]
        width, height = img.size
    shape = (height, width, channels) if channels else (height, width)
    return shape, np.dtype(dtype)


def read_raster(path: str | Path, palette: bool = False) -> np.ndarray:
    """The pixels as (Y, X) or (Y, X, C); a palette file as RGB when ``palette`` (an image),
    else as its indices (a label). Problems are InputErrors naming ``path``."""
    path = Path(path)
    shape, _ = probe_raster(path)
    with _open(path) as img:
        try:
            if img.mode == "P" and palette:
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode in _CONVERT:
                img = img.convert(_CONVERT[img.mode])
            arr = np.asarray(img)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
            raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    if arr.dtype == bool:  # mode "1": 0/1 as uint8, what the header probe announced
        arr = arr.astype(np.uint8)
    if arr.shape[:2] != shape[:2]:
        raise InputError(path, f"decoded shape {arr.shape} differs from the header's {shape}")
    return arr
