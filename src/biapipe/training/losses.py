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


class ClassedLoss(nn.Module):
    """``maps`` on the first ``n_maps`` channels plus ``class_weight`` times a soft cross-entropy
    over the remaining (class) channels, on the pixels whose class target sums to more than 0
    (objects; tasks/instance/classes.py): -sum_k t_k log softmax_k, weighted by sum_k t_k
    (a patch without objects adds 0)."""

    def __init__(self, maps: nn.Module, n_maps: int, class_weight: float = 1.0) -> None:
        super().__init__()
        self.maps = maps
        self.n_maps = int(n_maps)
        self.class_weight = float(class_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = self.n_maps
        total = self.maps(logits[:, :k], target[:, :k])
        soft = target[:, k:].to(logits.dtype)
        weight = soft.sum(dim=1)
        nll = -(soft * F.log_softmax(logits[:, k:], dim=1)).sum(dim=1)
        return total + self.class_weight * nll.sum() / weight.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- restoration

#: SSIM constants for data in a unit range (Wang et al., 2004): K1 = 0.01, K2 = 0.03.
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2
#: Gaussian window of SSIM: sigma 1.5 pixels, truncated at 3.5 sigma (an 11-pixel window).
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5


def _gaussian_filter(x: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Separable Gaussian smoothing of N,C,(Z)YX per channel, valid part only (no padding:
    SSIM is averaged where the window fits, like scikit-image's)."""
    ndim = x.ndim - 2
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    for axis in range(ndim):
        shape = [channels, 1] + [1] * ndim
        shape[2 + axis] = kernel.numel()
        x = conv(x, kernel.reshape(shape), groups=channels)
    return x


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> torch.Tensor:
    """SSIM per pixel and channel of two N,C,(Z)YX tensors in a unit range (Gaussian window).
    An axis shorter than the window (thin 3D patches) uses a window cut to its length."""
    radius = min([radius] + [(n - 1) // 2 for n in x.shape[2:]])
    blur = lambda t: _gaussian_filter(t, sigma, radius)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))


class RestorationLoss(nn.Module):
    """``l1 * MAE + l2 * MSE + ssim * (1 - SSIM)`` of a restored image against its target, both
    in the normalized target units (so the weights mean the same for any dataset).

    With ``masked`` the target carries one more channel, a 0/1 mask of the pixels that are
    scored (Noise2Void's blind spots): MAE and MSE are then means over those pixels only, and
    SSIM, which needs whole neighbourhoods, is not allowed.
    """

    def __init__(self, l1: float = 0.0, l2: float = 1.0, ssim: float = 0.0, masked: bool = False) -> None:
        super().__init__()
        if l1 <= 0 and l2 <= 0 and ssim <= 0:
            raise ValueError("a restoration loss needs a positive weight for l1, l2 or ssim")
        if masked and ssim > 0:
            raise ValueError("SSIM cannot score single masked pixels; set its weight to 0")
        self.l1, self.l2, self.ssim, self.masked = float(l1), float(l2), float(ssim), bool(masked)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(pred.dtype)
        if self.masked:
            target, mask = target[:, :-1], target[:, -1:]
            if target.shape != pred.shape:
                raise ValueError(f"prediction {tuple(pred.shape)} and masked target {tuple(target.shape)} differ")
            weight = mask.expand_as(pred)
            count = weight.sum().clamp_min(1.0)
            diff = (pred - target) * weight
            return (self.l1 * diff.abs().sum() + self.l2 * (diff * diff).sum()) / count
        if target.shape != pred.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        total = pred.new_zeros(())
        if self.l1:
            total = total + self.l1 * F.l1_loss(pred, target)
        if self.l2:
            total = total + self.l2 * F.mse_loss(pred, target)
        if self.ssim:
            total = total + self.ssim * (1 - ssim_map(pred, target).mean())
        return total
