"""Losses for class maps and for per-channel maps.

Both work on logits, never on probabilities, so the log terms come from
``log_softmax`` / ``binary_cross_entropy_with_logits`` and stay finite for any
logit magnitude. Soft Dice is computed over the whole batch (sums over samples
and pixels) rather than per sample: a patch without foreground then does not
produce a 0/0 Dice that dominates the batch, which matters because random
patches often miss small structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Added to numerator and denominator of Dice; keeps 0/0 at 1 (an absent class predicted absent).
DICE_SMOOTH = 1.0

CHANNEL_KINDS = ("bce", "bce_dice", "dice", "l1", "mse")


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None = None,
                   smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """1 - soft Dice per channel, summed over batch and space; returns a (C,) tensor.

    ``mask`` (N,1,...) zeroes ignored pixels in both the prediction and the target, so
    they count neither as hits nor as false positives.
    """
    if mask is not None:
        probs = probs * mask
        onehot = onehot * mask
    dims = [0] + list(range(2, probs.ndim))
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def _as_class_map(target: torch.Tensor, spatial_ndim: int) -> torch.Tensor:
    """Accept N,1,(Z)YX or N,(Z)YX class maps; return N,(Z)YX long."""
    if target.ndim == spatial_ndim + 2:
        if target.shape[1] != 1:
            raise ValueError(f"class-map target must have one channel, got shape {tuple(target.shape)}")
        target = target[:, 0]
    return target.long()


class CrossEntropyDiceLoss(nn.Module):
    """``ce_weight * CE + dice_weight * (1 - mean soft Dice)`` for class maps.

    Dice is averaged over the foreground classes 1..K-1 only (``include_background``
    False, the default): the background usually covers most pixels, so its Dice is
    close to 1 whatever the network does and would only dilute the signal from the
    structures being segmented; cross-entropy already scores the background.
    Pixels equal to ``ignore_index`` are excluded from both terms.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, ignore_index: int = -1,
                 include_background: bool = False) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = int(ignore_index)
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = _as_class_map(target, logits.ndim - 2)
        valid = classes != self.ignore_index
        n_valid = valid.sum()
        if n_valid == 0:
            # keep the graph connected so backward() works on a fully ignored batch
            return logits.sum() * 0.0
        k = logits.shape[1]
        if (valid & ((classes < 0) | (classes >= k))).any():
            raise ValueError(f"target holds class values outside 0..{k - 1} (and not the ignore value "
                             f"{self.ignore_index}) for a model with {k} output channels")
        mask = valid.unsqueeze(1).to(logits.dtype)
        # one-hot products instead of F.cross_entropy/gather: their CUDA kernels use atomic
        # adds, which would make GPU runs non-repeatable
        onehot = F.one_hot(classes.clamp(0, k - 1) * valid, k).movedim(-1, 1).to(logits.dtype) * mask
        log_probs = torch.log_softmax(logits, dim=1)
        total = logits.new_zeros(())
        if self.ce_weight:
            total = total + self.ce_weight * -(log_probs * onehot).sum() / n_valid
        if self.dice_weight:
            per_class = soft_dice_loss(log_probs.exp(), onehot, mask)
            first = 0 if self.include_background or k == 1 else 1
            total = total + self.dice_weight * per_class[first:].mean()
        return total


class PerChannelLoss(nn.Module):
    """A loss for N,C,... logits against float N,C,... targets, one kind per channel.

    Kinds: ``bce`` (binary cross-entropy on the sigmoid), ``dice`` (soft Dice on the
    sigmoid), ``bce_dice`` (``bce_weight * bce + dice_weight * dice``), ``l1`` and ``mse``
    (regression on the raw output, e.g. distance maps). The total is the weighted
    sum of the channel losses, each of which is a mean over pixels, so a channel's
    weight is its share independent of image size.
    """

    def __init__(self, kinds: Sequence[str], weights: Sequence[float] | None = None,
                 bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        unknown = [k for k in kinds if k not in CHANNEL_KINDS]
        if unknown:
            raise ValueError(f"unknown channel loss {unknown[0]!r} (choose from {', '.join(CHANNEL_KINDS)})")
        weights = [1.0] * len(kinds) if weights is None else [float(w) for w in weights]
        if len(weights) != len(kinds):
            raise ValueError(f"{len(kinds)} channel kinds but {len(weights)} weights")
        self.kinds = list(kinds)
        self.weights = weights
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.kinds) or target.shape != logits.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match "
                             f"{len(self.kinds)} channel losses")
        target = target.to(logits.dtype)
        total = logits.new_zeros(())
        for c, (kind, weight) in enumerate(zip(self.kinds, self.weights)):
            if weight:
                total = total + weight * self._channel(kind, logits[:, c:c + 1], target[:, c:c + 1])
        return total

    def _channel(self, kind: str, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if kind == "l1":
            return F.l1_loss(logit, target)
        if kind == "mse":
            return F.mse_loss(logit, target)
        loss = logit.new_zeros(())
        if kind in ("bce", "bce_dice"):
            bce = F.binary_cross_entropy_with_logits(logit, target)
            loss = loss + (bce if kind == "bce" else self.bce_weight * bce)
        if kind in ("dice", "bce_dice"):
            dice = soft_dice_loss(torch.sigmoid(logit), target)[0]
            loss = loss + (dice if kind == "dice" else self.dice_weight * dice)
        return loss


class BinaryChannelLoss(PerChannelLoss):
    """``bce_dice`` on every one of ``channels`` binary maps (masks, contours, seeds)."""

    def __init__(self, channels: int, weights: Sequence[float] | None = None,
                 bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__(["bce_dice"] * channels, weights, bce_weight, dice_weight)


class OffsetLoss(nn.Module):
    """``loss(logits + offset, target)``: the same constant the detection activation adds."""

    def __init__(self, loss: nn.Module, offset: float) -> None:
        super().__init__()
        self.inner = loss
        self.offset = float(offset)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits + self.offset, target)
