"""Augmentation applied consistently to an image patch and its target.

Two stages, because they have different costs and different exactness:

1. **Exact** transforms (flips along every axis, 90-degree rotations in YX) run in numpy
   in the data path. They move pixels without interpolation, so class maps stay
   integer and ignored pixels stay ignored.
2. **Interpolating and intensity** transforms (arbitrary YX rotation, scaling, elastic
   deformation; blur, Poisson and Gaussian noise, brightness, contrast, gamma, cutout)
   run in torch on a batch: one affine + elastic sampling grid per patch and a single
   ``F.grid_sample`` call for the batch. When training on CUDA this runs on the GPU
   after the batch is moved there; on CPU the same code runs per patch in the data
   path (so loader workers share the work).

Geometric transforms resample the image and the target with the same grid: the image
bilinearly with reflection at the border, float targets (contours, distances) the same
way (a reflected image region then keeps its reflected target, so the pair stays
consistent), class maps with nearest neighbour and the ignore value ``-1`` outside the
patch (nothing is known there, so the loss skips it). Intensity transforms touch the
image only.

Determinism: every random choice about *which* transform runs with *what* parameter is
drawn from the per-patch ``numpy.random.Generator`` (see :mod:`biapipe.patches`), always
the same number of draws whatever the outcome. Per-pixel randomness (noise, elastic
fields, cutout boxes) comes from a ``torch.Generator`` seeded by one of those draws, on
the device where the transform runs. So a patch is a pure function of
``(seed, epoch, index)``: CPU runs, resumed runs and loader workers see the same
patches; a CUDA run is repeatable too, but its noise differs from a CPU run's.

Defaults follow nnU-Net's (Isensee et al., 2021) probabilities: rotation 0.2, scaling
0.2 (0.7-1.4), Gaussian noise 0.1, blur 0.2 (sigma 0.5-1), brightness 0.15,
contrast 0.15 (0.75-1.25), gamma 0.3 (0.7-1.5); elastic deformation, Poisson noise and
cutout are off by default, as in nnU-Net v2 and BiaPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import ConfigError
from ...core.imageio import atomic_path, write_tiff

#: Class-map value outside the resampled patch: excluded from the loss.
IGNORE_INDEX = -1

#: Per-patch parameters, in the order of :meth:`AugmentDraw.to_tensor`.
DRAW_FIELDS = ("angle", "scale", "elastic", "blur", "poisson", "noise", "brightness", "contrast", "gamma",
               "cutout", "seed")

#: Gaussian kernels are cut at this many sigmas.
BLUR_TRUNCATE = 3.0

#: Seeds of the per-patch torch generators stay below 2**52, so they survive a float64 round trip.
_SEED_LIMIT = 2**52


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Augmenter:
    """Probabilities and ranges of every transform (``train.augment`` in the config).

    Arrays are C(Z)YX; the first axis is channels. Only correct for targets that are
    scalar per pixel (class maps, masks, distance maps): vector-valued targets (flows,
    offsets) would need their components rotated too.
    """

    flip: float = 0.5
    rot90: float = 0.5
    rotate: float = 0.2
    rotate_range: tuple[float, float] = (-180.0, 180.0)
    scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic: float = 0.0
    elastic_magnitude: tuple[float, float] = (2.0, 6.0)
    elastic_spacing: float = 32.0
    blur: float = 0.2
    blur_range: tuple[float, float] = (0.5, 1.0)
    poisson_noise: float = 0.0
    poisson_noise_range: tuple[float, float] = (10.0, 100.0)
    gaussian_noise: float = 0.1
    gaussian_noise_range: tuple[float, float] = (0.0, 0.1)
    brightness: float = 0.15
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    cutout: float = 0.0
    cutout_holes: tuple[int, int] = (1, 3)
    cutout_size: tuple[float, float] = (0.05, 0.25)
    #: z voxel size over YX voxel size: z displacements and z blur are divided by it
    anisotropy: float = 1.0
    debug_samples: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Augmenter:
        """Settings from ``train.augment`` (missing keys keep the defaults above) and ``data.voxel_size``."""
        aug = dict(cfg["train"]["augment"])
        known = {f.name for f in fields(cls)} - {"anisotropy"}
        values: dict[str, Any] = {}
        for key, value in aug.items():
            if key not in known:
                raise ConfigError(f"train.augment.{key}", "unknown augmentation key")
            values[key] = tuple(value) if isinstance(value, list) else value
        values["anisotropy"] = anisotropy(cfg.get("data", {}).get("voxel_size"))
        return cls(**values)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ConfigError(f"train.augment.{f.name}", f"must be [low, high] with low <= high, got {list(value)}")
        if self.scale_range[0] <= 0:
            raise ConfigError("train.augment.scale_range", "scale factors must be positive")
        if self.poisson_noise_range[0] <= 0:
            raise ConfigError("train.augment.poisson_noise_range", "peak photon counts must be positive")
        if self.cutout_holes[0] < 1:
            raise ConfigError("train.augment.cutout_holes", "at least one hole")

    def __call__(self, image: np.ndarray, target: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The exact stage only (flips, rot90); kept for callers that work in numpy."""
        return augment_pair(image, target, rng, self.flip, self.rot90)

    # ------------------------------------------------------------------ per-patch draws
    def draw(self, rng: np.random.Generator) -> AugmentDraw:
        """Parameters of the torch stage for one patch; always 21 draws, whatever is chosen."""
        apply = rng.random(10)
        u = rng.random(10)
        seed = int(rng.integers(0, _SEED_LIMIT))

        def pick(i: int, p: float, bounds: tuple[float, float], neutral: float) -> float:
            return _lerp(bounds, u[i]) if apply[i] < p else neutral

        return AugmentDraw(
            angle=pick(0, self.rotate, self.rotate_range, 0.0),
            scale=pick(1, self.scale, self.scale_range, 1.0),
            elastic=pick(2, self.elastic, self.elastic_magnitude, 0.0),
            blur=pick(3, self.blur, self.blur_range, 0.0),
            poisson=pick(4, self.poisson_noise, self.poisson_noise_range, 0.0),
            noise=pick(5, self.gaussian_noise, self.gaussian_noise_range, 0.0),
            brightness=pick(6, self.brightness, self.brightness_range, 0.0),
            contrast=pick(7, self.contrast, self.contrast_range, 1.0),
            gamma=pick(8, self.gamma, self.gamma_range, 1.0),
            cutout=float(int(_lerp((self.cutout_holes[0], self.cutout_holes[1] + 1), u[9]))
                         if apply[9] < self.cutout else 0),
            seed=float(seed),
        )

    # ------------------------------------------------------------------ batched torch stage
    def apply(self, image: torch.Tensor, target: torch.Tensor,
              draws: torch.Tensor | Sequence[AugmentDraw]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the torch stage to a batch (N,C,(Z)YX) on the batch's device.

        ``draws`` is one :class:`AugmentDraw` per sample, or their stacked ``to_tensor()``
        rows (what the data loader hands over when augmentation runs on the GPU).
        """
        rows = _as_draws(draws)
        if len(rows) != image.shape[0]:
            raise ValueError(f"{len(rows)} augmentation draws for a batch of {image.shape[0]}")
        gens = [_generator(int(d.seed), image.device) for d in rows]
        image, target = self._geometric(image, target, rows, gens)
        image = self._intensity(image, rows, gens)
        return image, target

    def _geometric(self, image: torch.Tensor, target: torch.Tensor, rows: list[AugmentDraw],
                   gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        picked = [i for i, d in enumerate(rows) if d.is_geometric]
        if not picked:
            return image, target
        spatial = tuple(image.shape[2:])
        grid = torch.cat([sampling_grid(spatial, rows[i], self.elastic_spacing, self.anisotropy, gens[i],
                                        image.device) for i in picked])
        index = torch.tensor(picked, device=image.device)
        image = image.clone()
        target = target.clone()
        image[index] = resample(image[index], grid, class_map=False)
        target[index] = resample(target[index], grid, class_map=not target.is_floating_point())
        return image, target

    def _intensity(self, image: torch.Tensor, rows: list[AugmentDraw], gens: list[torch.Generator]) -> torch.Tensor:
        if not any(d.is_intensity for d in rows):
            return image
        out = []
        for x, d, gen in zip(image, rows, gens):
            out.append(intensity(x, d, gen, self.anisotropy, self.cutout_size) if d.is_intensity else x)
        return torch.stack(out)


@dataclass(frozen=True)
class AugmentDraw:
    """The torch-stage parameters of one patch; neutral values mean "not applied"."""

    angle: float = 0.0  # YX rotation, degrees
    scale: float = 1.0  # zoom factor (> 1 magnifies)
    elastic: float = 0.0  # std of control-point displacements, YX pixels
    blur: float = 0.0  # Gaussian sigma, YX pixels
    poisson: float = 0.0  # peak photon count of the image range
    noise: float = 0.0  # std of additive Gaussian noise
    brightness: float = 0.0  # additive shift
    contrast: float = 1.0  # factor around the mean
    gamma: float = 1.0  # exponent on the image range
    cutout: float = 0.0  # number of boxes set to 0
    seed: float = 0.0  # of the per-patch torch generator (< 2**52, exact in float64)

    @property
    def is_geometric(self) -> bool:
        return self.angle != 0.0 or self.scale != 1.0 or self.elastic > 0.0

    @property
    def is_intensity(self) -> bool:
        return (self.blur > 0 or self.poisson > 0 or self.noise > 0 or self.brightness != 0
                or self.contrast != 1 or self.gamma != 1 or self.cutout > 0)

    @property
    def is_neutral(self) -> bool:
        return not (self.is_geometric or self.is_intensity)

    def to_tensor(self) -> torch.Tensor:
        """float64 row, so a batch of draws collates like any other tensor."""
        return torch.tensor([getattr(self, name) for name in DRAW_FIELDS], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, row: torch.Tensor) -> AugmentDraw:
        return cls(**dict(zip(DRAW_FIELDS, (float(v) for v in row.tolist()))))


def anisotropy(voxel_size: Sequence[float] | None) -> float:
    """z spacing over the finest YX spacing for 3D voxel sizes; 1 for 2D or unknown sizes."""
    if not voxel_size or len(voxel_size) != 3:
        return 1.0
    return float(voxel_size[0]) / float(min(voxel_size[1:]))


def _lerp(bounds: Sequence[float], u: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * u)


def _as_draws(draws: torch.Tensor | Sequence[AugmentDraw]) -> list[AugmentDraw]:
    if isinstance(draws, torch.Tensor):
        return [AugmentDraw.from_tensor(row) for row in draws.detach().cpu()]
    return list(draws)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------- exact stage (numpy)


def augment_pair(image: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                 flip: float = 0.5, rot90: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random flip/rotation combination to both C(Z)YX arrays; returns contiguous copies.

    Rotations by 90 degrees are skipped for non-square patches: they would change the
    patch shape and break batching. The draws happen anyway, to keep the stream fixed.
    """
    if image.shape[1:] != target.shape[1:]:
        raise ValueError(f"image {image.shape} and target {target.shape} differ in spatial shape")
    spatial_axes = range(1, image.ndim)
    flips = rng.random(len(spatial_axes)) < flip
    rotate = rng.random() < rot90
    k = int(rng.integers(1, 4))
    for axis, do_flip in zip(spatial_axes, flips):
        if do_flip:
            image, target = np.flip(image, axis), np.flip(target, axis)
    if rotate and image.shape[-1] == image.shape[-2]:
        image, target = np.rot90(image, k, axes=(-2, -1)), np.rot90(target, k, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


# --------------------------------------------------------------------------- geometric stage (torch)


def sampling_grid(shape: Sequence[int], draw: AugmentDraw, spacing: float, aniso: float,
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
    theta = math.radians(draw.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    pixel = torch.eye(ndim, dtype=torch.float64) / draw.scale  # (Z)YX order
    pixel[-2:, -2:] = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) / draw.scale
    half = torch.tensor([max(n - 1, 1) / 2 for n in shape], dtype=torch.float64)
    normalised = pixel * half[None, :] / half[:, None]
    grid = _linear_grid(shape, normalised.tolist(), device)
    if draw.elastic > 0:
        field = elastic_field(shape, draw.elastic, spacing, aniso, gen, device) / half.to(device, torch.float32).view(
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


# --------------------------------------------------------------------------- intensity stage (torch)


def intensity(x: torch.Tensor, d: AugmentDraw, gen: torch.Generator, aniso: float = 1.0,
              cutout_size: tuple[float, float] = (0.05, 0.25)) -> torch.Tensor:
    """One C(Z)YX image through blur, Poisson noise, Gaussian noise, brightness, contrast, gamma
    and cutout, in the order light meets them: optics, detector, display, occlusion."""
    if d.blur > 0:
        x = gaussian_blur(x, d.blur, aniso)
    if d.poisson > 0:
        x = poisson_noise(x, d.poisson, gen)
    if d.noise > 0:
        x = x + torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * d.noise
    if d.brightness != 0:
        x = x + d.brightness
    if d.contrast != 1:
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        x = (x - mean) * d.contrast + mean
    if d.gamma != 1:
        x = gamma_correct(x, d.gamma)
    if d.cutout > 0:
        x = cutout(x, int(d.cutout), gen, cutout_size)
    return x


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
            edge = max(1, int(round(n * _lerp(size, su))))
            start = int(pu * (n - edge + 1))
            window.append(slice(start, start + edge))
        x[tuple(window)] = 0.0
    return x


# --------------------------------------------------------------------------- debug output


def write_augment_samples(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], folder: str | Path) -> list[Path]:
    """Write augmented (image, target) C(Z)YX pairs as (Z)YXC TIFFs plus ``montage.png``.

    For looking at what the network is trained on: a wrong range or a misaligned target
    shows at a glance.
    """
    folder = Path(folder)
    written = []
    for i, (image, target) in enumerate(pairs):
        for name, arr in (("image", image), ("target", target)):
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

    cols = 1 + max(int(t.shape[0]) for _, t in pairs)
    fig = Figure(figsize=(2 * cols, 2 * len(pairs)), dpi=80)
    FigureCanvasAgg(fig)
    for row, (image, target) in enumerate(pairs):
        panels = [("image", image[0])] + [(f"target {c}", target[c]) for c in range(target.shape[0])]
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
