"""Training patches of self-supervised pre-training: the restoration workflows' patches (clean
image, normalized target), each input corrupted afresh per epoch by the pretext
(:mod:`.pretext`), so the network never sees the same hidden blocks or noise twice."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ...data.patches import PathPair, seed_entropy
from ..restoration.data import _Wrapped, restoration_datasets
from .pretext import TRAIN_STREAM, VAL_STREAM


def pretext_datasets(cfg: Any, task: Any, train_pairs: list[PathPair],
                     val_pairs: list[PathPair]) -> tuple[Any, dict[str, list[float]]]:
    """(patch data whose inputs are corrupted, the target normalization)."""
    data, norm = restoration_datasets(cfg, task, train_pairs, val_pairs, None)
    seed = seed_entropy(cfg["seed"])
    train = PretextPatches(data.train, task, seed, TRAIN_STREAM)
    val = PretextPatches(data.val, task, seed, VAL_STREAM) if data.val is not None else None
    return replace(data, train=train, val=val), norm


class PretextPatches(_Wrapped):
    """Items: (corrupted patch, target) for ``degraded``; (patch with hidden blocks, [target,
    0/1 mask of the hidden pixels]) for ``masked``, which the masked restoration loss scores."""

    def __init__(self, inner: Any, task: Any, seed: int, stream: int) -> None:
        super().__init__(inner, seed)
        self.task, self.stream = task, stream

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.inner[i][:2]
        rng = np.random.default_rng([self.seed, self.stream, self.epoch, int(i)])
        x = np.moveaxis(image.numpy(), 0, -1)  # C(Z)YX -> (Z)YXC
        corrupted, hidden = self.task.corrupt(x, rng)
        out = torch.from_numpy(np.ascontiguousarray(np.moveaxis(corrupted, -1, 0)))
        if hidden is None:
            return out, target
        mask = torch.from_numpy(hidden[np.newaxis].astype(np.float32))
        return out, torch.cat([target, mask])

