"""A small residual CNN that maps a whole image to class logits, 2D and 3D in one code path.

Why this shape: bioimage classification sets are small (tens to thousands of images),
so a compact network with residual connections (which train reliably from scratch
without careful initialization) and global average pooling (which makes the head
independent of the input size and has no parameters to overfit) is a better default
than a large ImageNet architecture. Dimensionality only picks the layer classes.

Like the U-Net, the network is described by a plain-dict spec that is stored in the
checkpoint (:mod:`biapipe.models.registry` builds it from ``arch``). The spec also records
the class names and the input size, so a checkpoint alone says how to feed the model and
read its output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from .layers import layer_classes, norm_layer

#: ``arch`` value of classifier specs (never a value of ``train.model.arch``: the
#: classification workflow always uses this network).
ARCH = "resnet_classifier"


def _conv_norm(ndim: int, in_ch: int, out_ch: int, kernel: int, stride: int, norm: str) -> nn.Sequential:
    """Convolution then normalization, as a Sequential so prediction can fold BatchNorm into the conv."""
    conv = layer_classes(ndim)["conv"](in_ch, out_ch, kernel_size=kernel, stride=stride, padding=kernel // 2,
                                       bias=norm == "none")
    return nn.Sequential(conv, norm_layer(norm, ndim, out_ch))


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


def check_classifier_spec(spec: dict[str, Any]) -> None:
    if spec["out_channels"] < 2:
        raise ConfigError("targets.classification.classes", "classification needs at least 2 classes")
    if spec["classes"] is not None and len(spec["classes"]) != spec["out_channels"]:
        raise ConfigError("targets.classification.classes",
                          f"lists {len(spec['classes'])} classes but the model has {spec['out_channels']} outputs")


def build_classifier(spec: dict[str, Any]) -> ResNetClassifier:
    """Build the network a classifier spec describes (weights drawn from torch's RNG)."""
    check_classifier_spec(spec)
    return ResNetClassifier(ndim=spec["ndim"], in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                            depth=spec["depth"], width=spec["width"], norm=spec["norm"], dropout=float(spec["dropout"]))


def classifier_spec(model: dict[str, Any], ndim: int, in_channels: int, classes: list[str],
                    input_size: Sequence[int]) -> dict[str, Any]:
    """The classifier spec from the ``train.model`` section (depth/width/norm/dropout), the input
    size (``train.patch_size``) and the class names in index order."""
    return {
        "arch": ARCH, "ndim": int(ndim), "in_channels": int(in_channels), "out_channels": len(classes),
        "depth": int(model["depth"]), "width": int(model["width"]), "norm": model["norm"],
        "dropout": float(model["dropout"]), "input_size": [int(s) for s in input_size],
        "classes": [str(c) for c in classes],
    }
