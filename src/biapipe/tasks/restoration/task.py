"""The Task of the restoration workflows: image in, image out, in the targets' units.

- samples: ``data.<split>.images`` paired by name with ``data.<split>.targets`` (a sample
  sheet's ``target`` column); header checks name any target of the wrong shape, scale or
  channel count when the workflow is parsed;
- targets: the target image as float32, in its own units; training normalizes all targets
  with one per-channel affine map of the dataset (:mod:`.targets`) and keeps it in the
  checkpoint's spec, so :meth:`for_model` can undo it in :meth:`activate`;
- prediction: the generic tiled path (blended windows: no seams) or block by block for large
  images; post-processing clips and casts (:mod:`.output`), metrics are :mod:`.metrics`.

Subclasses say how the targets relate to the images (:meth:`target_spatial`), how many
channels come out, and what else their mode needs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch

from ...core.errors import ConfigError, InputError
from ...data.samples import Dataset, Sample, list_images, pair_split
from ...data.validate import canonical_shape, probe
from ..base import Task
from ..gallery import Picture, ReportImage
from .large import finish_blocks, metrics_blocks
from .metrics import restoration_metrics, summarize_restoration
from .output import finish, read_restored, write_restored
from .picture import restoration_picture
from .targets import check_target_header, check_target_shape, foreground, identity_normalization, read_target


class RestorationTask(Task):
    output_dir: ClassVar[str] = "restored"
    output_suffix: ClassVar[str] = ".tif"
    large_output_suffix: ClassVar[str | None] = ".ome.zarr"
    scores_patches: ClassVar[bool] = False
    #: inputs are degraded/upsampled and targets normalized per image set: prepared whole
    prepares_by_block: ClassVar[bool] = False
    #: dataset-scope normalization and geometric augmentation only (README, restoration)
    plans_appearance: ClassVar[bool] = False
    main_metric = "psnr"
    main_score = "mean_psnr"
    main_score_name = "PSNR in dB (mean over test images)"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.section = cfg["targets"][self.name]
        #: the target normalization of the model being trained or used (set by training or for_model)
        self.target_norm: dict[str, list[float]] | None = None

    # ------------------------------------------------------------------ what subclasses say
    def channel_names(self) -> list[str]:
        """Names of the output channels (settled when the workflow is parsed)."""
        n = self.section["channels"]
        if n is None:
            raise ConfigError(f"targets.{self.name}.channels", "unknown: the workflow settles it from the data")
        return [f"channel_{c}" for c in range(int(n))]

    def target_spatial(self, image_spatial: Sequence[int], same_file: bool = False) -> tuple[int, ...]:
        """The (Z)YX shape of the target of an image of spatial shape ``image_spatial``."""
        return tuple(int(s) for s in image_spatial)

    def input_channels(self) -> int | None:
        """Channels every input image must have (None: any, as long as they agree)."""
        return len(self.channel_names())

    def settle_channels(self, ds: Dataset) -> Any:
        """The value of ``targets.<name>.channels`` that the data implies."""
        first = ds.train[0].image
        return probe_shape(first, self.ndim, self.cfg["data"]["axes"])[-1]

    def residual(self, in_channels: int) -> bool:
        """Whether the network adds its input to its output (restoring an image of its own kind)."""
        return in_channels == self.out_channels()

    def network_voxel_size(self) -> list[float] | None:
        """Voxel size of the grid the network works on (pool_z: auto)."""
        return self.cfg["data"]["voxel_size"]

    def output_voxel_size(self) -> list[float]:
        vs = self.network_voxel_size()
        return [float(v) for v in vs] if vs is not None else [1.0] * self.ndim

    # ------------------------------------------------------------------ samples (parse time: no torch)
    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        if spec["labels"]:
            raise ConfigError(f"data.{split}.labels", f"the {self.name} workflow reads target images from "
                                                      f"data.{split}.targets")
        return pair_split(split, {"images": spec["images"], "labels": spec["targets"]},
                          label_required=split != "test" and self.needs_targets(split))

    def needs_targets(self, split: str) -> bool:
        return True

    def sheet_label_column(self) -> str:
        return "target"

    def demo_label_folder(self) -> tuple[str, str]:
        return "targets", ".tif"

    def settled_config(self, ds: Dataset) -> dict[str, Any]:
        """The config with ``targets.<name>.channels`` read from the data when null, and a check
        that the input normalization is one map for the dataset (or none)."""
        norm = self.cfg["normalize"]
        if norm["method"] in ("percentile", "minmax", "zscore") and norm["scope"] != "dataset":
            raise ConfigError("normalize.scope", f"the {self.name} workflow learns a fixed map from input to "
                                                 "target intensities, so inputs need one normalization for the "
                                                 "whole dataset: set normalize.scope: dataset")
        if self.section["channels"] is not None:
            return self.cfg
        value = self.demo_channels() if self.cfg["data"]["demo"] else self.settle_channels(ds)
        return self.cfg.with_value(f"targets.{self.name}.channels", value)

    def demo_channels(self) -> Any:
        return 1

    def check_label_header(self, label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                           image_shape: tuple[int, ...]) -> None:
        expected_in = self.input_channels()
        if expected_in is not None and image_shape[-1] != expected_in:
            raise InputError(image, f"has {image_shape[-1]} channels, expected {expected_in} "
                                    f"(targets.{self.name}.channels)")
        check_target_header(label, header_shape, dtype, self.ndim, self.cfg["data"]["axes"],
                            self.target_spatial(image_shape[:-1], label == image), self.out_channels(), image)

    # ------------------------------------------------------------------ targets
    def read_label(self, path: str | Path, image_shape: tuple[int, ...] | None) -> np.ndarray:
        target = read_target(path, self.ndim, self.cfg["data"]["axes"])
        if image_shape is not None:
            check_target_shape(path, target.shape, self.target_spatial(image_shape, self.accepts_own_shape()),
                               self.out_channels())
        return target

    def accepts_own_shape(self) -> bool:
        """Whether a target read at run time may be its own image (a degraded training input)."""
        return False

    def out_channels(self) -> int:
        return len(self.channel_names())

    def make_targets(self, label: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """The target in its own units, float32 (normalized by training, with dataset statistics)."""
        return np.asarray(label, dtype=np.float32)

    def foreground(self, target: np.ndarray) -> np.ndarray:
        return foreground(target)

    # ------------------------------------------------------------------ training
    def denoising_settings(self) -> dict[str, Any] | None:
        """The denoising section when training needs its mode (Noise2Noise, Noise2Void)."""
        return None

    def build_datasets(self, train_pairs: Sequence[Any], val_pairs: Sequence[Any],
                       augment_on_device: bool = False) -> Any:
        """Patches with normalized targets; the normalization is remembered for :meth:`model_spec`."""
        from .data import restoration_datasets

        data, self.target_norm = restoration_datasets(self.cfg, self, train_pairs, val_pairs,
                                                      self.denoising_settings())
        return data

    def model_spec(self, in_channels: int) -> dict[str, Any]:
        from ...models.unet import unet_spec

        expected = self.input_channels()
        if expected is not None and in_channels != expected:
            raise InputError(None, f"training images have {in_channels} channels, expected {expected}")
        tcfg = self.cfg["train"]
        spec = unet_spec(tcfg["model"], self.ndim, in_channels, self.out_channels(), self.network_voxel_size(),
                         tcfg["patch_size"])
        super().model_spec(in_channels)  # checks the patch against the network's divisor
        spec["residual"] = self.residual(in_channels)
        spec["target_normalization"] = self.target_norm or identity_normalization(self.out_channels())
        return spec

    def loss(self) -> torch.nn.Module:
        from ...training.losses import RestorationLoss

        weights = self.cfg["train"]["loss"]
        settings = self.denoising_settings()
        masked = settings is not None and settings["mode"] == "noise2void"
        try:
            return RestorationLoss(weights["l1"], weights["l2"], weights["ssim"], masked=masked)
        except ValueError as exc:
            raise ConfigError("train.loss", str(exc)) from exc

    # ------------------------------------------------------------------ prediction
    def for_model(self, meta: dict[str, Any]) -> RestorationTask:
        """This task with the target normalization stored in the model's checkpoint."""
        spec = meta.get("model", {})
        if "target_normalization" not in spec:
            raise InputError(None, f"the model is not a {self.name} model (no target normalization in its checkpoint)")
        if int(spec["out_channels"]) != self.out_channels():
            raise InputError(None, f"the model has {spec['out_channels']} output channels, the data {self.out_channels()}")
        trained = copy.copy(self)
        trained.target_norm = {k: list(v) for k, v in spec["target_normalization"].items()}
        return trained

    def _norm(self) -> dict[str, list[float]]:
        return self.target_norm or identity_normalization(self.out_channels())

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Normalized prediction -> the targets' units."""
        import torch

        norm = self._norm()
        shape = (1, -1) + (1,) * (logits.ndim - 2)
        scale = torch.tensor(norm["scale"], dtype=logits.dtype, device=logits.device).reshape(shape)
        offset = torch.tensor(norm["offset"], dtype=logits.dtype, device=logits.device).reshape(shape)
        return logits * scale + offset

    def activation_spec(self) -> list[list[Any]]:
        norm = self._norm()
        return [["affine", float(s), float(o)] for s, o in zip(norm["scale"], norm["offset"])]

    def output_channel_names(self) -> list[str]:
        return self.channel_names()

    # ------------------------------------------------------------------ post-processing
    def postprocess(self, prediction: np.ndarray) -> np.ndarray:
        pp = self.cfg["postprocess"]["restoration"]
        return finish(prediction, pp["clip"], pp["dtype"])

    def write_output(self, path: str | Path, output: np.ndarray) -> None:
        write_restored(path, np.asarray(output), self.output_voxel_size())

    def read_output(self, path: str | Path) -> np.ndarray:
        return read_restored(path, self.ndim)

    def postprocess_large(self, pred_zarr: str | Path, out_path: str | Path, side: dict[str, str] | None,
                          image_path: str | None, segmented: tuple[str, list[str]] | None) -> None:
        pp = self.cfg["postprocess"]["restoration"]
        finish_blocks(pred_zarr, out_path, pp["clip"], pp["dtype"], self.output_voxel_size(), self.cfg["predict"])

    def evaluate_large(self, output_path: str | Path, label_path: str | Path) -> dict[str, float]:
        return metrics_blocks(output_path, label_path, self.ndim, self.cfg["data"]["axes"], self.channel_names(),
                              self.cfg["evaluate"]["restoration"]["data_range"], self.cfg["predict"])

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: np.ndarray, label: np.ndarray, path: str | Path | None = None) -> dict[str, float]:
        """PSNR, SSIM, NRMSE, Pearson r of the written output (its dtype) against the ground truth."""
        return restoration_metrics(np.asarray(output), np.asarray(label), self.channel_names(),
                                   self.cfg["evaluate"]["restoration"]["data_range"], path)

    def summarize(self, metrics: pd.DataFrame, details: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        return summarize_restoration(metrics)

    def report_picture(self, image: ReportImage, role: str, path: Path) -> Picture:
        """Input, restored output and target side by side (:mod:`.picture`)."""
        return restoration_picture(image, role, path, self.ndim, self.cfg["data"]["axes"],
                                   self.cfg["report"]["max_side"], self.main_metric)

    def for_outputs(self, pred_dir: str | Path) -> RestorationTask:
        """The task with as many channels as the outputs in ``pred_dir`` have (``biapipe evaluate``)."""
        if self.section["channels"] is not None:
            return self
        outputs = list_images(pred_dir)
        if not outputs:
            raise InputError(pred_dir, "no restored images")
        n = self.read_output(next(iter(outputs.values()))).shape[-1]
        value = [f"channel_{c}" for c in range(n)] if isinstance(self.demo_channels(), list) else n
        return self.__class__(self.cfg.with_value(f"targets.{self.name}.channels", value))


def probe_shape(path: str, ndim: int, axes: str | None) -> tuple[int, ...]:
    """Canonical (Z)YXC shape of an image from its header."""
    shape, dtype = probe(path)
    return canonical_shape(shape, dtype, ndim, path, axes)
