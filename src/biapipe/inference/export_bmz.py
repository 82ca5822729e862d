"""Export a trained model as a BioImage Model Zoo (bioimage.io) package.

A package lets other tools (ilastik, deepImageJ, QuPath, bioimageio.core, BiaPy) run the
model without biapipe. It holds ``rdf.yaml`` (format 0.5), the weights twice
(TorchScript, which needs no Python source, and a PyTorch state dict with the
architecture source), a test input and the expected output, and a README.

What consumers get is what ``biapipe predict`` stores: the exported network ends in the
task's activation (softmax for class maps, sigmoid or clamp per channel for instance and
detection maps), and the config's intensity normalization is written as BMZ
preprocessing (``scale_range`` for percentile/minmax, ``zero_mean_unit_variance`` for
z-score, ``scale_linear`` for dataset statistics and dtype scaling, ``clip`` when set),
so the consumer feeds raw images. The architecture source is the ``biapipe.models``
package joined into one file (:func:`biapipe.models.packaged.standalone_source`). What is
workflow-specific (the activation, the output channel names) comes from the task.

Needs the optional ``bioimageio.spec`` (``pip install biapipe[export]``); everything works
offline: files are local, and validation only reads them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import imageio
from ..core.errors import BiapipeError, ConfigError, InputError
from ..data.normalize import dtype_scale, fixed_stats, normalize
from ..models.checkpoint import load_checkpoint
from ..models.info import checkpoint_header, model_meta
from ..models.packaged import ActivatedNet, standalone_source
from ..models.registry import divisor_per_axis

logger = logging.getLogger(__name__)

#: Largest test-input edge (YX) and depth (Z): enough to show the model working, small to ship.
TEST_EDGE, TEST_DEPTH = 256, 32

#: File names inside the package.
ARCH_FILE, STATE_FILE, SCRIPT_FILE = "biapipe_models.py", "weights.pt", "weights_torchscript.pt"
TEST_INPUT, TEST_OUTPUT, README = "test_input.npy", "test_output.npy", "README.md"
SAMPLE_INPUT, SAMPLE_OUTPUT = "sample_input.tif", "sample_output.tif"

SPACE_AXES = ("z", "y", "x")


def _spec_module() -> Any:
    try:
        import bioimageio.spec as bioimageio_spec
    except ImportError as exc:
        raise BiapipeError("export-bmz needs the optional package bioimageio.spec: "
                           "pip install 'biapipe[export]'") from exc
    return bioimageio_spec


# --------------------------------------------------------------------------- model side


def packaged(checkpoint: str | Path, task: Any) -> tuple[nn.Module, dict[str, Any], list[list[Any]], Any]:
    """(network with the task's activation, spec, activation, input upsampling) of a checkpoint,
    in eval mode on CPU; the task is set up for the checkpoint (``Task.for_model``) first."""
    model, ckpt = load_checkpoint(checkpoint, "cpu")
    trained = task.for_model({k: v for k, v in ckpt.items() if k != "state_dict"})
    activation, upsample = trained.activation_spec(), trained.upsampling()
    upsample = list(upsample) if upsample else None
    return ActivatedNet(model, activation, upsample).eval(), dict(ckpt["model"]), activation, upsample


# --------------------------------------------------------------------------- test data


def test_crop(image: np.ndarray, divisor: Sequence[int]) -> np.ndarray:
    """The central part of a (Z)YXC image with every axis a multiple of the divisor (at most
    TEST_EDGE/TEST_DEPTH). Smaller images are reflect-padded up to one divisor."""
    spatial = image.shape[:-1]
    limits = (TEST_DEPTH, TEST_EDGE, TEST_EDGE)[3 - len(spatial):]
    window, pad = [], []
    for n, d, cap in zip(spatial, divisor, limits):
        size = max(d, (min(n, cap) // d) * d)
        start = max(0, (n - size) // 2)
        window.append(slice(start, start + min(size, n)))
        missing = size - min(size, n)
        pad.append((missing // 2, missing - missing // 2))
    crop = image[tuple(window)]
    if any(p for pair in pad for p in pair):
        crop = np.pad(crop, pad + [(0, 0)], mode="reflect")
    return np.ascontiguousarray(crop)


def whole_input(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A (Z)YXC image resized (linear, anti-aliased when shrinking) to the (Z)YX ``size`` a
    whole-image model takes, as biapipe resizes its input before such a model."""
    from skimage.transform import resize

    size = tuple(int(s) for s in size)
    shrinks = any(s > t for s, t in zip(image.shape[:-1], size))
    out = resize(np.asarray(image, np.float32), size + (image.shape[-1],), order=1, mode="edge",
                 anti_aliasing=shrinks, preserve_range=True)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- preprocessing


def preprocessing(cfg_normalize: dict[str, Any], ndim: int, n_channels: int, raw_dtype: np.dtype,
                  stats: dict[str, Any] | None) -> list[Any]:
    """BMZ preprocessing steps equivalent to ``biapipe.normalize.normalize`` with this config."""
    from bioimageio.spec.model import v0_5 as bmz

    cfg = cfg_normalize
    method = cfg["method"]
    spatial = [bmz.AxisId(a) for a in SPACE_AXES[3 - ndim:]]
    axes = spatial if cfg["per_channel"] else [bmz.AxisId("channel"), *spatial]
    if cfg["scope"] == "dataset" and method in ("percentile", "minmax", "zscore"):
        if stats is None:
            raise ConfigError("normalize.scope", "is 'dataset': pass the statistics JSON (results/{experiment}/"
                                                 "normalize/stats.json) with --stats")
        steps = [_fixed_step(method, stats, n_channels)]
    elif method == "percentile":
        steps = [bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(
            axes=axes, min_percentile=float(cfg["low"]), max_percentile=float(cfg["high"])))]
    elif method == "minmax":
        steps = [bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(axes=axes, min_percentile=0.0, max_percentile=100.0))]
    elif method == "zscore":
        steps = [bmz.ZeroMeanUnitVarianceDescr(kwargs=bmz.ZeroMeanUnitVarianceKwargs(axes=axes))]
    elif method == "dtype_max":
        scale = float(stats["scale"][0]) if stats and "scale" in stats else dtype_scale(raw_dtype)
        steps = [bmz.ScaleLinearDescr(kwargs=bmz.ScaleLinearKwargs(gain=1.0 / scale, offset=0.0))]
    else:
        steps = []
    if cfg["clip"] and method not in ("zscore", "none"):
        steps.append(bmz.ClipDescr(kwargs=bmz.ClipKwargs(min=0.0, max=1.0)))
    return steps


def _fixed_step(method: str, stats: dict[str, Any], n_channels: int) -> Any:
    """Dataset statistics as a fixed affine map per channel (one value broadcast when shared)."""
    from bioimageio.spec.model import v0_5 as bmz

    def per_channel(values: Sequence[float]) -> list[float]:
        values = [float(v) for v in values]
        return values * n_channels if len(values) == 1 else values

    if method == "zscore":
        mean, std = per_channel(stats["mean"]), [max(s, 1e-6) for s in per_channel(stats["std"])]
        return bmz.FixedZeroMeanUnitVarianceDescr(kwargs=bmz.FixedZeroMeanUnitVarianceAlongAxisKwargs(
            axis=bmz.AxisId("channel"), mean=mean, std=std))
    low, high = per_channel(stats["low"]), per_channel(stats["high"])
    gain = [1.0 / (h - lo) if h > lo else 0.0 for lo, h in zip(low, high)]
    offset = [-lo * g for lo, g in zip(low, gain)]
    return bmz.ScaleLinearDescr(kwargs=bmz.ScaleLinearAlongAxisKwargs(axis=bmz.AxisId("channel"), gain=gain,
                                                                      offset=offset))


# --------------------------------------------------------------------------- the package


def export_bmz(checkpoint: str | Path, cfg: dict[str, Any], task: Any, out: str | Path, test_image: str | Path,
               *, name: str | None = None, description: str | None = None,
               authors: Sequence[str] = ("biapipe user",), license: str = "MIT",
               stats: str | Path | None = None, validate: bool = True) -> Path:
    """Write a BMZ package of ``checkpoint`` to ``out`` (a ``.zip`` file, else a folder).

    ``cfg`` is the validated experiment config (normalization, axes), ``task`` its task
    (activation and output names: ``activation_spec``, ``output_channel_names``); ``test_image`` a
    raw input image (any format biapipe reads) from which the test input is cropped.
    ``stats`` is the normalization statistics JSON when ``normalize.scope`` is ``dataset``.
    With ``validate`` the written package is loaded back and checked by bioimageio.spec;
    a failed check raises BiapipeError with its summary.
    """
    _spec_module()
    net, spec, activation, upsample = packaged(checkpoint, task)
    ndim = int(spec["ndim"])
    raw = imageio.read_image(test_image, ndim, cfg["data"]["axes"])
    if raw.shape[-1] != spec["in_channels"]:
        raise InputError(test_image, f"has {raw.shape[-1]} channels but the model expects {spec['in_channels']}")
    stats_dict = (imageio.read_json(stats) if stats else None) or fixed_stats(cfg["normalize"])
    div = divisor_per_axis(spec)
    # whole-image models (classification) take one fixed size: the test input is the image resized to it
    raw_crop = whole_input(raw, spec["input_size"]) if task.whole_image else test_crop(raw, div)
    x = torch.from_numpy(np.moveaxis(normalize(raw_crop, cfg["normalize"], stats_dict), -1, 0)[None].copy())
    with torch.no_grad():
        y = net(x)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="biapipe-bmz-") as tmp:
        staging = Path(tmp)
        _write_files(staging, net, spec, activation, raw_crop, y, x)
        descr = _describe(staging, spec, activation, upsample, task, cfg, raw.dtype, stats_dict, div, y.shape,
                          name or f"biapipe {cfg['workflow']} {cfg['experiment']}", description, authors, license)
        descr = descr.model_copy(update={"config": _config(descr, checkpoint, cfg, spec, stats_dict)})
        written = _save(descr, out)
    if validate:
        check_package(written)
    logger.info("wrote BioImage Model Zoo package %s", written)
    return written


def _write_files(folder: Path, net: nn.Module, spec: dict[str, Any], activation: list[list[Any]],
                 raw_crop: np.ndarray, y: torch.Tensor, x: torch.Tensor) -> None:
    (folder / ARCH_FILE).write_text(standalone_source())
    torch.save(net.state_dict(), folder / STATE_FILE)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in torch but is still the zoo's framework-free weight format
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(net, x, check_trace=False)
        scripted.save(str(folder / SCRIPT_FILE))
    np.save(folder / TEST_INPUT, np.moveaxis(raw_crop.astype(np.float32), -1, 0)[None])
    np.save(folder / TEST_OUTPUT, y.numpy().astype(np.float32))
    # the same data as images, for viewers (FAIR "sample tensors"): C(Z)YX
    import tifffile

    tifffile.imwrite(folder / SAMPLE_INPUT, np.moveaxis(raw_crop.astype(np.float32), -1, 0))
    tifffile.imwrite(folder / SAMPLE_OUTPUT, y.numpy()[0].astype(np.float32))
    (folder / README).write_text(_readme(spec, activation))


def _readme(spec: dict[str, Any], activation: list[list[Any]]) -> str:
    return (
        "# biapipe model\n\n"
        f"A {spec['ndim']}D {spec['arch']} (depth {spec['depth']}, width {spec['width']}, {spec['norm']} "
        f"normalization) trained with biapipe.\n\n"
        "Input: raw image, batch x channel x (z) x y x x; the intensity normalization used in training is "
        "applied as preprocessing.\n\n"
        f"Output: the activated maps biapipe stores as predictions ({', '.join(a[0] for a in activation)}); "
        "biapipe's post-processing (thresholds, watershed, peak finding) turns them into masks, labels "
        "or points.\n\n"
        "# Validation\n\n"
        "The test output was computed by biapipe from the test input with the training normalization; the "
        "exported network reproduces biapipe's predictions to float precision. Accuracy figures are in the "
        "experiment's metrics.csv / summary.csv.\n"
    )


def _describe(folder: Path, spec: dict[str, Any], activation: list[list[Any]], upsample: list[int] | None,
              task: Any, cfg: dict[str, Any],
              raw_dtype: np.dtype, stats: dict[str, Any] | None, div: Sequence[int], out_shape: Sequence[int],
              name: str, description: str | None, authors: Sequence[str], license: str) -> Any:
    from bioimageio.spec.model import v0_5 as bmz

    ndim = int(spec["ndim"])
    in_id, out_id = bmz.TensorId("raw"), bmz.TensorId("prediction")
    space = SPACE_AXES[3 - ndim:]
    in_axes = [bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier(f"channel{c}")
                                                               for c in range(spec["in_channels"])])]
    if task.whole_image:  # one fixed input size, one value per channel out (class probabilities)
        in_axes += [bmz.SpaceInputAxis(id=bmz.AxisId(a), size=int(n)) for a, n in zip(space, spec["input_size"])]
    else:
        in_axes += [bmz.SpaceInputAxis(id=bmz.AxisId(a), size=bmz.ParameterizedSize(min=int(d), step=int(d)))
                    for a, d in zip(space, div)]
    out_axes = [bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier(n) for n in task.output_channel_names()])]
    # an input upsampled by f gives an output f times larger: its axis scale is 1/f of the input's
    factors = upsample or [1] * ndim
    out_axes += [] if task.whole_image else \
        [bmz.SpaceOutputAxis(id=bmz.AxisId(a), scale=1.0 / f,
                             size=bmz.SizeReference(tensor_id=in_id, axis_id=bmz.AxisId(a)))
         for a, f in zip(space, factors)]
    torch_version = bmz.Version(torch.__version__.split("+")[0])
    return bmz.ModelDescr(
        name=name,
        description=description or f"biapipe {cfg['workflow']} model ({ndim}D {spec['arch']})",
        authors=[bmz.Author(name=a) for a in authors],
        cite=[bmz.CiteEntry(text="Ronneberger et al. U-Net: Convolutional Networks for Biomedical Image "
                                 "Segmentation. MICCAI 2015", doi=bmz.Doi("10.1007/978-3-319-24574-4_28"))],
        license=bmz.LicenseId(license),
        documentation=bmz.FileDescr(source=folder / README),
        tags=["biapipe", f"{ndim}d", cfg["workflow"], spec["arch"], "pytorch"],
        inputs=[bmz.InputTensorDescr(id=in_id, axes=in_axes, test_tensor=bmz.FileDescr(source=folder / TEST_INPUT),
                                     sample_tensor=bmz.FileDescr(source=folder / SAMPLE_INPUT),
                                     preprocessing=preprocessing(cfg["normalize"], ndim, spec["in_channels"],
                                                                 raw_dtype, stats))],
        outputs=[bmz.OutputTensorDescr(id=out_id, axes=out_axes,
                                       test_tensor=bmz.FileDescr(source=folder / TEST_OUTPUT),
                                       sample_tensor=bmz.FileDescr(source=folder / SAMPLE_OUTPUT))],
        weights=bmz.WeightsDescr(
            pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(
                source=folder / STATE_FILE, pytorch_version=torch_version,
                architecture=bmz.ArchitectureFromFileDescr(
                    source=folder / ARCH_FILE, callable=bmz.Identifier("packaged_network"),
                    kwargs={"spec": _plain(spec), "activation": _plain(activation),
                            "upsample": _plain(upsample)})),
            torchscript=bmz.TorchscriptWeightsDescr(source=folder / SCRIPT_FILE, pytorch_version=torch_version,
                                                    parent="pytorch_state_dict"),
        ),
    )


def _config(descr: Any, checkpoint: str | Path, cfg: dict[str, Any], spec: dict[str, Any],
            stats: dict[str, Any] | None) -> Any:
    """The package's ``config.biapipe``: what biapipe needs to predict with the package as with the
    checkpoint (``models.rdf``): the network spec, the experiment's config sections with the
    normalization statistics, and the tuned post-processing thresholds the checkpoint carries."""
    from .. import __version__

    config = model_meta(cfg)
    if stats is not None and cfg["normalize"]["scope"] == "dataset":
        config["normalize"]["stats"] = {k: v for k, v in stats.items() if k not in ("method", "per_channel")}
    record = {"version": __version__, "spec": spec, "config": config, "tuned": checkpoint_header(checkpoint).get("tuned")}
    return descr.config.model_copy(update={"biapipe": _plain(record)})


def _plain(value: Any) -> Any:
    """YAML-safe copy (tuples to lists, numpy scalars to Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _save(descr: Any, out: Path) -> Path:
    from bioimageio.spec import (
        save_bioimageio_package,
        save_bioimageio_package_as_folder,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".zip":
        with imageio.atomic_path(out) as tmp:
            save_bioimageio_package(descr, output_path=tmp)
        return out
    with imageio.atomic_path(out) as tmp:
        save_bioimageio_package_as_folder(descr, output_path=tmp)
    return out


def check_package(path: str | Path) -> Any:
    """Load a package back with bioimageio.spec's own validation (format and files); raise if invalid."""
    from bioimageio.spec import InvalidDescr, load_description

    path = Path(path)
    source = path / "rdf.yaml" if path.is_dir() else path
    descr = load_description(source, perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        raise BiapipeError(f"{path}: bioimageio.spec rejects the package:\n{descr.validation_summary.format()}")
    return descr
