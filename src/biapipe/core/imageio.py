"""Reading and writing images, tables and arrays, always atomically.

Every writer produces its output under a temporary sibling name and renames it into
place, so a job killed half-way never leaves a file that looks finished to Snakemake
or to a later stage.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
import zarr

from .axes import canonical_image, canonical_label
from .errors import InputError
from .raster import RASTER_SUFFIXES, check_2d, is_raster, read_raster

IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".npy", *RASTER_SUFFIXES)

#: dtypes accepted as raw image input; anything else (complex, object, bool) is rejected.
SUPPORTED_IMAGE_KINDS = "uif"


def image_id(path: str | Path) -> str:
    """Name of a sample: the file name without its image suffix (``a.ome.tif`` -> ``a``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.startswith(".")


# --------------------------------------------------------------------------- reading


def open_array(path: str | Path, palette: bool = False) -> Any:
    """Open an image lazily: a zarr.Array for Zarr, a numpy memmap or array for TIFF/npy,
    an array for PNG/JPEG/BMP (``palette``: a palette PNG as its colours, else its indices).

    Zarr groups (OME-Zarr) resolve to their first multiscale level or to their only array.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    suffix = path.name.lower()
    try:
        if suffix.endswith(".zarr"):
            return _open_zarr(path)
        if suffix.endswith(".npy"):
            return np.load(path, mmap_mode="r")
        if suffix.endswith((".tif", ".tiff")):
            return _read_tiff(path)
        if is_raster(path):
            return read_raster(path, palette)
    except InputError:
        raise
    except Exception as exc:  # tifffile/zarr raise many types for corrupt files
        raise InputError(path, f"cannot read the file (truncated or corrupt? {type(exc).__name__}: {exc})") from exc
    raise InputError(path, f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        arr = tif.asarray()
    return arr


def _open_zarr(path: Path) -> zarr.Array:
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]]
    arrays = list(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]]
    raise InputError(path, f"Zarr group holds {len(arrays)} arrays and no OME multiscales; point to one array")


def read_array(path: str | Path, palette: bool = False) -> np.ndarray:
    """Read a whole image into memory as a numpy array of its stored dtype."""
    arr = open_array(path, palette)
    try:
        return np.asarray(arr[...])
    except Exception as exc:
        raise InputError(path, f"cannot read the file (truncated or corrupt? {type(exc).__name__}: {exc})") from exc


def read_image(path: str | Path, ndim: int, axes: str | None = None) -> np.ndarray:
    """Read an image as (Z)YXC with its stored dtype; rejects unsupported dtypes."""
    check_2d(path, ndim)
    arr = read_array(path, palette=True)
    check_image_dtype(arr.dtype, path)
    return canonical_image(arr, ndim, path, axes)


def read_label(path: str | Path, ndim: int) -> np.ndarray:
    """Read a label image as (Z)YX; labels must be integers (or integral floats)."""
    check_2d(path, ndim)
    return canonical_label(label_values(read_array(path), path), ndim, path)


def label_values(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Label values as integers: integral floats converted, anything else an error naming ``path``."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(path, "label image contains NaN or Inf")
        if not np.all(arr == np.round(arr)):
            raise InputError(path, f"label image has non-integer values (dtype {arr.dtype})")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind not in "ui":
        raise InputError(path, f"unsupported label dtype {arr.dtype}")
    return arr


def check_image_dtype(dtype: np.dtype, path: str | Path | None = None) -> None:
    if np.dtype(dtype).kind not in SUPPORTED_IMAGE_KINDS:
        raise InputError(path, f"unsupported image dtype {dtype} (expected integer or float pixels)")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- writing


#: Temporary siblings written by another machine are removed once they are this old (seconds).
STALE_FOREIGN_SECONDS = 24 * 3600


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``path``, else delete it.

    Works for files and for directories (Zarr stores). The temporary name keeps the
    suffix so libraries that dispatch on it (tifffile, zarr) behave as for the final name,
    and names its writer (host and process), so the leftovers of a killed writer are removed
    when the output is written again, while a live concurrent writer's are left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    writer = f"{socket.gethostname()}~{os.getpid()}"
    tmp = path.with_name(f".{path.name}.{writer}~{uuid.uuid4().hex[:8]}.tmp{''.join(path.suffixes[-1:])}")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


#: Folders already swept of dead writers' temporaries by this process (see remove_stale_temporaries).
_SWEPT: set[str] = set()
_SWEPT_LOCK = threading.Lock()
#: A temporary name's writer part: ``.{host}~{pid}~{8 hex}.tmp``; names of earlier versions had
#: only ``.{8 hex}.tmp``.
_ANY_WRITER = re.compile(r"^\..+\.(?:[^~/]+~\d+~)?[0-9a-f]{8}\.tmp")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files left in ``path``'s folder by writers that died (same host,
    process gone; another host's only after a day); returns what was removed.

    A folder is swept once per process, not once per output: a batch job writes thousands of
    outputs into one folder, and listing it for each would make the job quadratic in images.
    A writer that dies later is swept by the next process that writes there (its rerun)."""
    folder = path.parent
    with _SWEPT_LOCK:
        key = str(folder.absolute())
        if key in _SWEPT:
            return []
        _SWEPT.add(key)
    removed = []
    ours = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}~(\d+)~[0-9a-f]{{8}}\.tmp")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if not _ANY_WRITER.match(entry.name):
            continue
        tmp, mine = Path(entry.path), ours.match(entry.name)
        if mine:
            stale = not _alive(int(mine[1]))
        else:
            try:
                stale = time.time() - tmp.lstat().st_mtime > STALE_FOREIGN_SECONDS
            except OSError:
                continue
        if stale:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_tiff(path: str | Path, arr: np.ndarray, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib" if compress else None)


def write_zarr(
    path: str | Path,
    arr: np.ndarray,
    chunks: tuple[int, ...] | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write a whole array as a compressed Zarr (v3) store."""
    with atomic_path(path) as tmp:
        z = zarr.create_array(
            store=str(tmp), shape=arr.shape, dtype=arr.dtype, chunks=chunks or "auto", overwrite=True
        )
        z[...] = arr
        if attrs:
            z.attrs.update(attrs)


def read_csv_many(paths: Iterator[str | Path] | list[str | Path]) -> pd.DataFrame:
    """The rows of many small CSV files (one per image) as one table, in the given order.

    ``pd.read_csv`` costs about 2 ms per file whatever its size, which is most of the time for
    tens of thousands of one-row files; here files with the same header are joined as text and
    parsed together (same types as reading them one by one), one parse per distinct header.
    Files whose text has a quote character are parsed alone (a quoted field may hold a newline)."""
    groups: dict[str, tuple[list[str], list[int]]] = {}
    tables: list[tuple[pd.DataFrame, list[int]]] = []
    position = 0
    for path in paths:
        text = Path(path).read_text()
        header, _, body = text.partition("\n")
        if '"' in text:
            table = pd.read_csv(io.StringIO(text))
            tables.append((table, list(range(position, position + len(table)))))
            position += len(table)
            continue
        rows = [line for line in body.splitlines() if line]
        lines, positions = groups.setdefault(header, ([], []))
        lines.extend(rows)
        positions.extend(range(position, position + len(rows)))
        position += len(rows)
    for header, (lines, positions) in groups.items():
        tables.append((pd.read_csv(io.StringIO("\n".join([header, *lines]) + "\n")), positions))
    if not tables:
        return pd.DataFrame()
    if len(tables) == 1:
        return tables[0][0]
    table = pd.concat([t.set_axis(pos) for t, pos in tables])
    return table.sort_index().reset_index(drop=True)


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
