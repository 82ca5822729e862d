"""Speed and memory of the predict stage on this machine; prints one markdown table.

    .venv/bin/python benchmarks/bench_predict.py [--threads N] [--rounds R] [--n2d N]
                                                 [--quick] [--compile] [--device cpu|cuda]

Measures, for the default U-Net (depth 3, width 16, batch norm) with random weights:
2D tiled and whole-image throughput on 512x512 images, 3D throughput on a 64x256x256
volume, the speed options tried (memory layout, BatchNorm folding, tile batch size,
bfloat16, torch.compile with --compile), achieved convolution GFLOP/s next to a plain
fp32 matmul, peak RSS, model load time and ``import torch`` time. Weights are random:
speed does not depend on them, and the bfloat16 error is reported on a smooth image.
Options are timed round-robin and the best round is kept, so a burst of other work on
a shared machine slows every option alike; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from biapipe.core.config import defaults
from biapipe.inference.predict import predict_image
from biapipe.inference.predictor import clear_predictor_cache, fuse_conv_batchnorm, load_predictor, prepare_model
from biapipe.models.registry import build_model, count_parameters

SPEC_2D = {"arch": "unet", "ndim": 2, "in_channels": 1, "out_channels": 2, "depth": 3, "width": 16,
           "norm": "batch", "dropout": 0.0}
SPEC_3D = {**SPEC_2D, "ndim": 3}
TILED_2D = defaults("predict", tile_size=[256, 256], batch_size=1, threads=2)
TILED_3D = defaults("predict", 3, tile_size=[32, 128, 128], batch_size=1, threads=2)

Row = tuple[str, str, str]
DEVICE = torch.device("cpu")


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], repeat: int, warmup: bool = True) -> tuple[float, Any]:
    """Best of ``repeat`` wall times (after a warm-up run unless told otherwise): the
    least disturbed run is the best estimate of the cost on a shared machine."""
    out = fn() if warmup else None
    best = math.inf
    for _ in range(max(repeat, 1)):
        t = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def smooth_images(n: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Blob-like images in [0, 1]: closer to microscopy than white noise for the bf16 error."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 4)
        img = (img - img.min()) / (img.max() - img.min() + 1e-6)
        out.append(img[..., np.newaxis].astype(np.float32))
    return out


# --------------------------------------------------------------------------- FLOPs


def conv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds x 2 of every (transposed) convolution in one forward pass, counted
    from the shapes a forward hook sees."""
    total = 0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        kernel = math.prod(mod.kernel_size)
        cin_per_group = mod.in_channels // mod.groups
        if isinstance(mod, nn.ConvTranspose2d | nn.ConvTranspose3d):
            total += 2 * inputs[0].numel() * kernel * mod.out_channels // mod.groups
        else:
            total += 2 * output.numel() * kernel * cin_per_group

    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, convs)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.rand(n, n, device=DEVICE), torch.rand(n, n, device=DEVICE)
    t, _ = timed(lambda: a @ b, repeat)
    return 2 * n**3 / t / 1e9


# --------------------------------------------------------------------------- start-up


def import_torch_seconds() -> float:
    """``import torch`` in a fresh interpreter (second of two runs, so the file cache is warm)."""
    code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]
    return runs[-1]


def load_times(folder: Path) -> tuple[float, float]:
    """Cold load of a checkpoint (read, rebuild, fold BN, convert layout) and a cached call."""
    torch.manual_seed(0)
    model = build_model(SPEC_2D)
    path = folder / "best.pt"
    torch.save({"format": 1, "model": SPEC_2D, "state_dict": model.state_dict(), "epoch": 1, "val_loss": 0.0,
                "workflow": "semantic"}, path)
    import biapipe.training.loop  # noqa: F401  (module import is start-up, not model load)

    clear_predictor_cache()
    t = time.perf_counter()
    load_predictor(path, DEVICE)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    load_predictor(path, DEVICE)
    return cold, time.perf_counter() - t


# --------------------------------------------------------------------------- variants


def model_variants(spec: dict[str, Any]) -> dict[str, tuple[nn.Module, bool]]:
    """The same weights under each inference preparation: name -> (model, channels_last input)."""
    torch.manual_seed(0)
    base = build_model(spec).eval().requires_grad_(False).to(DEVICE)
    fmt = torch.channels_last if spec["ndim"] == 2 else torch.channels_last_3d
    default = prepare_model(copy.deepcopy(base), DEVICE)
    return {
        "plain (NCHW, BN separate)": (base, False),
        "channels-last": (copy.deepcopy(base).to(memory_format=fmt), True),
        "BN folded, NCHW": (fuse_conv_batchnorm(copy.deepcopy(base)), False),
        "channels-last + BN folded (default)": (default, DEVICE.type == "cpu"),
    }


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, Any]]:
    """Best wall time of each case, running the cases round-robin after one warm-up each.

    On a shared machine a burst of other work then slows one round of every case
    instead of all rounds of one case, so the comparison between options stays fair.
    """
    best = {name: (math.inf, fn()) for name, fn in cases.items()}
    for _ in range(max(rounds, 1)):
        for name, fn in cases.items():
            t = time.perf_counter()
            out = fn()
            _sync()
            t = time.perf_counter() - t
            if t < best[name][0]:
                best[name] = (t, out)
    return best


def predict_all(model: nn.Module, images: list[np.ndarray], cfg: dict[str, Any], **kw: Any) -> Callable[[], Any]:
    return lambda: [predict_image(model, im, cfg, softmax, 8, DEVICE, **kw) for im in images]


def bench_2d(args: argparse.Namespace, rows: list[Row]) -> None:
    images = smooth_images(args.n2d, (512, 512))
    small = smooth_images(args.n2d, (256, 256))
    cfg = {**TILED_2D, "threads": args.threads}
    variants = model_variants(SPEC_2D)
    model, cl = variants["channels-last + BN folded (default)"]
    rows.append(("U-Net 2D parameters (depth 3, width 16)", f"{count_parameters(build_model(SPEC_2D)):,}", ""))
    cases = {f"tiled 512², {name}": predict_all(m, images, cfg, channels_last=c) for name, (m, c) in variants.items()}
    for bs in (2, 4, 8):
        cases[f"tiled 512², default, batch_size {bs}"] = predict_all(model, images, {**cfg, "batch_size": bs},
                                                                     channels_last=cl)
    cases["tiled 512², default + bfloat16 autocast"] = predict_all(model, images, cfg, channels_last=cl,
                                                                   dtype=torch.bfloat16)
    cases["whole-image 512², default"] = predict_all(model, images, {**cfg, "mode": "whole"}, channels_last=cl)
    cases["whole-image 512², default + bfloat16 autocast"] = predict_all(
        model, images, {**cfg, "mode": "whole"}, channels_last=cl, dtype=torch.bfloat16)
    if args.compile:
        cases["tiled 512², default + torch.compile"] = compiled_case(model, images, cfg, rows)
    for mode in ("tiled", "whole"):
        cases[f"{mode} 256² images, default"] = predict_all(model, small, {**cfg, "mode": mode}, channels_last=cl)
    results = interleaved(cases, args.rounds)
    reference = results["tiled 512², plain (NCHW, BN separate)"][1]
    for name, (t, outs) in results.items():
        per_image = t / len(outs)
        if name.startswith(("tiled 256", "whole 256")):
            rows.append((f"2D {name}", f"{per_image:.3f} s/img", "BiaPy: 0.28–0.32 s tiled, 0.18–0.21 s whole"))
            continue
        note = f"{per_image / 4:.3f} s per 256²"
        if "bfloat16" in name:
            ref = reference if name.startswith("tiled") else results["whole-image 512², default"][1]
            err = max(float(np.abs(a - b).max()) for a, b in zip(outs, ref))
            note += f"; max abs diff of probabilities vs fp32: {err:.1e}"
        rows.append((f"2D {name}", f"{1 / per_image:.2f} img/s", note))
    flops_gflops(model, rows, args)
    rows.append(("peak RSS after 2D", f"{peak_rss_mib():.0f} MiB", ""))


def compiled_case(model: nn.Module, images: list[np.ndarray], cfg: dict[str, Any], rows: list[Row]) -> Callable:
    compiled = torch.compile(model)
    t = time.perf_counter()
    predict_image(compiled, images[0], cfg, softmax, 8, DEVICE)
    rows.append(("torch.compile: first call (compilation)", f"{time.perf_counter() - t:.1f} s", ""))
    return predict_all(compiled, images, cfg)


def flops_gflops(model: nn.Module, rows: list[Row], args: argparse.Namespace) -> None:
    x = torch.rand(1, 1, 256, 256, device=DEVICE).contiguous(memory_format=torch.channels_last)
    flops = conv_flops(model, x)
    with torch.inference_mode():
        t, _ = timed(lambda: model(x), args.rounds * 3)
    rows.append(("U-Net 2D conv FLOPs per 256² tile", f"{flops / 1e9:.2f} GFLOP", "counted by forward hooks"))
    rows.append(("U-Net 2D forward, 256² tile, achieved", f"{flops / t / 1e9:.1f} GFLOP/s", f"{t * 1000:.1f} ms/tile"))
    rows.append(("fp32 matmul 2048², same device and threads", f"{matmul_gflops():.1f} GFLOP/s", "torch.matmul"))


def bench_3d(args: argparse.Namespace, rows: list[Row]) -> None:
    shape = (64, 256, 256) if not args.quick else (32, 128, 128)
    volume = smooth_images(1, shape)[0]
    cfg = {**TILED_3D, "threads": args.threads}
    variants = model_variants(SPEC_3D)
    tile = torch.rand(1, 1, 32, 128, 128, device=DEVICE)
    for name in ("plain (NCHW, BN separate)", "channels-last + BN folded (default)", "default + bfloat16 autocast"):
        model, cl = variants[name.replace("default + bfloat16 autocast", "channels-last + BN folded (default)")]
        x = tile.contiguous(memory_format=torch.channels_last_3d) if cl else tile
        ctx = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if "bfloat16" in name else nullcontext()
        with torch.inference_mode(), ctx:
            t, _ = timed(lambda m=model, x=x: m(x), min(args.rounds, 2))
        rows.append((f"3D forward 32×128×128 tile, {name}", f"{t * 1000:.0f} ms/tile",
                     f"{conv_flops(model, x) / t / 1e9:.1f} GFLOP/s"))
    model, cl = variants["channels-last + BN folded (default)"]
    t, _ = timed(lambda: predict_image(model, volume, cfg, softmax, 8, DEVICE, channels_last=cl), 1, warmup=False)
    rows.append((f"3D tiled {'×'.join(map(str, shape))}, tile 32×128×128, overlap 0.25",
                 f"{volume.size / t / 1e6:.2f} Mvoxel/s", f"{t:.1f} s per volume"))
    t, _ = timed(lambda: predict_image(model, volume, {**cfg, "mode": "whole"}, softmax, 8, DEVICE,
                                       channels_last=cl), 1, warmup=False)
    rows.append((f"3D whole-volume {'×'.join(map(str, shape))}", f"{volume.size / t / 1e6:.2f} Mvoxel/s",
                 f"{t:.1f} s per volume (no overlap recomputation)"))
    rows.append(("peak RSS after 3D", f"{peak_rss_mib():.0f} MiB", f"volume {volume.nbytes / 2**20:.0f} MiB in"))


def print_table(rows: list[Row], header: str) -> None:
    print(header)
    print()
    print("| measurement | value | note |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (the best is kept)")
    parser.add_argument("--n2d", type=int, default=2, help="2D images per round")
    parser.add_argument("--quick", action="store_true", help="smaller 3D volume (for a smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the CPU is what the table is about)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    rows: list[Row] = [("`import torch` (fresh interpreter)", f"{import_torch_seconds():.2f} s", ""),
                       ("peak RSS after imports", f"{peak_rss_mib():.0f} MiB", "torch, numpy, biapipe")]
    with tempfile.TemporaryDirectory() as tmp:
        cold, cached = load_times(Path(tmp))
    rows.append(("model load from checkpoint (cold / cached)", f"{cold * 1000:.0f} ms / {cached * 1e6:.0f} µs",
                 "load_predictor"))
    bench_2d(args, rows)
    bench_3d(args, rows)
    cpu = _cpu_name()
    load = os.getloadavg()[0]
    header = (f"biapipe predict benchmark — {cpu}, {args.threads} threads, device {DEVICE}, torch {torch.__version__}, "
              f"Python {platform.python_version()}, total {time.perf_counter() - start:.0f} s, "
              f"load average {load_at_start:.1f} at start / {load:.1f} at end")
    print_table(rows, header)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
