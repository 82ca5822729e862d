"""Self-supervised pre-training: unlabelled images in, their reconstruction out.

Each training patch is corrupted by the pretext (``targets.self_supervised.pretext``,
:mod:`.pretext`): blocks hidden (``masked``, scored on the hidden pixels only) or blurred,
binned and noisy (``degraded``); the target is the clean image. The network is the U-Net of
``train.model``, the segmentation workflows' own, so ``train.init`` of a semantic or instance
run takes every weight but the output layer from this model (training/init.py).

Test images are corrupted the same way, from the seed and the image's name, before the
prediction; metrics compare the reconstruction with the original (for ``masked``: the
reconstruction inside the hidden blocks, the original elsewhere). Everything else (patches,
normalized targets kept with the model, tiled prediction, metrics) is the restoration
workflows' (restoration/task.py). Images that need block-wise prediction are not supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...core.errors import ConfigError, InputError
from ...core.imageio import image_id
from ...data.samples import Dataset, Sample, pair_split
from ..base import Task
from ..restoration.task import RestorationTask
from .pretext import block_mask, degrade_same_size, image_rng, mask_blocks, per_axis


class SelfSupervisedTask(RestorationTask):
    name: ClassVar[str] = "self_supervised"
    output_dir: ClassVar[str] = "reconstructed"
    large_output_suffix: ClassVar[str | None] = None  # the test corruption needs the whole image

    @property
    def pretext(self) -> str:
        return str(self.section["pretext"])

    # ------------------------------------------------------------------ samples: images only
    def needs_targets(self, split: str) -> bool:
        return False

    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        """Every image is its own target (test images too: the metrics score the reconstruction)."""
        for key in ("labels", "targets"):
            if spec.get(key):
                raise ConfigError(f"data.{split}.{key}", "the self_supervised workflow reads images only")
        return [Sample(s.id, s.image, s.image, split)
                for s in pair_split(split, {"images": spec["images"], "labels": None}, label_required=False)]

    def demo_samples(self) -> list[Sample]:
        return [Sample(s.id, s.image, s.image, s.split) for s in Task.demo_samples(self)]

    def write_demo(self) -> None:
        Task.write_demo(self)  # the synthetic nuclei; their labels are not read

    def settled_config(self, ds: Dataset) -> dict[str, Any]:
        if self.pretext == "masked" and self.cfg["train"]["loss"]["ssim"] > 0:
            raise ConfigError("train.loss.ssim", "the masked pretext scores the hidden pixels only, which SSIM "
                                                 "cannot; set it to 0")
        per_axis(self.section["mask_block"], self.ndim, f"targets.{self.name}.mask_block")
        per_axis(self.section["factor"], self.ndim, f"targets.{self.name}.factor")
        return super().settled_config(ds)

    # ------------------------------------------------------------------ the pretext
    def corrupt(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """(corrupted normalized (Z)YXC image, (Z)YX boolean mask of the scored pixels or None: all)."""
        s = self.section
        if self.pretext == "masked":
            return mask_blocks(image, per_axis(s["mask_block"], self.ndim, "mask_block"), s["mask_ratio"], rng)
        return degrade_same_size(image, per_axis(s["factor"], self.ndim, "factor"), s["blur_sigma"], s["noise"],
                                 rng), None

    def test_mask(self, spatial: tuple[int, ...], name: str) -> np.ndarray | None:
        """The hidden pixels of test image ``name`` (masked pretext), as :meth:`prediction_input` hid them."""
        if self.pretext != "masked":
            return None
        s = self.section
        rng = image_rng(self.cfg["seed"], name)
        return block_mask(spatial, per_axis(s["mask_block"], self.ndim, "mask_block"), s["mask_ratio"], rng)

    def prediction_input(self, image: Any, path: str | Path) -> Any:
        """The normalized test image corrupted as in training, from the seed and its name."""
        if not isinstance(image, np.ndarray):
            raise InputError(path, "is too large to predict whole; the self_supervised workflow predicts images "
                                   "that fit predict.memory_gb")
        corrupted, _ = self.corrupt(image, image_rng(self.cfg["seed"], image_id(path)))
        return corrupted

    # ------------------------------------------------------------------ training
    def residual(self, in_channels: int) -> bool:
        """No input skip: the decoder must carry the image (docs/architecture.md, self-supervised)."""
        return False

    def build_datasets(self, train_pairs: Any, val_pairs: Any, augment_on_device: bool = False) -> Any:
        from .data import pretext_datasets

        data, self.target_norm = pretext_datasets(self.cfg, self, train_pairs, val_pairs)
        return data

    def loss(self) -> Any:
        from ...training.losses import RestorationLoss

        weights = self.cfg["train"]["loss"]
        try:
            return RestorationLoss(weights["l1"], weights["l2"], weights["ssim"], masked=self.pretext == "masked")
        except ValueError as exc:
            raise ConfigError("train.loss", str(exc)) from exc

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: np.ndarray, label: np.ndarray, path: str | Path | None = None) -> dict[str, float]:
        """Restoration metrics of the reconstruction; ``masked``: inside the hidden blocks only
        (the original elsewhere, where the loss asked nothing of the network)."""
        output = np.asarray(output)
        if path is not None and output.shape == np.shape(label):
            hidden = self.test_mask(tuple(output.shape[:-1]), image_id(path))
            if hidden is not None:
                output = np.where(hidden[..., np.newaxis], output, np.asarray(label).astype(output.dtype))
        return super().evaluate(output, label, path)
