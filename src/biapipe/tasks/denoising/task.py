"""Denoising: a noisy image in, the same image without its noise out, in three modes.

- ``supervised`` (CARE): targets are clean images of the same fields;
- ``noise2noise``: targets are second, independent noisy frames; the network learns their
  expectation, the clean image (an L2 loss is mean-seeking); either frame of a pair is an
  input, so half the patches swap the roles;
- ``noise2void``: no targets; each training patch hides a sparse set of pixels behind
  neighbour values (blind spots) and the loss scores only those pixels, so the network
  learns a pixel from its surroundings, which share the signal but not the noise
  (restoration/masking.py).

Everything else (normalized targets stored with the model, tiled prediction in the targets'
units, metrics, large images) is the restoration workflows' (restoration/task.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...core.errors import ConfigError
from ...data.demo import demo_ids
from ...data.samples import Dataset, Sample, pair_split
from ..restoration.demo import SECOND_FRAME, denoising_demo
from ..restoration.task import RestorationTask


class DenoisingTask(RestorationTask):
    name: ClassVar[str] = "denoising"

    @property
    def mode(self) -> str:
        return str(self.section["mode"])

    def needs_targets(self, split: str) -> bool:
        return self.mode != "noise2void"

    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        """Noise2Void training and validation images are their own targets (targets not read)."""
        if self.mode == "noise2void" and split != "test":
            if spec["labels"]:
                raise ConfigError(f"data.{split}.labels", "the denoising workflow reads no labels")
            return [Sample(s.id, s.image, s.image, split)
                    for s in pair_split(split, {"images": spec["images"], "labels": None}, label_required=False)]
        return super().split_samples(split, spec)

    def settled_config(self, ds: Dataset) -> dict[str, Any]:
        if self.mode == "noise2void" and self.cfg["train"]["loss"]["ssim"] > 0:
            raise ConfigError("train.loss.ssim", "noise2void scores single masked pixels, which SSIM cannot; set it to 0")
        return super().settled_config(ds)

    def denoising_settings(self) -> dict[str, Any]:
        return self.section

    def residual(self, in_channels: int) -> bool:
        """No input skip for Noise2Void: in training the skip would carry a blind spot's
        replacement value, in prediction the noisy pixel itself, so the learned correction
        would add that pixel's noise back (the blind spot must hold at prediction too)."""
        return self.mode != "noise2void" and super().residual(in_channels)

    # ------------------------------------------------------------------ demo
    def demo_samples(self) -> list[Sample]:
        """Noisy images; targets: clean (supervised, and every test image), the second noisy
        frame (noise2noise training), the image itself (noise2void training)."""
        demo = self.cfg["data"]["demo"]
        folder = Path(demo["folder"])
        out = []
        for split, names in demo_ids(demo["n_train"], demo["n_val"], demo["n_test"]).items():
            for i in names:
                image = str(folder / split / "images" / f"{i}.tif")
                target = str(folder / split / "targets" / f"{i}.tif")
                if split != "test" and self.mode == "noise2noise":
                    target = str(folder / split / SECOND_FRAME / f"{i}.tif")
                elif split != "test" and self.mode == "noise2void":
                    target = image
                out.append(Sample(i, image, target, split))
        return out

    def write_demo(self) -> None:
        d = self.cfg["data"]["demo"]
        denoising_demo(d["folder"], self.ndim, (d["n_train"], d["n_val"], d["n_test"]), d["size"], self.cfg["seed"])
