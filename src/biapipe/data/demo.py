"""Synthetic fluorescence-like nuclei with exact ground truth, in 2D and 3D.

The default experiment must run on a fresh clone without downloading anything, and
the tests need data whose right answer is known. So we draw nuclei as ellipses or
ellipsoids (one code path, ``ndim`` is a parameter) with varied size, orientation and
brightness, some pressed against each other and some alone, over a smooth uneven
background, then blur and add shot and read noise as a widefield camera would. The
result is hard enough that a threshold is not the whole answer (touching nuclei, dim
nuclei next to a bright background corner) yet learnable in a few epochs on a CPU.

Every image is drawn from its own random stream, keyed by (seed, split, index), so an
image does not change when more images are requested, and the same seed gives the
same bytes on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..core.imageio import write_csv, write_tiff

SPLITS = ("train", "val", "test")

#: Nucleus semi-axes (pixels) at full scale; small images shrink them (see _radius_scale).
SEMI_AXIS_RANGE = (4.0, 10.0)
#: Largest ratio between the longest and the shortest semi-axis of one nucleus.
MAX_ELONGATION = 1.7
#: Share of the image volume the nuclei aim to cover.
COVERAGE = {2: 0.22, 3: 0.14}
#: Probability that a new nucleus is placed against an existing one rather than alone.
TOUCH_PROBABILITY = 0.35
#: Camera model: photons at relative intensity 1, offset and read noise in counts.
PEAK_PHOTONS = 300.0
CAMERA_OFFSET = 100.0
READ_NOISE = 4.0
BLUR_SIGMA = 1.0


@dataclass(frozen=True)
class Nucleus:
    """One ellipsoid: centre (Z)YX, semi-axes, rotation (columns = principal axes), brightness."""

    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    brightness: float

    @property
    def precision(self) -> np.ndarray:
        """Matrix A with x^T A x <= 1 inside; used for distances along any direction."""
        return self.rotation @ np.diag(1.0 / self.semi_axes**2) @ self.rotation.T

    def radius_along(self, direction: np.ndarray) -> float:
        return float(1.0 / np.sqrt(direction @ self.precision @ direction))

    def half_extent(self) -> np.ndarray:
        """Half size of the axis-aligned bounding box, so each nucleus is drawn only there."""
        return np.sqrt(((self.rotation * self.semi_axes) ** 2).sum(axis=1))


@dataclass(frozen=True)
class DemoSample:
    """One synthetic image with its instance labels and the labels' centroids."""

    image: np.ndarray  # (Z)YX uint16
    labels: np.ndarray  # (Z)YX uint16, ids 1..N consecutive, 0 background
    centroids: np.ndarray  # (N, ndim) float, row i belongs to label i + 1


# --------------------------------------------------------------------------- public API


def demo_ids(n_train: int, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Sample names per split; the workflow needs them before any file exists."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    return {split: [f"{split}_{i:03d}" for i in range(n)] for split, n in counts.items()}


def demo_shape(ndim: int, size: int) -> tuple[int, ...]:
    """(Z)YX shape: volumes are flatter than wide, like most confocal stacks."""
    if ndim == 2:
        return (size, size)
    if ndim == 3:
        return (max(8, size // 4), size, size)
    raise ValueError(f"ndim must be 2 or 3, not {ndim}")


def make_sample(ndim: int, size: int, seed: int, split: str = "train", index: int = 0) -> DemoSample:
    """Draw one image; (seed, split, index) fully determine it."""
    rng, signal, labels = make_signal(ndim, size, seed, split, index)
    return DemoSample(image=add_camera_noise(rng, signal), labels=labels, centroids=_centroids(labels))


def make_demo_data(
    out_dir: str | Path,
    ndim: int,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 4,
    size: int = 128,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Write ``{split}/{images,labels}/{name}.tif`` and ``{split}/points/{name}.csv``.

    The layout is the workflow's input layout, so the demo exercises exactly the code
    path of real data. Returns the names per split, as :func:`demo_ids`.
    """
    out_dir = Path(out_dir)
    ids = demo_ids(n_train, n_val, n_test)
    for split, names in ids.items():
        for index, name in enumerate(names):
            sample = make_sample(ndim, size, seed, split, index)
            _write_sample(out_dir / split, name, sample)
    return ids


# --------------------------------------------------------------------------- placement


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # SeedSequence needs non-negative entries; the modulo keeps negative seeds distinct.
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, SPLITS.index(split), index]))


def _radius_scale(shape: tuple[int, ...]) -> float:
    """Shrink nuclei in tiny images so several still fit (z is the tightest axis in 3D)."""
    return float(np.clip(min(shape) / (2.5 * SEMI_AXIS_RANGE[1]), 0.35, 1.0))


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Uniform random rotation via QR of a Gaussian matrix (works for any ndim)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_nucleus(rng: np.random.Generator, ndim: int, scale: float, centre: np.ndarray) -> Nucleus:
    base = rng.uniform(*SEMI_AXIS_RANGE) * scale
    stretch = rng.uniform(1.0, MAX_ELONGATION, size=ndim) ** rng.choice([-0.5, 0.5], size=ndim)
    semi_axes = np.maximum(base * stretch, 1.5)
    brightness = float(rng.uniform(0.35, 1.0))
    return Nucleus(centre, semi_axes, _random_rotation(rng, ndim), brightness)


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, ...]) -> list[Nucleus]:
    """Mix of isolated nuclei and touching pairs/clusters; the second is always touching.

    Forcing one touching pair per image guarantees the hard case (separating touching
    objects) is present in every image, not only by chance.
    """
    ndim = len(shape)
    scale = _radius_scale(shape)
    mean_volume = _ball_volume(ndim) * (np.mean(SEMI_AXIS_RANGE) * scale) ** ndim
    target = max(3, int(round(COVERAGE[ndim] * np.prod(shape) / mean_volume)))
    nuclei: list[Nucleus] = []
    for _ in range(target * 30):  # bounded: a crowded image simply gets fewer nuclei
        if len(nuclei) >= target:
            break
        touching = len(nuclei) == 1 or (len(nuclei) > 1 and rng.random() < TOUCH_PROBABILITY)
        candidate = _candidate(rng, shape, scale, nuclei, touching)
        if candidate is not None:
            nuclei.append(candidate)
    return nuclei


def _candidate(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float, nuclei: list[Nucleus], touching: bool
) -> Nucleus | None:
    ndim = len(shape)
    upper = np.asarray(shape, dtype=float) - 1
    if not touching:
        centre = rng.uniform(0.0, 1.0, size=ndim) * upper
        nucleus = _random_nucleus(rng, ndim, scale, centre)
        partner = None
    else:
        partner = nuclei[int(rng.integers(len(nuclei)))]
        direction = rng.normal(size=ndim)
        direction /= np.linalg.norm(direction)
        nucleus = _random_nucleus(rng, ndim, scale, partner.centre)
        # Slight overlap of the two outlines: they share a boundary after the split.
        gap = 0.85 * (partner.radius_along(direction) + nucleus.radius_along(direction))
        nucleus = Nucleus(partner.centre + gap * direction, nucleus.semi_axes, nucleus.rotation, nucleus.brightness)
    if np.any(nucleus.centre < 0) or np.any(nucleus.centre > upper):
        return None
    if not clear_of_others(nucleus, nuclei, partner):
        return None
    return nucleus


def clear_of_others(nucleus: Nucleus, nuclei: list[Nucleus], partner: Nucleus | None) -> bool:
    """Apart from its partner, a nucleus keeps a gap to every other one (no blobs of three)."""
    for other in nuclei:
        if other is partner:
            continue
        if np.linalg.norm(other.centre - nucleus.centre) < other.semi_axes.max() + nucleus.semi_axes.max() + 2:
            return False
    return True


def _ball_volume(ndim: int) -> float:
    return float(np.pi if ndim == 2 else 4.0 / 3.0 * np.pi)


# --------------------------------------------------------------------------- rendering


def render_labels(shape: tuple[int, ...], nuclei: list[Nucleus]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and each pixel's normalised depth inside its nucleus (0 centre, 1 rim).

    Where two outlines overlap, the pixel goes to the nucleus whose centre it is
    relatively closer to, which draws a clean shared boundary between touching nuclei.
    """
    labels = np.zeros(shape, dtype=np.uint16)
    depth = np.full(shape, np.inf, dtype=np.float32)
    for label, nucleus in enumerate(nuclei, start=1):
        box, d = _quadratic_form(shape, nucleus)
        if box is None:
            continue
        inside = (d <= 1.0) & (d < depth[box])
        labels[box][inside] = label
        depth[box][inside] = d[inside]
    depth[~np.isfinite(depth)] = 1.0
    return labels, depth


def _quadratic_form(shape: tuple[int, ...], nucleus: Nucleus) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """(x - c)^T A (x - c) over the nucleus' bounding box, clipped to the image."""
    half = nucleus.half_extent()
    lo = np.maximum(np.floor(nucleus.centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(nucleus.centre + half).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None, np.empty(0)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grids = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij")
    offsets = np.stack([g - c for g, c in zip(grids, nucleus.centre.astype(np.float32))], axis=-1)
    d = np.einsum("...i,ij,...j->...", offsets, nucleus.precision.astype(np.float32), offsets)
    return box, d


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids 1..N with no gaps (a nucleus can vanish at the border); returns the kept old ids."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    return lut[labels], present


def render_image(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    labels: np.ndarray,
    depth: np.ndarray,
    nuclei: list[Nucleus],
) -> np.ndarray:
    """Relative intensity -> blur -> photons (Poisson) -> camera counts (offset + Gaussian)."""
    return add_camera_noise(rng, render_signal(rng, shape, labels, depth, nuclei))


def render_signal(rng: np.random.Generator, shape: tuple[int, ...], labels: np.ndarray, depth: np.ndarray,
                  nuclei: list[Nucleus]) -> np.ndarray:
    """The noise-free relative intensity (blurred nuclei over the background), float32."""
    brightness = np.zeros(len(nuclei) + 1, dtype=np.float32)
    brightness[1:] = [n.brightness for n in nuclei]
    # Nuclei are a little brighter in the middle; a flat disc would be unrealistically easy.
    signal = brightness[labels] * (1.0 - 0.3 * depth)
    signal += _background(rng, shape)
    return ndimage.gaussian_filter(signal, BLUR_SIGMA, mode="nearest")


def add_camera_noise(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """A relative intensity as one camera frame: Poisson photons, offset and Gaussian read noise (uint16)."""
    photons = rng.poisson(np.maximum(signal, 0) * PEAK_PHOTONS).astype(np.float32)
    counts = photons + CAMERA_OFFSET + rng.normal(0.0, READ_NOISE, size=signal.shape).astype(np.float32)
    return np.clip(np.round(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def clean_counts(signal: np.ndarray) -> np.ndarray:
    """The expected camera counts of a relative intensity (what averaging many frames gives), uint16."""
    counts = np.maximum(signal, 0) * PEAK_PHOTONS + CAMERA_OFFSET
    return np.clip(np.round(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def make_signal(ndim: int, size: int, seed: int, split: str = "train", index: int = 0
                ) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """(the sample's generator after rendering, noise-free signal, labels) of the sample that
    :func:`make_sample` draws: restoration demos degrade this signal their own ways."""
    rng = _rng(seed, split, index)
    shape = demo_shape(ndim, size)
    nuclei = _place_nuclei(rng, shape)
    labels, depth = render_labels(shape, nuclei)
    labels, kept = relabel_consecutive(labels)
    signal = render_signal(rng, shape, labels, depth, [nuclei[i - 1] for i in kept])
    return rng, signal, labels


def _background(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth linear gradient in a random direction: uneven illumination."""
    direction = rng.normal(size=len(shape))
    direction /= np.linalg.norm(direction)
    coords = np.meshgrid(*[np.linspace(-0.5, 0.5, n, dtype=np.float32) for n in shape], indexing="ij")
    ramp = sum(d * c for d, c in zip(direction.astype(np.float32), coords))
    level, amplitude = rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.15)
    return (level + amplitude * ramp).astype(np.float32)


def _centroids(labels: np.ndarray) -> np.ndarray:
    """Mean pixel coordinate per label, by bincount (one pass per axis, no Python loop)."""
    n = int(labels.max())
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    coords = []
    for axis, length in enumerate(labels.shape):
        shape = [1] * labels.ndim
        shape[axis] = length
        index = np.broadcast_to(np.arange(length, dtype=float).reshape(shape), labels.shape)
        coords.append(np.bincount(flat, weights=index.ravel(), minlength=n + 1)[1:] / np.maximum(counts, 1))
    return np.stack(coords, axis=1) if n else np.zeros((0, labels.ndim))


# --------------------------------------------------------------------------- writing


def _write_sample(split_dir: Path, name: str, sample: DemoSample) -> None:
    write_tiff(split_dir / "images" / f"{name}.tif", sample.image)
    write_tiff(split_dir / "labels" / f"{name}.tif", sample.labels)
    columns = ["z", "y", "x"][3 - sample.labels.ndim:]
    points = pd.DataFrame(np.round(sample.centroids, 3), columns=columns)
    write_csv(split_dir / "points" / f"{name}.csv", points)
