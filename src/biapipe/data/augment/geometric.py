"""Geometric transforms (rotation in YX, zoom, elastic deformation) as one sampling grid per
patch, applied to image and target with one ``F.grid_sample`` call.

The image is resampled bilinearly with reflection at the border, float targets (contours,
distances) the same way (a reflected image region then keeps its reflected target), class
maps with nearest neighbour and the ignore value ``-1`` outside the patch (nothing is known
there, so the loss skips it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Class-map value outside the resampled patch: excluded from the loss.
IGNORE_INDEX = -1


def sampling_grid(shape: Sequence[int], angle: float, scale: float, elastic: float, spacing: float, aniso: float,
                  gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``F.grid_sample`` grid (1, *shape, ndim) of one patch: where each output pixel reads from.

    Source = rotation/zoom about the patch centre (rotation in YX only: z is often
    coarser than YX, and a tilted z would mix slices) plus an elastic displacement;
    coordinates are normalised for ``align_corners=True`` (-1 and 1 are the centres of
    the border pixels, which is where reflection mirrors, as numpy's ``reflect`` does).
    The pixel-space affine map ``A`` becomes ``D^-1 A D`` in normalised coordinates, with
    ``D`` the half extents.
    """
    ndim = len(shape)
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    pixel = torch.eye(ndim, dtype=torch.float64) / scale  # (Z)YX order
    pixel[-2:, -2:] = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) / scale
    half = torch.tensor([max(n - 1, 1) / 2 for n in shape], dtype=torch.float64)
    normalised = pixel * half[None, :] / half[:, None]
    grid = _linear_grid(shape, normalised.tolist(), device)
    if elastic > 0:
        field = elastic_field(shape, elastic, spacing, aniso, gen, device) / half.to(device, torch.float32).view(
            -1, *([1] * ndim))
        grid = grid + field.flip(0).movedim(0, -1)[None]
    return grid


def _linear_grid(shape: Sequence[int], matrix: list[list[float]], device: torch.device) -> torch.Tensor:
    """``(1, *shape, ndim)`` grid of ``matrix @ p`` over normalised (Z)YX positions p, in (x, y[, z]) order.

    Each component is a sum of broadcast 1D ramps: a few passes over the patch, several
    times faster on CPU than ``F.affine_grid``'s batched matrix product.
    """
    ndim = len(shape)
    ramps = []
    for a, n in enumerate(shape):
        view = [1] * ndim
        view[a] = n
        ramps.append(torch.linspace(-1.0, 1.0, n, device=device).view(view) if n > 1
                     else torch.zeros(view, device=device))
    parts = []
    for row in reversed(matrix):  # x first
        comp = torch.zeros(tuple(shape), device=device)
        for a, coef in enumerate(row):
            if coef != 0.0:
                comp = comp + coef * ramps[a]
        parts.append(comp)
    return torch.stack(parts, dim=-1)[None]


def elastic_field(shape: Sequence[int], magnitude: float, spacing: float, aniso: float,
                  gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Smooth random displacements (ndim, *shape) in pixels: Gaussian control points every
    ``spacing`` pixels, interpolated (bicubic in 2D, trilinear in 3D). Cheaper than smoothing a
    per-pixel noise field and smooth by construction. z displacements are divided by the anisotropy,
    so the deformation is the same in physical units along every axis.
    """
    ndim = len(shape)
    step = [spacing / aniso if (ndim == 3 and a == 0) else spacing for a in range(ndim)]
    grid = [max(2, math.ceil(n / s) + 1) for n, s in zip(shape, step)]
    control = torch.randn((1, ndim, *grid), generator=gen, device=device) * magnitude
    mode = "bicubic" if ndim == 2 else "trilinear"
    field = F.interpolate(control, size=tuple(shape), mode=mode, align_corners=True)[0]
    if ndim == 3:
        field[0] = field[0] / aniso
    return field


def resample(x: torch.Tensor, grid: torch.Tensor, class_map: bool) -> torch.Tensor:
    """Sample N,C,(Z)YX at ``grid``: bilinear + reflection, or nearest + ignore outside for class maps.

    Class maps go through float32 shifted by one, so ignore (-1) becomes 0 and the zero
    padding of ``grid_sample`` marks outside pixels as ignored; integers below 2**24 are
    exact in float32.
    """
    if class_map:
        shifted = (x - IGNORE_INDEX).to(torch.float32)
        out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)
        return out.round().to(x.dtype) + IGNORE_INDEX
    return F.grid_sample(x.to(torch.float32), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=True).to(x.dtype)
