"""Augmented training samples written out to be looked at (``train.augment.debug_samples``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.imageio import atomic_path, write_tiff


def write_augment_samples(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], folder: str | Path) -> list[Path]:
    """Write augmented (image, target) C(Z)YX pairs as (Z)YXC TIFFs plus ``montage.png``.

    For looking at what the network is trained on: a wrong range or a misaligned target
    shows at a glance.
    """
    folder = Path(folder)
    written = []
    for i, (image, target) in enumerate(pairs):
        for name, arr in (("image", image), ("target", target)):
            if not _is_map(arr, image):
                continue  # a class index, shown in the montage's title
            path = folder / f"sample_{i:02d}_{name}.tif"
            write_tiff(path, np.moveaxis(arr.detach().cpu().numpy(), 0, -1))
            written.append(path)
    montage = folder / "montage.png"
    with atomic_path(montage) as tmp:
        _montage_figure(pairs).savefig(tmp, format="png")
    written.append(montage)
    return written


def _montage_figure(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """One row per sample: image channel 0 and every target channel (middle z slice in 3D)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 + max(int(t.shape[0]) if _is_map(t, i) else 0 for i, t in pairs)
    fig = Figure(figsize=(2 * cols, 2 * len(pairs)), dpi=80)
    FigureCanvasAgg(fig)
    for row, (image, target) in enumerate(pairs):
        if _is_map(target, image):
            panels = [("image", image[0])] + [(f"target {c}", target[c]) for c in range(target.shape[0])]
        else:
            panels = [(f"class {int(target.reshape(-1)[0])}", image[0])]
        for col, (title, arr) in enumerate(panels):
            plane = arr.detach().cpu().float().numpy()
            if plane.ndim == 3:
                plane = plane[plane.shape[0] // 2]
            ax = fig.add_subplot(len(pairs), cols, row * cols + col + 1)
            ax.imshow(plane, cmap="gray" if col == 0 else "viridis", interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def _is_map(target: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether a target is a map over the image's pixels (not a class index)."""
    return target.ndim == image.ndim
