"""Loss values against hand-computed numbers, ignore handling and numerical stability."""

from __future__ import annotations

import math

import pytest
import torch

from biapipe.training.losses import (
    BinaryChannelLoss,
    CrossEntropyDiceLoss,
    PerChannelLoss,
)


def pixels(logits: list[list[float]], target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels as a 1x(n) image: logits (n, K) -> (1, K, 1, n); target -> (1, 1, 1, n)."""
    lg = torch.tensor(logits, dtype=torch.float32).T.reshape(1, len(logits[0]), 1, len(logits))
    tg = torch.tensor(target, dtype=torch.long).reshape(1, 1, 1, len(target))
    return lg, tg


def test_cross_entropy_on_two_pixels() -> None:
    logits, target = pixels([[2.0, 0.0], [0.0, 1.0]], [0, 1])
    loss = CrossEntropyDiceLoss(ce_weight=1.0, dice_weight=0.0)(logits, target)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand_foreground_only_and_all_classes() -> None:
    # zero logits: p = 0.5 for both classes everywhere; target [1, 0, 0, 0]
    logits, target = pixels([[0.0, 0.0]] * 4, [1, 0, 0, 0])
    fg = CrossEntropyDiceLoss(ce_weight=0.0, dice_weight=1.0)(logits, target)
    # class 1: I = 0.5, sum p = 2, sum t = 1 -> 1 - (2*0.5 + 1) / (3 + 1) = 0.5
    assert fg.item() == pytest.approx(0.5, rel=1e-6)
    both = CrossEntropyDiceLoss(ce_weight=0.0, dice_weight=1.0, include_background=True)(logits, target)
    # class 0: I = 1.5, sum p = 2, sum t = 3 -> 1 - 4/6 = 1/3; mean with 0.5
    assert both.item() == pytest.approx((0.5 + 1 / 3) / 2, rel=1e-6)


def test_perfect_logits_give_zero_loss() -> None:
    target = torch.randint(0, 3, (2, 1, 8, 8))
    logits = (torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 2 - 1) * 50
    loss = CrossEntropyDiceLoss()(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_ignored_pixels_change_neither_term() -> None:
    logits, target = pixels([[2.0, 0.0], [0.0, 1.0], [0.3, -0.4]], [0, 1, 1])
    reference = CrossEntropyDiceLoss()(logits, target)
    wild, with_ignored = pixels([[2.0, 0.0], [0.0, 1.0], [0.3, -0.4], [-30.0, 80.0], [5.0, -9.0]],
                                [0, 1, 1, -1, -1])
    wild.requires_grad_(True)
    loss = CrossEntropyDiceLoss()(wild, with_ignored)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert torch.all(wild.grad[..., 3:] == 0)  # no gradient reaches ignored pixels
    assert torch.any(wild.grad[..., :3] != 0)


def test_all_ignored_is_zero_and_backpropagates() -> None:
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = CrossEntropyDiceLoss()(logits, torch.full((1, 1, 4, 4), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_class_out_of_range_is_an_error() -> None:
    logits, target = pixels([[0.0, 0.0], [0.0, 0.0]], [0, 2])
    with pytest.raises(ValueError, match="outside 0..1"):
        CrossEntropyDiceLoss()(logits, target)


def test_huge_logits_stay_finite_3d_and_without_channel_axis() -> None:
    logits = (torch.randn(2, 3, 4, 4, 4) * 1e4).requires_grad_(True)
    target = torch.randint(0, 3, (2, 4, 4, 4))
    loss = CrossEntropyDiceLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_per_channel_kinds_and_weights() -> None:
    logits = torch.tensor([0.0, 2.0, 1.5, -1.0]).reshape(1, 4, 1, 1)
    target = torch.tensor([1.0, 0.5, 1.0, 1.0]).reshape(1, 4, 1, 1)
    loss = PerChannelLoss(["bce", "l1", "mse", "bce_dice"], weights=[2.0, 1.0, 0.5, 1.0])(logits, target)
    p = 1 / (1 + math.exp(1.0))  # sigmoid(-1)
    bce_dice = -math.log(p) + (1 - (2 * p + 1) / (p + 1 + 1))
    expected = 2.0 * math.log(2) + 1.0 * 1.5 + 0.5 * 0.25 + bce_dice
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_binary_channel_loss_is_stable_for_confident_mistakes() -> None:
    logits = torch.tensor([200.0, -200.0]).reshape(1, 2, 1, 1).requires_grad_(True)
    target = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    loss = BinaryChannelLoss(2, dice_weight=0.0)(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(400.0, rel=1e-6)  # bce = |logit| per channel, summed
    assert torch.isfinite(logits.grad).all()


def test_per_channel_rejects_unknown_kind_and_mismatch() -> None:
    with pytest.raises(ValueError, match="unknown channel loss"):
        PerChannelLoss(["bce", "focal"])
    with pytest.raises(ValueError, match="weights"):
        PerChannelLoss(["bce"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="do not match"):
        PerChannelLoss(["bce"])(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
