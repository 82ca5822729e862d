"""A BioImage Model Zoo package as a torch module biapipe predicts with, offline.

Three ways in, in this order:

1. packages biapipe exported (``config.biapipe.spec``): the network is rebuilt from the spec
   and the state-dict weights, exactly the module a checkpoint gives, so predictions through
   the package equal those of the checkpoint bit for bit; it returns logits and the task
   activates them, as for a checkpoint;
2. ``torchscript`` weights: no Python code of the package runs;
3. ``pytorch_state_dict`` weights with the architecture file of the package (its code runs, as
   in every consumer of such packages) or a library the environment must have.

A foreign package's output is taken as what biapipe stores (activated: probabilities, maps);
:class:`AxesAdapter` feeds it biapipe's batch-channel-(z)-y-x tensors in its own axis order.
Nothing is downloaded: every file is read from the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError
from .info import ModelInfo, read_model_info
from .registry import build_model

#: Prefix of the network's weights in a biapipe package (``models.packaged.ActivatedNet``).
PACKAGED_PREFIX = "net."


class AxesAdapter(nn.Module):
    """Runs a network whose tensors have other axes (order, no batch or channel axis) on
    N,C,(Z)YX tensors; ``in_axes``/``out_axes`` are the package's axis ids in order."""

    def __init__(self, net: nn.Module, in_axes: list[str], out_axes: list[str], ndim: int) -> None:
        super().__init__()
        self.net = net
        self.canonical = ["batch", "channel", *("z", "y", "x")[3 - ndim:]]
        self.in_axes, self.out_axes = list(in_axes), list(out_axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        present = [a for a in self.canonical if a in self.in_axes]
        for axis in reversed([a for a in self.canonical if a not in self.in_axes]):
            x = x.squeeze(self.canonical.index(axis))
        x = x.permute([present.index(a) for a in self.in_axes])
        y = self.net(x)
        order = [a for a in self.canonical if a in self.out_axes]
        y = y.permute([self.out_axes.index(a) for a in order])
        for k, axis in enumerate(self.canonical):
            if axis not in self.out_axes:
                y = y.unsqueeze(k)
        return y


def package_file(path: str | Path, name: str, work: Path) -> Path:
    """A file of the package on disk (extracted to ``work`` from a zip)."""
    path = Path(path)
    if path.is_dir():
        return path / name
    if path.suffix.lower() != ".zip":
        return path.parent / name
    with zipfile.ZipFile(path) as zf:
        try:
            return Path(zf.extract(name, work))
        except KeyError as exc:
            raise InputError(path, f"the package lacks its file {name}") from exc


def _source(entry: dict[str, Any]) -> str:
    source = entry.get("source") or entry.get("file") or ""
    return str(source).split("/")[-1] if "://" in str(source) else str(source)


def load_package(path: str | Path, device: torch.device,
                 prefer: str | None = None) -> tuple[nn.Module, dict[str, Any], bool]:
    """(module, spec, activated) of a package on ``device``, in eval mode. ``spec`` is the biapipe
    network spec (a stand-in for foreign networks); ``activated``: the output needs no activation.
    ``prefer`` (``torchscript`` / ``pytorch_state_dict``) skips the native rebuild (tests)."""
    info = read_model_info(path)
    weights = info.package["rdf"]["weights"]
    with tempfile.TemporaryDirectory(prefix="biapipe-bmz-") as tmp:
        work = Path(tmp)
        if info.spec is not None and prefer is None and weights.get("pytorch_state_dict"):
            model = build_model(dict(info.spec))
            model.load_state_dict(package_state_dict(path))
            return model.to(device).eval(), dict(info.spec), False
        kind = prefer or next(k for k in ("torchscript", "pytorch_state_dict") if weights.get(k))
        entry = weights.get(kind)
        if not entry:
            raise InputError(path, f"has no {kind} weights")
        file = package_file(path, _source(entry), work)
        try:
            if kind == "torchscript":
                net = torch.jit.load(str(file), map_location=device)
            else:
                net = _from_state_dict(path, entry, file, work)
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
            raise InputError(path, f"cannot load its {kind} weights ({type(exc).__name__}: {exc})") from exc
    model = AxesAdapter(net, [a["id"] for a in info.package["input_axes"]],
                        [a["id"] for a in info.package["output_axes"]], info.ndim)
    return model.to(device).eval(), foreign_spec(info), True


def package_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights of a package biapipe exported (without the activation wrapper's prefix)."""
    info = read_model_info(path)
    entry = info.package["rdf"]["weights"].get("pytorch_state_dict")
    if info.spec is None or not entry:
        raise InputError(path, "is not a package of a biapipe network (no config.biapipe and state-dict weights)")
    with tempfile.TemporaryDirectory(prefix="biapipe-bmz-") as tmp:
        state = _state_dict(package_file(path, _source(entry), Path(tmp)))
    return {k[len(PACKAGED_PREFIX):]: v for k, v in state.items() if k.startswith(PACKAGED_PREFIX)}


def _state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(file, f"cannot read the weights ({type(exc).__name__}: {exc})") from exc


def _from_state_dict(path: str | Path, entry: dict[str, Any], file: Path, work: Path) -> nn.Module:
    """The architecture a state-dict entry names (0.5: ``architecture``; 0.4: ``architecture`` as
    ``file.py:Name`` or ``module.Name`` with ``kwargs``), with its weights."""
    arch = entry.get("architecture")
    if isinstance(arch, dict):
        name, kwargs = arch.get("callable"), dict(arch.get("kwargs") or {})
        if arch.get("import_from"):
            factory = getattr(importlib.import_module(arch["import_from"]), name)
        else:
            factory = getattr(_module(package_file(path, _source(arch), work)), name)
    else:
        where, _, name = str(arch).rpartition(":") if ":" in str(arch) else str(arch).rpartition(".")
        kwargs = dict(entry.get("kwargs") or {})
        factory = getattr(_module(package_file(path, where, work)) if where.endswith(".py")
                          else importlib.import_module(where), name)
    net = factory(**kwargs)
    net.load_state_dict(_state_dict(file))
    return net


def _module(file: Path) -> Any:
    """Import an architecture file of a package under a name of its own."""
    name = f"biapipe_bmz_{abs(hash(str(file)))}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise InputError(file, "cannot import the architecture file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def foreign_spec(info: ModelInfo) -> dict[str, Any]:
    """What prediction needs to know of a network it did not build: dimensionality, channels and
    the multiple every tile edge must be of (the step of the package's input sizes, or its fixed size)."""
    divisors = []
    for axis in ("z", "y", "x")[3 - info.ndim:]:
        size = info.package["sizes"].get(axis)
        if isinstance(size, int):
            divisors.append(size)
        elif isinstance(size, dict):
            step, low = int(size.get("step") or 0), int(size.get("min") or 1)
            if step and low % step:
                raise InputError(info.path, f"input sizes {low} + k x {step} along {axis}: biapipe tiles at "
                                            "multiples of one size")
            divisors.append(max(step, low))
        else:
            divisors.append(1)
    return {"arch": "bmz", "ndim": info.ndim, "in_channels": info.in_channels, "out_channels": info.out_channels,
            "divisor": divisors}
