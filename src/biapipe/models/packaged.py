"""A network and its task's activation as one module: what an exported model package runs.

The package's architecture file must stand alone (consumers load it without biapipe), so
:func:`standalone_source` joins the source of this package's modules into one file with
their relative imports removed; each of them imports nothing from biapipe but the error type.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import CubicUpsample
from .registry import build_model

#: Modules joined into the standalone architecture source, in dependency order.
STANDALONE_MODULES = ("layers.py", "pooling.py", "unet.py", "classifier.py", "registry.py", "packaged.py")

_ERROR_STAND_IN = """

class ConfigError(ValueError):
    def __init__(self, key, problem):
        super().__init__(f"config key '{key}': {problem}")
"""


class ActivatedNet(nn.Module):
    """A network followed by its task's activation, as one module for export.

    ``activation`` is one entry per output channel: ``["sigmoid"]`` or ``["sigmoid", offset]``
    (a fixed logit offset added first), ``["clamp", low, high]``, ``["affine", gain, offset]``
    (``y * gain + offset``: a restoration model's output back in its targets' units) or
    ``["identity"]`` or ``["softmax_group"]`` (one softmax over every channel so marked: an
    instance model's class channels); or the single entry ``["softmax"]`` over all channels. ``upsample``
    (per spatial axis) enlarges the input by cubic convolution first, as super-resolution
    does. Consumers of an exported model then get the same quantities ``biapipe predict`` stores.
    """

    def __init__(self, net: nn.Module, activation: list[list[Any]], upsample: list[int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.upsample = CubicUpsample(upsample) if upsample else None
        self.softmax = len(activation) == 1 and activation[0][0] == "softmax"
        kinds = [] if self.softmax else [a[0] for a in activation]
        self.sigmoid_mask = [k == "sigmoid" for k in kinds]
        self.offset = [float(a[1]) if a[0] == "sigmoid" and len(a) > 1 else 0.0 for a in activation] if kinds else []
        self.low = [float(a[1]) if a[0] == "clamp" else -math.inf for a in activation] if kinds else []
        self.high = [float(a[2]) if a[0] == "clamp" else math.inf for a in activation] if kinds else []
        self.gain = [float(a[1]) if a[0] == "affine" else 1.0 for a in activation] if kinds else []
        self.shift = [float(a[2]) if a[0] == "affine" else 0.0 for a in activation] if kinds else []
        self.group = [c for c, k in enumerate(kinds) if k == "softmax_group"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        y = self.net(x)
        if self.softmax:
            return torch.softmax(y, dim=1)
        parts = []
        group = torch.softmax(y[:, self.group], dim=1) if self.group else None
        for c in range(len(self.sigmoid_mask)):
            part = y[:, c:c + 1]
            if group is not None and c in self.group:
                k = self.group.index(c)
                parts.append(group[:, k:k + 1])
            elif self.sigmoid_mask[c]:
                parts.append(torch.sigmoid(part + self.offset[c]))
            else:
                parts.append(part.clamp(self.low[c], self.high[c]) * self.gain[c] + self.shift[c])
        return torch.cat(parts, dim=1)


def packaged_network(spec: dict[str, Any], activation: list[list[Any]], upsample: list[int] | None = None) -> nn.Module:
    """Entry point named in an exported model's rdf.yaml: the network plus its activation."""
    return ActivatedNet(build_model(spec), activation, upsample)


def standalone_source() -> str:
    """The architecture source of an exported package: this package's modules in one file."""
    folder = Path(__file__).parent
    body = []
    for name in STANDALONE_MODULES:
        for line in (folder / name).read_text().splitlines():
            if line.startswith(("from .", "from __future__")):
                continue
            body.append(line)
    return "from __future__ import annotations" + _ERROR_STAND_IN + "\n".join(body) + "\n"
