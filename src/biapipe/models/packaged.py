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
    (a fixed logit offset added first), ``["clamp", low, high]`` or ``["identity"]``; or the
    single entry ``["softmax"]`` over all channels. Consumers of an exported model then get
    the same quantities ``biapipe predict`` stores.
    """

    def __init__(self, net: nn.Module, activation: list[list[Any]]) -> None:
        super().__init__()
        self.net = net
        self.softmax = len(activation) == 1 and activation[0][0] == "softmax"
        kinds = [] if self.softmax else [a[0] for a in activation]
        self.sigmoid_mask = [k == "sigmoid" for k in kinds]
        self.offset = [float(a[1]) if a[0] == "sigmoid" and len(a) > 1 else 0.0 for a in activation] if kinds else []
        self.low = [float(a[1]) if a[0] == "clamp" else -math.inf for a in activation] if kinds else []
        self.high = [float(a[2]) if a[0] == "clamp" else math.inf for a in activation] if kinds else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.softmax:
            return torch.softmax(y, dim=1)
        parts = []
        for c in range(len(self.sigmoid_mask)):
            part = y[:, c:c + 1]
            if self.sigmoid_mask[c]:
                parts.append(torch.sigmoid(part + self.offset[c]))
            else:
                parts.append(part.clamp(self.low[c], self.high[c]))
        return torch.cat(parts, dim=1)


def packaged_network(spec: dict[str, Any], activation: list[list[Any]]) -> nn.Module:
    """Entry point named in an exported model's rdf.yaml: the network plus its activation."""
    return ActivatedNet(build_model(spec), activation)


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
