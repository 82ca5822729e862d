"""What a model file says about itself, read without torch: when the workflow is parsed.

A run that starts from a model (``model:`` predicts with it, ``train.init:`` trains from it)
needs the model's workflow, dimensionality, channels and the config it was trained with
before any job runs, and parsing must not import torch (docs/architecture.md, "start-up
cost"). A biapipe checkpoint is a torch zip archive whose ``data.pkl`` holds plain types
beside the tensors; :class:`_HeaderUnpickler` reads those plain types and leaves every
tensor unread (and, like ``torch.load(weights_only=True)``, runs no pickled code).
BioImage Model Zoo packages describe themselves in ``rdf.yaml`` (:mod:`.rdf`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import plain
from ..core.errors import InputError
from .rdf import is_package, read_package_info

#: Config sections a biapipe model records and brings to a run that uses it (``model_config``).
CARRIED = ("workflow", "ndim", "data", "normalize", "targets", "postprocess")
#: Keys of ``data`` a model carries (the rest describes the training data, not the model).
CARRIED_DATA = ("axes", "voxel_size")
#: Keys of ``predict`` a model carries: prediction at the object scale it was trained at.
CARRIED_PREDICT = ("rescale",)


@dataclass(frozen=True)
class ModelInfo:
    """A model as the workflow plans with it."""

    #: the file or folder as given
    path: str
    #: ``checkpoint`` (biapipe) or ``bmz`` (a BioImage Model Zoo package)
    kind: str
    ndim: int
    in_channels: int
    out_channels: int
    #: the config sections the model brings (keys of CARRIED); only what it knows
    config: dict[str, Any] = field(default_factory=dict)
    #: tuned post-processing values as the task's tuning file holds them (None: not tuned)
    tuned: dict[str, Any] | None = None
    #: the biapipe network spec (None: a network biapipe cannot rebuild)
    spec: dict[str, Any] | None = None
    #: changes whenever the model's files do (sizes and modification times)
    stamp: str = ""
    #: BMZ: which weight formats the package has, and what else loading it needs (:mod:`.rdf`)
    package: dict[str, Any] = field(default_factory=dict)

    @property
    def workflow(self) -> str | None:
        return self.config.get("workflow")

    @property
    def name(self) -> str:
        return Path(self.path).name


_CACHE: dict[tuple[str, str], ModelInfo] = {}


def read_model_info(path: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of a checkpoint (``.pt``/``.pth``) or BMZ package (``.zip``, a folder
    with ``rdf.yaml``, or the ``rdf.yaml`` itself); cached by the files' sizes and mtimes."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "model not found")
    stamp = file_stamp(path)
    key = (str(path.resolve()), stamp)
    if key not in _CACHE:
        _CACHE[key] = _read(path, stamp)
    return _CACHE[key]


def _read(path: Path, stamp: str) -> ModelInfo:
    if is_package(path):
        return ModelInfo(path=str(path), stamp=stamp, **read_package_info(path))
    return checkpoint_info(path, stamp)


def file_stamp(path: str | Path) -> str:
    """Sizes and modification times of a model's files (a folder: every file in it), hashed."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = []
    for f in files:
        st = os.stat(f)
        parts.append(f"{f.relative_to(path) if path.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- biapipe checkpoints


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class _HeaderUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's plain types; tensors (torch classes, storages) become None."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module.split(".")[0] == "torch":
            return _nothing
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None


def checkpoint_header(path: str | Path) -> dict[str, Any]:
    """A biapipe checkpoint without its tensors (which read as None)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                raise InputError(path, "not a biapipe checkpoint (no data.pkl in the torch archive)")
            ckpt = _HeaderUnpickler(zf.open(name)).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, OSError) as exc:
        raise InputError(path, f"not a biapipe checkpoint or BioImage Model Zoo package ({type(exc).__name__}: "
                               f"{exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "workflow" not in ckpt:
        raise InputError(path, "not a biapipe checkpoint (no network spec)")
    return ckpt


def checkpoint_info(path: Path, stamp: str = "") -> ModelInfo:
    ckpt = checkpoint_header(path)
    spec = dict(ckpt["model"])
    config = dict(ckpt.get("config") or {})
    config.setdefault("workflow", ckpt["workflow"])
    config.setdefault("ndim", int(spec["ndim"]))
    return ModelInfo(path=str(path), kind="checkpoint", ndim=int(spec["ndim"]), in_channels=int(spec["in_channels"]),
                     out_channels=int(spec["out_channels"]), config=config, tuned=ckpt.get("tuned"), spec=spec,
                     stamp=stamp or file_stamp(path))


def model_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of the experiment config: the sections a run that starts from
    the model takes as its own unless it sets them (``model_config``)."""
    out = {k: plain(cfg[k]) for k in CARRIED if k != "data"}
    out["data"] = {k: plain(cfg["data"][k]) for k in CARRIED_DATA}
    out["predict"] = {k: plain(cfg["predict"][k]) for k in CARRIED_PREDICT if k in cfg["predict"]}
    return out
