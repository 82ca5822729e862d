"""Super-resolution: an image in, the same field at ``factor`` times the resolution out.

The input is first put on the output grid by cubic convolution (models.layers.CubicUpsample),
then a residual U-Net restores the detail the interpolation cannot: prediction tiles, blend
windows and large-volume blocks all live on the high-resolution grid, so the generic tiled
and block-wise paths apply unchanged (large inputs are upsampled lazily, region by region).
Outputs have exactly the input's shape times the factor per axis and the voxel size divided
by it.

Training pairs are low-resolution images with high-resolution targets, or (``degrade:
true``) high-resolution images only, from which the targets stage makes each input by blur,
camera-like binning and noise (restoration/resample.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...core.errors import ConfigError, InputError
from ...data.samples import Sample, pair_split
from ..restoration.demo import super_resolution_demo
from ..restoration.resample import Upsampled, check_divisible, degrade, upsample
from ..restoration.targets import check_target_shape, read_target
from ..restoration.task import RestorationTask


class SuperResolutionTask(RestorationTask):
    name: ClassVar[str] = "super_resolution"

    def factors(self) -> tuple[int, ...]:
        """The scale factor of each (Z)YX axis."""
        factor = self.section["factor"]
        if isinstance(factor, int):
            return (int(factor),) * self.ndim
        if len(factor) != self.ndim:
            raise ConfigError(f"targets.{self.name}.factor", f"has {len(factor)} entries but ndim is {self.ndim}")
        return tuple(int(f) for f in factor)

    def target_spatial(self, image_spatial: Sequence[int], same_file: bool = False) -> tuple[int, ...]:
        """Targets are ``factor`` times their image; with ``degrade`` a training image is its own target."""
        if same_file and self.section["degrade"]:
            check_divisible(None, image_spatial, self.factors())
            return tuple(int(s) for s in image_spatial)
        return tuple(int(s) * f for s, f in zip(image_spatial, self.factors()))

    def check_label_header(self, label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                           image_shape: tuple[int, ...]) -> None:
        if label == image and self.section["degrade"]:
            check_divisible(image, image_shape[:-1], self.factors())
        super().check_label_header(label, header_shape, dtype, image, image_shape)

    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        """With ``degrade``, training and validation images are their own targets."""
        if self.section["degrade"] and split != "test":
            return [Sample(s.id, s.image, s.image, split)
                    for s in pair_split(split, {"images": spec["images"], "labels": None}, label_required=False)]
        return super().split_samples(split, spec)

    def read_label(self, path: str | Path, image_shape: tuple[int, ...] | None) -> np.ndarray:
        target = read_target(path, self.ndim, self.cfg["data"]["axes"])
        if image_shape is None:
            return target
        own = self.section["degrade"] and tuple(target.shape[:-1]) == tuple(image_shape)
        check_target_shape(path, target.shape, self.target_spatial(image_shape, own), self.out_channels())
        return target

    def training_input(self, image: np.ndarray, image_id: str) -> np.ndarray:
        """With ``degrade``: the high-resolution training image made low resolution (blur, binning, noise)."""
        s = self.section
        if not s["degrade"]:
            return image
        check_divisible(image_id, image.shape[:-1], self.factors())
        return degrade(image, self.factors(), s["blur_sigma"], s["noise"], self.cfg["seed"], image_id)

    def network_input(self, image: Any) -> Any:
        """The normalized input on the output grid: upsampled now, or lazily for a large image."""
        if isinstance(image, np.ndarray):
            return upsample(image, self.factors())
        return Upsampled(image, self.factors())

    def upsampling(self) -> tuple[int, ...]:
        return self.factors()

    def network_voxel_size(self) -> list[float] | None:
        vs = self.cfg["data"]["voxel_size"]
        return None if vs is None else [float(v) / f for v, f in zip(vs, self.factors())]

    def output_voxel_size(self) -> list[float]:
        vs = self.cfg["data"]["voxel_size"] or [1.0] * self.ndim
        return [float(v) / f for v, f in zip(vs, self.factors())]

    def evaluate(self, output: np.ndarray, label: np.ndarray, path: str | Path | None = None) -> dict[str, float]:
        if tuple(np.shape(output)) != tuple(np.shape(label)):
            raise InputError(path, f"restored image of shape {tuple(np.shape(output))} does not match its "
                                   f"high-resolution ground truth {tuple(np.shape(label))}")
        return super().evaluate(output, label, path)

    def demo_samples(self) -> list[Sample]:
        """With ``degrade``, the demo's high-resolution targets are the training images (their own targets)."""
        samples = super().demo_samples()
        if not self.section["degrade"]:
            return samples
        return [s if s.split == "test" else Sample(s.id, s.label, s.label, s.split) for s in samples]

    def write_demo(self) -> None:
        d = self.cfg["data"]["demo"]
        super_resolution_demo(d["folder"], self.ndim, (d["n_train"], d["n_val"], d["n_test"]), d["size"],
                              self.cfg["seed"], self.factors())
