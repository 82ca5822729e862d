"""The contract every workflow (semantic, instance, detection, ...) fulfils.

Training and prediction are written once against this interface; a new workflow adds
a Task subclass (targets, loss, activation, post-processing, metrics) and nothing in
``train.py`` or ``predict.py`` changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where used: parsing the workflow must not pay for it
    import torch


class Task(ABC):
    """Workflow-specific behaviour, configured by the validated experiment config."""

    #: value of the config's ``workflow`` key
    name: ClassVar[str]
    #: folder under results/{experiment}/ holding post-processed outputs
    output_dir: ClassVar[str]
    #: file suffix of one post-processed output
    output_suffix: ClassVar[str]

    #: extra per-image outputs of post-processing: name -> path under results/{experiment}/ with {image}
    side_outputs: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.ndim: int = cfg["ndim"]

    # ------------------------------------------------------------------ ground truth
    def read_label(self, path: str | Path, image_shape: tuple[int, ...]) -> Any:
        """Read one ground-truth file for an image of spatial shape ``image_shape``.

        Label images by default; workflows whose ground truth is a table (points) override
        this. Raises InputError naming ``path`` when it does not fit the image.
        """
        from ..errors import InputError
        from ..imageio import read_label

        label = read_label(path, self.ndim)
        if tuple(label.shape) != tuple(image_shape):
            raise InputError(path, f"label shape {tuple(label.shape)} does not match its image of shape {tuple(image_shape)}")
        return label

    # ------------------------------------------------------------------ training side
    @abstractmethod
    def out_channels(self) -> int:
        """Number of channels the model must output (logits)."""

    @abstractmethod
    def make_targets(self, label: Any, path: str | Path | None = None) -> np.ndarray:
        """Turn what read_label returned (a (Z)YX label image by default) into the (Z)YXC training target stored in targets/{image}.zarr.

        Integer targets (class maps) use -1 for ignored pixels; float targets are per-channel maps.
        Raises InputError naming ``path`` when the labels do not fit the task (e.g. class out of range).
        """

    @abstractmethod
    def foreground(self, target: np.ndarray) -> np.ndarray:
        """Boolean (Z)YX mask of pixels worth centring a training patch on."""

    @abstractmethod
    def loss(self) -> torch.nn.Module:
        """Loss taking (logits N,C,(Z)YX, target N,Ct,(Z)YX) and returning a scalar."""

    # ------------------------------------------------------------------ prediction side
    @abstractmethod
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Map logits N,C,(Z)YX to the quantities that are blended across tiles and stored."""

    @abstractmethod
    def postprocess(self, prediction: np.ndarray) -> Any:
        """Turn a (Z)YXC prediction into the final output (mask, labels, points table)."""

    def write_side_outputs(self, paths: dict[str, str], output: Any, image: np.ndarray | None) -> None:
        """Write the files named in ``side_outputs`` (e.g. a per-object table); none by default."""

    # ------------------------------------------------------------------ threshold tuning
    def tuning_file(self) -> str | None:
        """Path of the tuned-thresholds JSON that post-processing needs, or None if it needs none."""
        return None

    def tune_files(self, prediction_paths: Any, label_paths: Any, out_json: Any = None) -> dict[str, Any]:
        """Search post-processing thresholds on validation predictions; write them to ``out_json``."""
        raise NotImplementedError(f"workflow '{self.name}' has no threshold tuning")

    @abstractmethod
    def write_output(self, path: str | Path, output: Any) -> None:
        """Write a post-processed output atomically."""

    @abstractmethod
    def read_output(self, path: str | Path) -> Any:
        """Read back what write_output wrote."""

    # ------------------------------------------------------------------ metrics
    @abstractmethod
    def evaluate(self, output: Any, label: Any) -> dict[str, float]:
        """Metrics of one image: post-processed output against what read_label returned."""

    def write_details(self, out_csv_path: str | Path, output: Any, label: Any) -> None:
        """Write per-image details beside the metrics file ``out_csv_path`` (e.g. which point
        matched which, for inspection); none by default. Must write atomically (imageio)."""

    def summarize(self, metrics: pd.DataFrame) -> pd.DataFrame:
        """Dataset-level figures from the per-image table (default: mean of numeric columns)."""
        numeric = metrics.select_dtypes("number")
        row = {"n_images": len(metrics)}
        row.update({f"mean_{c}": float(numeric[c].mean()) for c in numeric.columns})
        return pd.DataFrame([row])
