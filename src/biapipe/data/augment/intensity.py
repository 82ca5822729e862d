"""Intensity transforms of one C(Z)YX image, in the order light meets them: optics (blur),
detector (Poisson and Gaussian noise), display (brightness, contrast, gamma), occlusion
(cutout). Targets are never touched."""

from __future__ import annotations

import math

import torch

#: Gaussian kernels are cut at this many sigmas.
BLUR_TRUNCATE = 3.0


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * std


def brightness(x: torch.Tensor, shift: float) -> torch.Tensor:
    return x + shift


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the deviation from each image's mean."""
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (x - mean) * factor + mean


def _channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(1, x.ndim))
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return lo, (hi - lo).clamp_min(1e-8)


def gamma_correct(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``u ** gamma`` on each channel mapped to [0, 1] and back (nnU-Net's way): the range is kept,
    so normalized images with negative values work too."""
    lo, span = _channel_range(x)
    return ((x - lo) / span).clamp(0, 1).pow(gamma) * span + lo


def poisson_noise(x: torch.Tensor, peak: float, gen: torch.Generator) -> torch.Tensor:
    """Shot noise: each channel's range becomes ``peak`` photons, is sampled, and mapped back."""
    lo, span = _channel_range(x)
    counts = ((x - lo) / span).clamp_min(0) * peak
    return torch.poisson(counts, generator=gen) / peak * span + lo


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(BLUR_TRUNCATE * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def gaussian_blur(x: torch.Tensor, sigma: float, aniso: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of C(Z)YX with reflect borders.

    A weighted sum of shifted slices rather than a convolution: elementwise, so the
    result is the same on any number of threads (oneDNN convolutions need not be).
    z uses ``sigma / anisotropy`` and is skipped when that is below 0.3 pixels.
    """
    spatial = x.ndim - 1
    for axis in range(1, x.ndim):
        s = sigma / aniso if (spatial == 3 and axis == 1) else sigma
        if s < 0.3 or x.shape[axis] < 2:
            continue
        x = _blur_axis(x, gaussian_kernel(s).to(x.device), axis)
    return x


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    n = x.shape[axis]
    radius = (kernel.numel() - 1) // 2
    # reflect (mirror about the border pixel) indices, folded for kernels longer than the axis
    idx = torch.arange(-radius, n + radius, device=x.device)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - idx, idx)
    padded = x.index_select(axis, idx)
    out = torch.zeros_like(x)
    for i, w in enumerate(kernel.tolist()):
        out = out + w * padded.narrow(axis, i, n)
    return out


def cutout(x: torch.Tensor, holes: int, gen: torch.Generator, size: tuple[float, float] = (0.05, 0.25)) -> torch.Tensor:
    """Set ``holes`` random boxes (each edge a ``size`` fraction of the patch) to 0 in every channel."""
    x = x.clone()
    spatial = x.shape[1:]
    u = torch.rand((holes, 2, len(spatial)), generator=gen, device=gen.device).cpu().tolist()
    for hole in u:
        window = [slice(None)]
        for n, su, pu in zip(spatial, hole[0], hole[1]):
            edge = max(1, int(round(n * size[0] + (size[1] - size[0]) * su)))
            start = int(pu * (n - edge + 1))
            window.append(slice(start, start + edge))
        x[tuple(window)] = 0.0
    return x
