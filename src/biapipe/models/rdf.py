"""BioImage Model Zoo packages as the workflow plans with them: ``rdf.yaml`` read with YAML alone.

A package is a ``.zip``, a folder, or its ``rdf.yaml`` (format 0.5, and the 0.4 layout most
zoo models still have). Read here, without torch or ``bioimageio.spec`` (an optional extra):
the one input and one output tensor (axes, channels, tile sizes), the preprocessing as
biapipe's ``normalize`` section, the weight formats biapipe runs (pytorch_state_dict,
torchscript), and, for packages biapipe exported, the config they record under
``config.biapipe`` (workflow, normalization with its statistics, targets, post-processing,
tuned thresholds). Loading the weights is :mod:`.bmz` (torch).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import InputError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
SPACE = ("z", "y", "x")
#: Weight formats biapipe can run, in the order it prefers them (a biapipe network is rebuilt
#: natively from ``config.biapipe`` before either).
RUNNABLE = ("torchscript", "pytorch_state_dict")


def is_package(path: str | Path) -> bool:
    """A folder with an rdf, an rdf file, or a zip holding one (a torch checkpoint zip does not)."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    if path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml"):
        return True
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n in zf.namelist() for n in RDF_NAMES)
    return False


def read_rdf(path: str | Path) -> dict[str, Any]:
    """The package's description as plain YAML data."""
    path = Path(path)
    try:
        if path.is_dir():
            text = next((path / n).read_text() for n in RDF_NAMES if (path / n).is_file())
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                text = zf.read(next(n for n in RDF_NAMES if n in zf.namelist())).decode()
        else:
            text = path.read_text()
        rdf = yaml.safe_load(text)
    except (OSError, StopIteration, yaml.YAMLError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"cannot read the package description ({type(exc).__name__}: {exc})") from exc
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise InputError(path, "not a BioImage Model Zoo model package (rdf type is not 'model')")
    return rdf


def read_package_info(path: Path) -> dict[str, Any]:
    """The fields of a package's ``models.info.ModelInfo``."""
    rdf = read_rdf(path)
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(path, f"has {len(inputs)} inputs and {len(outputs)} outputs; biapipe runs models with one "
                               "of each")
    tin, tout = tensor_axes(inputs[0], path), tensor_axes(outputs[0], path)
    space = [a["id"] for a in tin if a["type"] == "space"]
    if space not in (["y", "x"], ["z", "y", "x"]):
        raise InputError(path, f"input has spatial axes {space}; biapipe runs 2D (y, x) and 3D (z, y, x) models")
    weights = {k: v for k, v in (rdf.get("weights") or {}).items() if v}
    if not any(k in weights for k in RUNNABLE):
        raise InputError(path, f"has weights {', '.join(weights) or 'none'}; biapipe runs pytorch_state_dict or "
                               "torchscript weights")
    own = ((rdf.get("config") or {}).get("biapipe")) or {}
    config = dict(own.get("config") or {})
    config.setdefault("ndim", len(space))
    if "normalize" not in config:
        config["normalize"] = normalize_of(inputs[0].get("preprocessing") or [], path)
    package = {"rdf": rdf, "input_axes": tin, "output_axes": tout, "weights": sorted(weights),
               "sizes": {a["id"]: a.get("size") for a in tin if a["type"] == "space"},
               "output_scale": {a["id"]: a.get("scale", 1.0) for a in tout if a["type"] == "space"}}
    return dict(kind="bmz", ndim=len(space), in_channels=_channels(tin), out_channels=_channels(tout), config=config,
                tuned=own.get("tuned"), spec=own.get("spec"), package=package)


def _channels(axes: list[dict[str, Any]]) -> int:
    for a in axes:
        if a["type"] == "channel":
            return int(a["size"])
    return 1


def tensor_axes(tensor: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The axes of a tensor description in one form for both formats: a list of
    ``{"type": batch|channel|space, "id", "size"}`` (size: an int, ``{"min", "step"}``, or None
    when it follows another tensor), with ``scale`` for outputs that reference an input."""
    axes = tensor.get("axes")
    if isinstance(axes, str):  # format 0.4: "bcyx" and a shape of its own
        return _axes_04(axes, tensor.get("shape"), path)
    out = []
    for a in axes or []:
        kind = a.get("type")
        if kind == "batch":
            out.append({"type": "batch", "id": "batch", "size": None})
        elif kind == "channel":
            out.append({"type": "channel", "id": "channel", "size": len(a.get("channel_names") or [])})
        elif kind in ("space", "index") and a.get("id", "") in SPACE:
            size = a.get("size")
            entry = {"type": "space", "id": a["id"], "size": size if isinstance(size, int | dict) else None}
            if isinstance(size, dict) and "tensor_id" in size:
                entry["size"] = None
            entry["scale"] = float(a.get("scale", 1.0))
            out.append(entry)
        else:
            raise InputError(path, f"tensor '{tensor.get('id')}' has an axis of type {kind} "
                                   f"({a.get('id')}) that biapipe cannot feed")
    return out


def _axes_04(axes: str, shape: Any, path: Path) -> list[dict[str, Any]]:
    out = []
    for k, letter in enumerate(axes):
        if letter == "b":
            out.append({"type": "batch", "id": "batch", "size": None})
            continue
        if isinstance(shape, list):
            size: Any = int(shape[k])
        elif isinstance(shape, dict) and "min" in shape:
            size = {"min": int(shape["min"][k]), "step": int(shape["step"][k])}
        else:  # an output whose shape follows the input
            size = None
        if letter == "c":
            out.append({"type": "channel", "id": "channel", "size": size if isinstance(size, int) else 1})
        elif letter in SPACE:
            scale = float(shape["scale"][k]) if isinstance(shape, dict) and "scale" in shape else 1.0
            out.append({"type": "space", "id": letter, "size": size, "scale": scale})
        else:
            raise InputError(path, f"axis '{letter}' of axes '{axes}' is not one biapipe can feed")
    return out


def normalize_of(steps: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """biapipe's ``normalize`` section for a package's preprocessing (both formats)."""
    norm: dict[str, Any] = {"method": "none"}
    for step in steps:
        name, kw = step.get("id") or step.get("name"), step.get("kwargs") or {}
        axes = kw.get("axes")
        per_channel = axes is None or "c" not in axes and "channel" not in (axes or [])
        if name in ("ensure_dtype",):
            continue
        if name == "scale_range":
            low, high = float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
            norm = {"method": "minmax" if (low, high) == (0.0, 100.0) else "percentile", "low": low, "high": high,
                    "per_channel": per_channel, "scope": "image"}
        elif name == "zero_mean_unit_variance" and kw.get("mode", "per_sample") == "per_sample" and "mean" not in kw:
            norm = {"method": "zscore", "per_channel": per_channel, "scope": "image"}
        elif name in ("fixed_zero_mean_unit_variance", "zero_mean_unit_variance"):
            mean, std = _list(kw.get("mean")), _list(kw.get("std"))
            norm = {"method": "zscore", "scope": "dataset", "per_channel": len(mean) > 1,
                    "stats": {"method": "zscore", "mean": mean, "std": std}}
        elif name == "scale_linear":
            gain, offset = _list(kw.get("gain", 1.0)), _list(kw.get("offset", 0.0))
            if len(gain) != len(offset):
                gain, offset = gain * len(offset) if len(gain) == 1 else gain, offset * len(gain)
            low = [-o / g for g, o in zip(gain, offset)]
            norm = {"method": "minmax", "scope": "dataset", "per_channel": len(low) > 1,
                    "stats": {"method": "minmax", "low": low, "high": [lo + 1.0 / g for lo, g in zip(low, gain)]}}
        elif name == "clip":
            if (float(kw.get("min", 0.0)), float(kw.get("max", 1.0))) != (0.0, 1.0):
                raise InputError(path, f"preprocessing clip to [{kw.get('min')}, {kw.get('max')}]: biapipe clips "
                                       "to [0, 1] only")
            norm["clip"] = True
        else:
            raise InputError(path, f"preprocessing step '{name}' has no biapipe normalization; set normalize in the "
                                   "config to what the model expects")
    return norm


def _list(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]
