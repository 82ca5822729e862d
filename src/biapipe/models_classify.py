"""A small residual CNN that maps a whole image to class logits, 2D and 3D in one code path.

Why this shape: bioimage classification sets are small (tens to thousands of images),
so a compact network with residual connections (which train reliably from scratch
without careful initialization) and global average pooling (which makes the head
independent of the input size and has no parameters to overfit) is a better default
than a large ImageNet architecture. Dimensionality only picks the layer classes.

Like the U-Net, the network is described by a plain-dict spec that is stored in the
checkpoint; :func:`biapipe.models.build_model` hands specs with ``arch`` equal to
:data:`ARCH` to :func:`build_classifier`. The spec also records the class names and
the input size, so a checkpoint alone says how to feed the model and read its output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models import check_network_spec

#: ``arch`` value of classifier specs (never a value of ``train.model.arch``: the
#: classification workflow always uses this network).
ARCH = "resnet_classifier"

NORMS = ("batch", "instance", "group", "none")
MAX_GROUPS = 8


def _conv(ndim: int) -> type[nn.Module]:
    if ndim == 2:
        return nn.Conv2d
    if ndim == 3:
        return nn.Conv3d
    raise ConfigError("ndim", f"must be 2 or 3, got {ndim}")


def _norm(kind: str, ndim: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        groups = next(g for g in range(min(MAX_GROUPS, channels), 0, -1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError("train.model.norm", f"unknown normalization '{kind}' (choose from {', '.join(NORMS)})")


def _conv_norm(ndim: int, in_ch: int, out_ch: int, kernel: int, stride: int, norm: str) -> nn.Sequential:
    """Convolution then normalization, as a Sequential so prediction can fold BatchNorm into the conv."""
    conv = _conv(ndim)(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=norm == "none")
    return nn.Sequential(conv, _norm(norm, ndim, out_ch))


class ResidualBlock(nn.Module):
    """Two 3x3(x3) convolutions with a skip connection; ``stride`` 2 halves every spatial axis.

    A down-sampling skip averages 2x2(x2) blocks and then applies a 1x1 convolution
    ("ResNet-D"): unlike a strided 1x1 convolution it sees every input pixel, and it
    avoids a oneDNN crash in the backward pass of strided 1x1 convolutions on
    channels-last CPU tensors (torch 2.13, e.g. 8 -> 16 channels at 64x64).
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm(ndim, in_ch, out_ch, 3, stride, norm), nn.ReLU(inplace=True),
            _conv_norm(ndim, out_ch, out_ch, 3, 1, norm),
        )
        self.downsample = stride != 1
        changes_shape = self.downsample or in_ch != out_ch
        self.skip = _conv_norm(ndim, in_ch, out_ch, 1, 1, norm) if changes_shape else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        shortcut = _halve(x) if self.downsample else x
        return self.act(out + self.skip(shortcut))


def _halve(x: torch.Tensor) -> torch.Tensor:
    """Average 2-pixel blocks along every spatial axis; the output size ceil(n/2) matches a
    stride-2 3x3 convolution with padding 1, and an axis of length 1 stays 1."""
    kernel = [min(2, int(n)) for n in x.shape[2:]]
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, kernel_size=kernel, stride=2, ceil_mode=True)


class ResNetClassifier(nn.Module):
    """Stem, ``depth`` residual stages (``width * 2**k`` channels; every stage after the
    first halves the resolution), global average pooling, dropout, linear head.

    Input N,C,(Z)YX of any size; output N,``out_channels`` logits.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, depth: int = 3, width: int = 16,
                 norm: str = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_norm(ndim, in_channels, width, 3, 1, norm), nn.ReLU(inplace=True))
        stages, ch = [], width
        for level in range(depth):
            out = width * 2**level
            stages.append(ResidualBlock(ndim, ch, out, stride=1 if level == 0 else 2, norm=norm))
            ch = out
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(ch, out_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features N,F: the mean over all spatial positions of the last stage."""
        return self.stages(self.stem(x)).flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _check_spec(spec: dict[str, Any]) -> None:
    """Reject a bad spec with the config key to fix, rather than failing inside torch."""
    if spec.get("arch") != ARCH:
        raise ConfigError("train.model.arch", f"'{spec.get('arch')}' is not the classifier ({ARCH})")
    check_network_spec(spec)
    if spec["out_channels"] < 2:
        raise ConfigError("targets.classification.classes", "classification needs at least 2 classes")


def build_classifier(spec: dict[str, Any]) -> ResNetClassifier:
    """Build the network a classifier spec describes (weights drawn from torch's RNG)."""
    _check_spec(spec)
    return ResNetClassifier(ndim=spec["ndim"], in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                            depth=spec["depth"], width=spec["width"], norm=spec.get("norm", "batch"),
                            dropout=float(spec.get("dropout", 0.0)))


def classifier_spec(cfg: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    """The classifier spec for a validated config: ``train.model`` depth/width/norm/dropout,
    the input size (``train.patch_size``) and the class names in index order."""
    model = cfg["train"]["model"]
    classes = cfg["targets"].get("classification", {}).get("classes")
    spec = {
        "arch": ARCH, "ndim": int(cfg["ndim"]), "in_channels": int(in_channels), "out_channels": int(out_channels),
        "depth": int(model["depth"]), "width": int(model["width"]), "norm": model["norm"],
        "dropout": float(model["dropout"]), "input_size": [int(s) for s in cfg["train"]["patch_size"]],
        "classes": [str(c) for c in classes] if classes else None,
    }
    _check_spec(spec)
    if spec["classes"] is not None and len(spec["classes"]) != spec["out_channels"]:
        raise ConfigError("targets.classification.classes",
                          f"lists {len(spec['classes'])} classes but the model has {out_channels} outputs")
    return spec
