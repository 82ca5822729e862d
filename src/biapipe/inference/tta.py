"""Test-time augmentation: predict under flips and 90-degree rotations, undo each, average.

The transforms are the symmetries of the pixel grid that need no interpolation: the 8
elements of the dihedral group of the square in YX (4 rotations, each with or without
an x flip; a y flip is a rotation by 180 plus an x flip), and in 3D the same 8 with and
without a z flip, 16 in all. Each is exactly invertible, so a pixel's averaged value
comes only from predictions of that very pixel.

Every target biapipe predicts (class probabilities, foreground, contour, distances,
signed distances, detection heat maps) is a scalar per pixel, so undoing the geometric
transform is the whole inverse: no component has to be rotated (a vector field such as
a flow would need that). What is averaged is the activated output, i.e. probabilities,
not logits.

Rotations by 90 degrees swap Y and X; a network accepts that as long as both sizes are
multiples of its divisor, which holds because YX divisors are always equal (only z may
be pooled fewer times).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """Flip the listed spatial axes (0 = first spatial axis), then rotate YX by ``k`` quarter turns."""

    flips: tuple[int, ...]
    k: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform an N,C,(Z)YX tensor."""
        dims = [a + 2 for a in self.flips]
        if dims:
            x = torch.flip(x, dims)
        return torch.rot90(x, self.k, dims=(-2, -1)) if self.k else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply` on an N,C',(Z)YX output (rotate back, then flip back)."""
        if self.k:
            y = torch.rot90(y, -self.k, dims=(-2, -1))
        dims = [a + 2 for a in self.flips]
        return torch.flip(y, dims) if dims else y


def transforms(spatial_ndim: int) -> list[Transform]:
    """The 8 (2D) or 16 (3D) distinct grid symmetries used; the identity comes first."""
    if spatial_ndim not in (2, 3):
        raise ValueError(f"test-time augmentation needs 2 or 3 spatial axes, got {spatial_ndim}")
    x_axis = spatial_ndim - 1
    z_options = [(), (0,)] if spatial_ndim == 3 else [()]
    out = []
    for z_flip, k, x_flip in itertools.product(z_options, range(4), [(), (x_axis,)]):
        out.append(Transform(flips=z_flip + x_flip, k=k))
    return out


def tta_forward(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    """Mean of ``invert(forward(apply(x)))`` over all transforms; x is N,C,(Z)YX.

    ``forward`` maps a batch to activated outputs of the same spatial shape. Outputs are
    summed in float32 in a fixed order, so the result is deterministic.
    """
    total: torch.Tensor | None = None
    ts = transforms(x.ndim - 2)
    for t in ts:
        y = t.invert(forward(_like(t.apply(x), x))).float()
        total = y if total is None else total + y
    assert total is not None
    return total / len(ts)


def _like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keep the memory format the caller chose (channels-last on CPU is much faster)."""
    if reference.ndim == 4 and reference.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    if reference.ndim == 5 and reference.is_contiguous(memory_format=torch.channels_last_3d):
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.contiguous()


def wrap(forward: Forward, enabled: bool = True) -> Forward:
    """``forward`` with test-time augmentation when ``enabled`` (the hook predict uses)."""
    if not enabled:
        return forward
    return lambda x: tta_forward(forward, x)
