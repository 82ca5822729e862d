"""Open an image without reading it: Zarr v2/v3, OME-Zarr, memory-mapped or chunked TIFF.

The result is a :class:`LazyImage`, seen in biapipe's canonical (Z)YXC layout whatever
the order on disk; slicing it reads only the requested region. Axis order comes from
``data.axes``, else from OME-Zarr metadata, else from the same rules as
:func:`biapipe.axes.canonical_image`, so a lazy read and a whole read agree.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from ..core.axes import MAX_IMPLICIT_CHANNELS
from ..core.errors import InputError
from ..core.raster import check_2d, is_raster, read_raster
from .blocks import block_grid, choose_block_shape
from .normalize import check_finite, dataset_stats, normalize


class LazyImage:
    """A read-only (Z)YXC view of an on-disk array stored in any axis order."""

    def __init__(self, source: Any, axes: str, ndim: int, path: str | Path | None = None) -> None:
        self.source, self.path, self.ndim_spatial = source, path, ndim
        self.axes = _check_axes(axes.upper().replace("S", "C"), source.shape, ndim, path)
        self.spatial = "ZYX"[3 - ndim:]
        n_channels = source.shape[self.axes.index("C")] if "C" in self.axes else 1
        self.shape = tuple(int(source.shape[self.axes.index(a)]) for a in self.spatial) + (int(n_channels),)
        self.dtype = np.dtype(source.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def chunks(self) -> tuple[int, ...]:
        """Storage chunks in (Z)YXC order (a memmap counts as one chunk per row)."""
        stored = getattr(self.source, "chunks", None) or (1,) + tuple(self.source.shape[1:])
        by_axis = dict(zip(self.axes, stored, strict=True))
        return tuple(int(by_axis[a]) for a in self.spatial) + (int(by_axis.get("C", 1)),)

    def __getitem__(self, key: Any) -> np.ndarray:
        canonical = _normalise_key(key, len(self.shape))
        wanted = dict(zip(self.spatial + "C", canonical, strict=True))
        index = tuple(0 if a == "T" else wanted[a] for a in self.axes)
        region = np.asarray(self.source[index])
        kept = [a for a in self.axes if a != "T"]
        if "C" not in kept:
            region, kept = region[..., np.newaxis][..., wanted["C"]], kept + ["C"]
        return np.transpose(region, [kept.index(a) for a in self.spatial + "C"])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[...]
        return arr if dtype is None else arr.astype(dtype)


def _normalise_key(key: Any, n: int) -> tuple[slice, ...]:
    """Basic indexing only (slices and one Ellipsis): what block and tile reads use."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (n - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (n - len(key))
    if len(key) != n or not all(isinstance(k, slice) for k in key):
        raise TypeError(f"LazyImage supports slices only, got {key}")
    return key


def _check_axes(axes: str, shape: tuple[int, ...], ndim: int, path: Any) -> str:
    spatial = "ZYX"[3 - ndim:]
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or set(axes) - set("TCZYX"):
        raise InputError(path, f"axes '{axes}' do not fit an array of shape {shape} (one letter per axis, from TCZYX)")
    if set(axes) - set("TC") != set(spatial):
        raise InputError(path, f"axes '{axes}' do not have the spatial axes {spatial} that ndim: {ndim} needs")
    if "T" in axes and shape[axes.index("T")] != 1:
        raise InputError(path, f"axes '{axes}': time axis of length {shape[axes.index('T')]} is not supported")
    return axes


def infer_axes(shape: tuple[int, ...], ndim: int, path: Any = None) -> str:
    """Axes of an array when none are given, by the rules of :func:`biapipe.axes.canonical_image`."""
    spatial = "ZYX"[3 - ndim:]
    if len(shape) == ndim:
        return spatial
    if len(shape) == ndim + 1 and shape[-1] <= MAX_IMPLICIT_CHANNELS:
        return spatial + "C"
    if len(shape) == ndim + 1 and ndim == 3 and shape[0] <= MAX_IMPLICIT_CHANNELS:
        return "C" + spatial
    raise InputError(path, f"cannot tell the axes of an array of shape {shape} for ndim: {ndim}; set data.axes (e.g. 'CZYX')")


# --------------------------------------------------------------------------- opening


def open_lazy(path: str | Path, ndim: int, axes: str | None = None) -> LazyImage:
    """Open ``path`` lazily as (Z)YXC; ``axes`` (``data.axes``) overrides what the file says."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    name = path.name.lower()
    if name.endswith(".zarr"):
        source, file_axes = _open_zarr_source(path)
    elif name.endswith((".tif", ".tiff")):
        source, file_axes = _open_tiff_source(path), None
    elif name.endswith(".npy"):
        source, file_axes = np.load(path, mmap_mode="r"), None
    elif is_raster(path):  # one plane, small: read whole
        check_2d(path, ndim)
        source, file_axes = read_raster(path, palette=True), None
    else:
        raise InputError(path, "unsupported file type for lazy reading (expected .zarr, .tif, .tiff, .npy, .png, "
                               ".jpg, .jpeg or .bmp)")
    return LazyImage(source, axes or file_axes or infer_axes(tuple(source.shape), ndim, path), ndim, path)


def read_region(image: Any, region: tuple[slice, ...], path: str | Path) -> np.ndarray:
    """A region of a lazily opened image; a file that cannot be decoded there (a truncated
    strip or chunk is only found when its pixels are read) is named."""
    try:
        return np.asarray(image[region])
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InputError(path, f"cannot read the file (truncated or corrupt? {type(exc).__name__}: {exc})") from exc


def _open_zarr_source(path: Path) -> tuple[Any, str | None]:
    """The array of a Zarr store (v2 or v3) and, for OME-Zarr, its axes from the metadata."""
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is no store
        raise InputError(path, f"not a readable Zarr store ({type(exc).__name__}: {exc})") from exc
    if isinstance(node, zarr.Array):
        return node, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        first = multiscales[0]
        axes = "".join(_axis_name(a) for a in first.get("axes", [])) or None
        return node[first["datasets"][0]["path"]], axes
    arrays = sorted(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]], None
    if not arrays:
        raise InputError(path, "Zarr group holds no array (point data paths at an array or an OME-Zarr image)")
    raise InputError(path, f"Zarr group holds {len(arrays)} arrays ({', '.join(arrays[:5])}) and no OME "
                           "multiscales; point to one array")


def _axis_name(axis: Any) -> str:
    """NGFF axes are dicts (v0.4+) or plain letters (v0.3)."""
    return (axis["name"] if isinstance(axis, dict) else str(axis)).upper()


def _open_tiff_source(path: Path) -> Any:
    """A memory map when the pixels are stored contiguously and uncompressed, else a Zarr view
    of the TIFF's own strips/tiles (tifffile's Zarr store): neither reads the file up front."""
    try:
        return tifffile.memmap(path, mode="r")
    except ValueError:
        pass  # compressed or not contiguous: fall through to the chunked view
    except Exception as exc:
        raise InputError(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    except Exception as exc:
        raise InputError(path, f"cannot read TIFF ({type(exc).__name__}: {exc}): the file is damaged or not a "
                               "TIFF; re-export or replace it") from exc


# --------------------------------------------------------------------------- chunk budget


def check_chunk_budget(image: LazyImage, memory_bytes: float) -> None:
    """Stop before compute when one storage chunk alone exceeds the memory budget.

    Zarr and compressed TIFF decode whole chunks, so a read of any region costs at least
    one chunk: with chunks beyond the budget, bounded memory is impossible. Chunks above a
    quarter of the budget only warn, since reads then cost several times what they use.
    """
    chunk_bytes = math.prod(image.chunks) * image.dtype.itemsize
    if chunk_bytes > memory_bytes:
        raise InputError(
            image.path,
            f"one storage chunk {image.chunks} is {chunk_bytes / 2**30:.2f} GiB, more than the memory budget "
            f"predict.memory_gb = {memory_bytes / 2**30:.2f}; rechunk the input (e.g. to 64x256x256 voxels per "
            "chunk with zarr or tifffile tiles), or raise predict.memory_gb",
        )
    if chunk_bytes > memory_bytes / 4:
        warnings.warn(
            f"{image.path}: storage chunks {image.chunks} ({chunk_bytes / 2**20:.0f} MiB) are large for the memory "
            f"budget ({memory_bytes / 2**30:.2f} GiB); reads will be slow, consider rechunking",
            stacklevel=2,
        )


# --------------------------------------------------------------------------- normalization on the fly


class NormalizedImage:
    """A :class:`LazyImage` normalized region by region with fixed statistics.

    Large images are never written out normalized: a float32 copy would be twice the size of
    a uint16 volume on disk. Every tile read applies the same affine map instead, so the
    result equals normalizing the whole volume with the same statistics.
    """

    def __init__(self, image: LazyImage, cfg_normalize: dict[str, Any], stats: dict[str, Any]) -> None:
        self.image, self.cfg, self.stats = image, cfg_normalize, stats
        self.shape, self.chunks, self.path = image.shape, image.chunks, image.path
        self.dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return self.image.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        region = self.image[key]
        check_finite(region, self.path)
        return normalize(region, self.cfg, self.stats)


def lazy_stats(image: LazyImage, cfg_normalize: dict[str, Any], memory_bytes: float) -> dict[str, Any]:
    """Normalization statistics of one large image, read block by block within the budget.

    minmax, zscore and dtype_max are exact; percentiles come from the same bounded random
    pool as dataset statistics (biapipe.normalize.dataset_stats), here over the blocks.
    """
    spatial = image.shape[:-1]
    chunks = image.chunks[:-1]
    block_shape = choose_block_shape(spatial, chunks, memory_bytes, 4 * image.shape[-1])

    def blocks() -> Any:
        for block in block_grid(spatial, block_shape):
            region = image[block.slices]
            check_finite(region, image.path)
            yield region

    return dataset_stats(blocks(), cfg_normalize)
