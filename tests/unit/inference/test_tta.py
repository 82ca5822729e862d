"""Test-time augmentation: every transform is undone exactly, and equivariant models are unchanged by it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from biapipe.core.config import defaults
from biapipe.inference.predict import predict_image
from biapipe.inference.tta import transforms, tta_forward, wrap


def test_eight_transforms_in_2d_sixteen_in_3d_all_distinct() -> None:
    for ndim, n in ((2, 8), (3, 16)):
        ts = transforms(ndim)
        assert len(ts) == n and ts[0].flips == () and ts[0].k == 0
        x = torch.arange(5 * 5 * 3 ** (ndim - 2), dtype=torch.float32).reshape(1, 1, *([3] * (ndim - 2)), 5, 5)
        images = {tuple(t.apply(x).flatten().tolist()) for t in ts}
        assert len(images) == n  # no two transforms give the same image


@pytest.mark.parametrize("shape", [(1, 2, 6, 10), (2, 1, 4, 6, 10)])
def test_each_inverse_is_exact_even_for_non_square_tiles(shape: tuple) -> None:
    x = torch.randn(shape)
    for t in transforms(len(shape) - 2):
        assert torch.equal(t.invert(t.apply(x)), x)


def test_tta_of_a_non_equivariant_map_matches_numpy_reference() -> None:
    """A position-dependent map: each prediction is correct only if its inverse is the right one."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x)
        return x * ramp + torch.cumsum(x, dim=-2)

    x = torch.randn(1, 1, 6, 8)
    expected = np.zeros((6, 8))
    arr = x[0, 0].numpy()
    for k in range(4):
        for flip in (False, True):
            a = arr[:, ::-1] if flip else arr
            a = np.rot90(a, k)
            y = a * np.arange(a.shape[-1]) + np.cumsum(a, axis=0)
            y = np.rot90(y, -k)
            expected += y[:, ::-1] if flip else y
    np.testing.assert_allclose(tta_forward(forward, x)[0, 0].numpy(), expected / 8, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tta_forward(forward, x), forward(x))  # and it is not the plain prediction


def symmetric_conv(ndim: int, channels: int = 2) -> nn.Module:
    """A 3x3(x3) convolution whose kernel is invariant under flips and transposition: equivariant."""
    conv_cls = nn.Conv2d if ndim == 2 else nn.Conv3d
    conv = conv_cls(1, channels, 3, padding=1)
    with torch.no_grad():
        grid = torch.stack(torch.meshgrid(*[torch.arange(3.0) - 1] * ndim, indexing="ij"))
        dist = (grid**2).sum(0)  # depends only on the distance to the centre
        for c in range(channels):
            conv.weight[c, 0] = torch.exp(-dist * (c + 1))
    return conv.eval()


@pytest.mark.parametrize("ndim", [2, 3])
def test_tta_of_an_equivariant_model_is_the_plain_prediction(ndim: int) -> None:
    torch.manual_seed(0)
    model = symmetric_conv(ndim)
    x = torch.randn(2, 1, *([6] * (ndim - 2)), 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(tta_forward(model, x), model(x), atol=1e-5, rtol=1e-5)
        pointwise = nn.Conv2d(1, 3, 1) if ndim == 2 else nn.Conv3d(1, 3, 1)
        torch.testing.assert_close(wrap(pointwise)(x), pointwise(x), atol=1e-6, rtol=1e-6)
        assert wrap(pointwise, enabled=False) is pointwise


ACTIVATIONS = {
    "class probabilities": lambda y: torch.softmax(y, 1),
    "foreground and contour": torch.sigmoid,
    "signed distance": lambda y: y.clamp(-1, 1),
    "distance": lambda y: y.clamp(0, 1),
}


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
@pytest.mark.parametrize("mode", ["tiled", "whole"])
def test_predict_with_tta_is_exact_for_every_target_kind(kind: str, mode: str) -> None:
    """Through the predict hook, with non-square tiles: an equivariant model gives the same maps."""
    torch.manual_seed(1)
    model = symmetric_conv(2, channels=3)
    image = np.random.default_rng(0).random((40, 52, 1)).astype(np.float32)
    cfg = defaults("predict", mode=mode, tile_size=[32, 48], overlap=0.25, batch_size=2, threads=1)
    plain = predict_image(model, image, cfg, ACTIVATIONS[kind], 4, "cpu")
    tta = predict_image(model, image, {**cfg, "tta": True}, ACTIVATIONS[kind], 4, "cpu")
    np.testing.assert_allclose(tta, plain, atol=1e-5, rtol=1e-5)


def test_predict_with_tta_differs_for_a_model_that_is_not_equivariant() -> None:
    torch.manual_seed(2)
    model = nn.Conv2d(1, 1, 3, padding=1).eval()  # random kernel: not symmetric
    image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    cfg = defaults("predict", mode="whole", threads=1)
    plain = predict_image(model, image, cfg, torch.sigmoid, 1, "cpu")
    tta = predict_image(model, image, {**cfg, "tta": True}, torch.sigmoid, 1, "cpu")
    assert np.abs(tta - plain).max() > 1e-3
    # the average of the 8 symmetric versions of the kernel is what TTA computes away from the border
    with torch.no_grad():
        kernel = model.weight[0, 0]
        sym = torch.stack([torch.rot90(torch.flip(kernel, [1]) if f else kernel, k) for k in range(4) for f in (0, 1)])
        expected_logit = nn.functional.conv2d(torch.from_numpy(image[None, None, :, :, 0]), sym[:, None], padding=1)
        expected = torch.sigmoid(expected_logit + model.bias).mean(1)[0].numpy()
    np.testing.assert_allclose(tta[1:-1, 1:-1, 0], expected[1:-1, 1:-1], atol=1e-5)
