"""The predict stage: a trained model applied to normalized images, tile by tile.

Prediction jobs of one workflow run inside one long-lived Python process (possibly
from two threads), so the model is loaded once per checkpoint file and reused from
an in-process cache; a retrained checkpoint (new mtime) is picked up automatically.
What is blended and stored is ``task.activate(logits)``, never raw logits, so tiles
are averaged in the space post-processing thresholds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .devices import resolve_device
from .errors import ConfigError, InputError
from .imageio import open_array, write_zarr
from .tiling import DEFAULT_TRIM, BatchFn, run_tiled

#: Inputs smaller than this are read into memory whole; larger ones are read tile by tile.
LAZY_READ_BYTES = 1 << 30

#: Predictors kept in the cache (a workflow uses one or two checkpoints: best.pt, last.pt).
CACHE_SIZE = 4

#: Run convolutions channels-last on CPU: measured faster for the U-Net (benchmarks/README.md).
CHANNELS_LAST_CPU = True

#: Fold eval-mode BatchNorm into the preceding convolution at load time (one pass less per layer).
FUSE_BATCHNORM = True

Activate = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- devices


# --------------------------------------------------------------------------- model cache


@dataclass(frozen=True)
class Predictor:
    """A model ready for inference with what prediction needs to know about it."""

    model: nn.Module
    spec: dict[str, Any]
    divisor: int | tuple[int, ...]
    device: torch.device
    path: Path
    #: the checkpoint without its weights (epoch, val_loss, workflow, ...)
    meta: dict[str, Any] = field(default_factory=dict)


_cache: OrderedDict[tuple[str, int, str], Predictor] = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, int, str], threading.Lock] = {}
_stats = {"loads": 0, "hits": 0}


def load_predictor(checkpoint_path: str | Path, device: str | torch.device = "auto") -> Predictor:
    """Load a checkpoint once per process; later calls return the cached model.

    The key includes the file's mtime, so a checkpoint rewritten by a new training
    run is reloaded. Two threads asking for the same checkpoint wait for one load
    instead of both loading.
    """
    path = Path(checkpoint_path).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError as exc:
        raise InputError(path, "checkpoint not found") from exc
    dev = resolve_device(device)
    key = (str(path), mtime, str(dev))
    with _cache_lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                _stats["hits"] += 1
                return _cache[key]
        predictor = _load(path, dev)
        with _cache_lock:
            _evict_stale(key)
            _cache[key] = predictor
            _stats["loads"] += 1
            while len(_cache) > CACHE_SIZE:
                _key_locks.pop(_cache.popitem(last=False)[0], None)
    return predictor


def _evict_stale(key: tuple[str, int, str]) -> None:
    """Drop older versions of the same file on the same device: they will never be asked for again."""
    for old in [k for k in _cache if k[0] == key[0] and k[2] == key[2] and k[1] != key[1]]:
        del _cache[old]
        _key_locks.pop(old, None)


def _load(path: Path, device: torch.device) -> Predictor:
    from .train import load_checkpoint

    try:
        model, ckpt = load_checkpoint(path, device)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    spec = dict(ckpt["model"])
    prepare_model(model, device)
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return Predictor(model=model, spec=spec, divisor=model_divisor(spec), device=device, path=path, meta=meta)


def model_divisor(spec: dict[str, Any]) -> int | tuple[int, ...]:
    """Spatial sizes the network accepts are multiples of this: one int, or one per (Z)YX
    axis for 3D networks that pool z fewer times than YX (tiling accepts both)."""
    try:
        from .models import divisor
    except ImportError:
        return 2 ** int(spec["depth"])
    d = divisor(spec)
    return int(d) if isinstance(d, int) else tuple(int(v) for v in d)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Put a model in its inference state once, at load time, so predictions made
    from several threads never mutate the shared module."""
    model.eval()
    model.requires_grad_(False)
    if FUSE_BATCHNORM:
        fuse_conv_batchnorm(model)
    if device.type == "cpu" and CHANNELS_LAST_CPU and _conv_ndim(model) in (2, 3):
        fmt = torch.channels_last if _conv_ndim(model) == 2 else torch.channels_last_3d
        model.to(memory_format=fmt)
    return model


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fuse_conv_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm that directly follows a convolution inside an
    ``nn.Sequential`` into that convolution's weights, in place.

    In eval mode BatchNorm is a fixed per-channel affine map, so the result is the same
    function (to float rounding) with one full read-and-write of the activations fewer
    per layer. Only Sequential containers are touched: there, adjacency is data flow.
    """
    if model.training:
        raise ValueError("fuse_conv_batchnorm needs a model in eval mode")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, _CONVS) and isinstance(bn, _BATCHNORMS) and bn.track_running_stats:
                seq._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = nn.Identity()
    return model


def _conv_ndim(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return 2
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            return 3
    return None


def predictor_cache_info() -> dict[str, int]:
    """Loads and cache hits so far in this process (tests and logs use it)."""
    with _cache_lock:
        return {"loads": _stats["loads"], "hits": _stats["hits"], "size": len(_cache)}


def clear_predictor_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()
        _stats.update(loads=0, hits=0)


# --------------------------------------------------------------------------- one image


def make_batch_fn(
    model: nn.Module,
    activate: Activate,
    device: torch.device,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    tta: bool = False,
) -> BatchFn:
    """Wrap a model as the (N, *tile, C) -> (N, *tile, C') numpy function tiling uses.

    numpy tiles are already channels-last in memory, so the NC(Z)YX tensor handed to
    the model is a free permuted view; with ``channels_last`` that view is what the
    CPU convolutions prefer, otherwise it is made contiguous. ``dtype`` bfloat16 runs
    the network under autocast; the activation always sees float32 logits. ``tta``
    averages the activated outputs over flips and 90-degree rotations (:mod:`biapipe.tta`).
    """
    from .tta import wrap

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, dtype):
            logits = model(x)
        with torch.inference_mode():
            return activate(logits.float())

    forward = wrap(forward, tta)

    def fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        x = x.movedim(-1, 1)
        x = x.contiguous(memory_format=_channels_last_format(x.ndim) if channels_last else torch.contiguous_format)
        with torch.inference_mode():
            y = forward(x)
        # channels-last on the device (free when the conv output already is), one copy to host
        return y.movedim(1, -1).contiguous().cpu().numpy()

    return fn


def _channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _autocast(device: torch.device, dtype: torch.dtype) -> Any:
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_image(
    model: nn.Module,
    image: Any,
    cfg_predict: dict[str, Any],
    activate: Activate,
    divisor: int | Sequence[int],
    device: str | torch.device = "cpu",
    *,
    channels_last: bool | None = None,
    dtype: torch.dtype | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Predict one normalized (Z)YXC float32 image; returns (Z)YXC float32 ``activate(logits)``.

    ``cfg_predict`` is the config's ``predict`` section. ``tiled`` blends overlapping
    tiles (memory bounded by tile x batch); ``whole`` runs one forward pass on the
    image padded to the divisor, which avoids overlap recomputation when the image
    fits in memory. ``image`` may be a lazy Zarr array in tiled mode.

    ``channels_last`` (default: on for CPU) and ``dtype`` (default: the section's
    optional ``precision`` key, else float32; bfloat16 runs the network under
    autocast) are the speed options measured in benchmarks/README.md. The optional
    ``trim`` key is the share of each tile overlap ignored next to a neighbour.
    """
    dev = resolve_device(device)
    if model.training:  # BatchNorm/Dropout must use their inference behaviour
        model.eval()
    torch.set_num_threads(int(cfg_predict.get("threads", torch.get_num_threads())))
    if channels_last is None:
        channels_last = dev.type == "cpu" and CHANNELS_LAST_CPU
    if dtype is None:
        dtype = _precision(cfg_predict.get("precision", "float32"))
    fn = make_batch_fn(model, activate, dev, channels_last=channels_last, dtype=dtype,
                       tta=bool(cfg_predict.get("tta", False)))
    spatial = tuple(image.shape[:-1])
    mode = cfg_predict.get("mode", "tiled")
    if mode == "whole":
        return run_tiled(image, fn, spatial, overlap=0.0, blend="constant", batch_size=1, divisor=divisor, out=out)
    if mode != "tiled":
        raise ConfigError("predict.mode", f"'{mode}' is not one of tiled, whole")
    tile = _tile_size(cfg_predict, len(spatial))
    return run_tiled(
        image,
        fn,
        tile,
        overlap=float(cfg_predict.get("overlap", 0.25)),
        blend=cfg_predict.get("blend", "gaussian"),
        batch_size=int(cfg_predict.get("batch_size", 4)),
        divisor=divisor,
        out=out,
        trim=float(cfg_predict.get("trim", DEFAULT_TRIM)),
    )


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _precision(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise ConfigError("predict.precision", f"'{name}' is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def _tile_size(cfg_predict: dict[str, Any], ndim: int) -> tuple[int, ...]:
    tile = cfg_predict.get("tile_size")
    if tile is None:
        return (256, 256) if ndim == 2 else (32, 128, 128)
    if len(tile) != ndim:
        raise ConfigError("predict.tile_size", f"has {len(tile)} entries but the image is {ndim}D")
    return tuple(int(t) for t in tile)


# --------------------------------------------------------------------------- many files


def predict_files(
    checkpoint: str | Path,
    task: Any,
    items: Sequence[tuple[str | Path, str | Path]],
    cfg: dict[str, Any],
) -> list[Path]:
    """Predict each normalized input Zarr into its output Zarr with one model load.

    ``task`` supplies ``ndim`` and ``activate``; ``cfg`` is the validated experiment
    config. Each output is float32 (Z)YXC, written atomically, with attributes that
    say which checkpoint and tile settings produced it.
    """
    pcfg = cfg["predict"]
    predictor = load_predictor(checkpoint, pcfg.get("device", "auto"))
    written = []
    for src, dst in items:
        image = read_input(src, task.ndim, int(predictor.spec.get("in_channels", 0)) or None)
        pred = predict_image(
            predictor.model, image, pcfg, task.activate, predictor.divisor, predictor.device
        )
        write_zarr(dst, pred, chunks=output_chunks(pred.shape), attrs=prediction_attrs(predictor, pcfg, pred))
        written.append(Path(dst))
    return written


def read_input(path: str | Path, ndim: int, in_channels: int | None = None) -> Any:
    """A normalized (Z)YXC image: in memory when small, lazily (tile reads) when huge.

    Checks the dimensionality and channel count against the model before any compute,
    naming the file, so a wrong input fails in a line instead of deep inside a conv.
    """
    arr = open_array(path)
    if arr.ndim == ndim:
        arr = np.asarray(arr[...], dtype=np.float32)[..., np.newaxis]
    elif arr.ndim != ndim + 1:
        raise InputError(path, f"array of shape {arr.shape} is not a {ndim}D (Z)YXC image")
    if in_channels is not None and arr.shape[-1] != in_channels:
        raise InputError(path, f"has {arr.shape[-1]} channels but the model expects {in_channels}")
    if isinstance(arr, np.ndarray) or arr.nbytes > LAZY_READ_BYTES:
        return arr
    return np.asarray(arr[...], dtype=np.float32)


def output_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Chunks of about 256 kB to 1 MB per channel, all channels together: post-processing
    reads every channel of a region at once."""
    spatial = shape[:-1]
    edge = 256 if len(spatial) == 2 else 64
    return tuple(min(s, edge) for s in spatial) + (shape[-1],)


def prediction_attrs(predictor: Predictor, cfg_predict: dict[str, Any], pred: np.ndarray) -> dict[str, Any]:
    """Provenance stored with each prediction (JSON-serialisable)."""
    ndim = pred.ndim - 1
    return {
        "axes": "ZYXC"[3 - ndim :],
        "checkpoint": str(predictor.path),
        "epoch": predictor.meta.get("epoch"),
        "mode": cfg_predict.get("mode", "tiled"),
        "tile_size": list(_tile_size(cfg_predict, ndim)),
        "overlap": float(cfg_predict.get("overlap", 0.25)),
        "blend": cfg_predict.get("blend", "gaussian"),
        "batch_size": int(cfg_predict.get("batch_size", 4)),
        "divisor": predictor.divisor,
        "tta": bool(cfg_predict.get("tta", False)),
    }
