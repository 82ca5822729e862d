"""Restoration quality for one training budget: denoising, super-resolution, image-to-image.

What it measures, side by side in one run, every network trained for the same wall time
(``--minutes``, per method; the budget is turned into epochs by timing two calibration epochs
first, so the cosine schedule ends within it):

- denoising, FMD Confocal_BPAE_B (``../shared/data/fmd_confocal_bpae_nuclei_denoise``), test
  field ``fov19`` against its 50-frame average: the noisy input, a Gaussian filter and scikit-image non-local means (each strength chosen on
  the validation fields),
  CAREamics N2V and CARE (when installed in a separate venv, ``--careamics-python``), and
  biapipe supervised, Noise2Noise (targets: the second noisy frame) and Noise2Void (noisy
  images only). PSNR/SSIM on the 8-bit range (255, as FMD reports: the input is 31.8 dB).
- super-resolution x2 on the FMD clean images: the low-resolution input is a camera-like 2x2
  binning (mean) of the clean image; bicubic (scikit-image ``resize``, order 3) vs biapipe.
- image-to-image, ISL (one phase-contrast z-stack, 13 planes as channels -> DAPI, MAP2, NFH):
  trained on three 512x512 quadrants, scored on the held-out bottom-right one: Pearson r and
  SSIM of DAPI (range: the ground truth's min..max).

biapipe runs go through the workflow's own stage functions (prepare -> train -> predict ->
postprocess -> metrics) in a temporary folder, without Snakemake. Training and prediction
times are wall times on this machine; predictions use ``best.pt`` (lowest validation loss;
ISL: training loss, it has no validation quadrant).

Run: .venv/bin/python benchmarks/bench_restoration.py [--minutes 8] [--careamics-python /work/venv-careamics/bin/python]
(prints one markdown table)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# Before torch (and CAREamics' interpreter, which inherits it) starts its OpenMP threads: idle
# threads sleep instead of spinning, which on a shared, loaded machine made each epoch up to
# 7 times slower (the spinning threads take the cores the working ones wait for).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import tifffile
import torch
from bench_predict import _cpu_name

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.data.normalize import dataset_stats
from biapipe.inference.predictor import clear_predictor_cache
from biapipe.tasks import get_task
from biapipe.tasks.restoration.metrics import restoration_metrics
from biapipe.tasks.restoration.resample import bin_mean
from biapipe.training.loop import train_model
from biapipe.workflow import stages

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FMD = DATA / "fmd_confocal_bpae_nuclei_denoise"
ISL = DATA / "isl_phase_to_fluorescence_neurons"
TEST, VAL = "fov19", ("fov17", "fov18")

#: Shared by every biapipe run.
BASE_TRAIN: dict[str, Any] = {
    "model": {"arch": "unet", "depth": 3, "width": 16},  # norm: the schema default (Noise2Void: none)
    "patch_size": [64, 64], "batch_size": 8, "patches_per_epoch": 64, "val_patches": 16,
    "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001},
    "scheduler": "cosine", "warmup_epochs": 1, "device": "cpu",
}


def config(workflow: str, train_dir: Path, targets: dict[str, Any], epochs: int, threads: int,
           loss: dict[str, float], axes: str | None = None, data_range: Any = "dtype") -> Any:
    return validate_config({
        "experiment": f"bench_{workflow}", "workflow": workflow, "ndim": 2, "seed": 0,
        "data": {"train": {"images": str(train_dir / "images"), "targets": str(train_dir / "targets")}, "axes": axes},
        "normalize": {"method": "percentile", "low": 1.0, "high": 99.8, "scope": "dataset"},
        "targets": {workflow: targets},
        "train": {**BASE_TRAIN, "epochs": epochs, "threads": threads, "loss": loss,
                  "early_stopping": {"patience": epochs + 1}},
        "predict": {"tile_size": [256, 256], "overlap": 0.25, "threads": threads, "device": "cpu"},
        "evaluate": {"restoration": {"data_range": data_range}},
    })


# --------------------------------------------------------------------------- biapipe through its stages


def prepare(cfg: Any, pairs: list[tuple[str, str]], work: Path) -> tuple[list[tuple[str, str]], str]:
    """Dataset normalization statistics and one prepare stage per (image, target)."""
    task = get_task(cfg)
    axes = cfg["data"]["axes"]
    stats = work / "stats.json"
    train_raw = (task.training_input(imageio.read_image(i, 2, axes), imageio.image_id(i)) for i, _ in pairs)
    imageio.write_json(stats, dataset_stats(train_raw, cfg["normalize"]))
    out = []
    for image, target in pairs:
        name = imageio.image_id(image)
        img_out, tgt_out = work / "normalized" / f"{name}.zarr", work / "targets" / f"{name}.zarr"
        stages.prepare(image=image, label=target, image_out=str(img_out), targets_out=str(tgt_out), task=task,
                       axes=axes, normalize=cfg["normalize"], memory_gb=cfg["train"]["memory_gb"],
                       patch_size=cfg["train"]["patch_size"], stats=str(stats))
        out.append((str(img_out), str(tgt_out)))
    return out, str(stats)


def epochs_for_budget(cfg: Any, train: list, val: list, work: Path, minutes: float) -> int:
    """Time two calibration epochs; as many epochs as fit in the budget after the set-up."""
    start = time.perf_counter()
    train_model(cfg.with_value("train.epochs", 2), get_task(cfg), train, val, work / "calibration")
    total = time.perf_counter() - start
    per_epoch = float(pd.read_csv(work / "calibration" / "history.csv")["seconds"].mean())
    return max(1, math.floor((minutes * 60 - max(0.0, total - 2 * per_epoch)) / per_epoch))


def biapipe_run(cfg: Any, train_pairs: list, val_pairs: list, test_image: str, test_truth: str, work: Path,
                minutes: float) -> dict[str, Any]:
    """Train for the budget, predict the test image, score it; returns figures and times."""
    prepared, stats = prepare(cfg, train_pairs + val_pairs, work)
    train, val = prepared[:len(train_pairs)], prepared[len(train_pairs):]
    cfg = cfg.with_value("train.epochs", epochs_for_budget(cfg, train, val, work, minutes))
    cfg = cfg.with_value("train.early_stopping.patience", cfg["train"]["epochs"] + 1)
    task = get_task(cfg)
    start = time.perf_counter()
    train_model(cfg, task, train, val, work / "model")
    train_s = time.perf_counter() - start
    clear_predictor_cache()
    pred = work / "prediction.zarr"
    start = time.perf_counter()
    stages.predict(model=str(work / "model" / "best.pt"), image=test_image, out=str(pred), task=task,
                   axes=cfg["data"]["axes"], normalize=cfg["normalize"], predict=cfg["predict"], stats=stats)
    output = task.postprocess(imageio.read_array(pred))
    predict_s = time.perf_counter() - start
    truth = task.read_label(test_truth, None)
    return {**task.evaluate(output, truth), "train_s": train_s, "predict_s": predict_s,
            "epochs": cfg["train"]["epochs"], "output": output}


# --------------------------------------------------------------------------- the data


def fmd_pairs(target_folder: str, images: Path | None = None) -> tuple[list, list]:
    names = sorted(p.stem for p in (FMD / "images").glob("*.tif") if p.stem != TEST)
    pair = lambda n: (str((images or FMD / "images") / f"{n}.tif"), str(FMD / target_folder / f"{n}.tif"))  # noqa: E731
    return [pair(n) for n in names if n not in VAL], [pair(n) for n in VAL]


def sr_data(work: Path) -> Path:
    """FMD clean images (HR) and their 2x2 mean binning (LR, float32), in images/ + targets/."""
    for p in sorted((FMD / "targets").glob("*.tif")):
        high = tifffile.imread(p)
        imageio.write_tiff(work / "images" / p.name, bin_mean(high[..., None], (2, 2))[..., 0])
        imageio.write_tiff(work / "targets" / p.name, high)
    return work


def isl_data(work: Path) -> Path:
    """The ISL field cut into quadrants (CYX): q3 (bottom right) is the test quadrant."""
    phase = tifffile.imread(next((ISL / "images").glob("*.tif")))
    stains = tifffile.imread(next((ISL / "targets").glob("*.tif")))
    for q, (ys, xs) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        window = (slice(None), slice(ys * 512, ys * 512 + 512), slice(xs * 512, xs * 512 + 512))
        imageio.write_tiff(work / "images" / f"q{q}.tif", phase[window])
        imageio.write_tiff(work / "targets" / f"q{q}.tif", stains[window])
    return work


# --------------------------------------------------------------------------- baselines


def fmd_truth() -> np.ndarray:
    return tifffile.imread(FMD / "targets" / f"{TEST}.tif")[..., None]


def score(output: np.ndarray, truth: np.ndarray, data_range: Any = "dtype", names: tuple = ("c",)) -> dict[str, float]:
    return restoration_metrics(np.asarray(output, dtype=np.float32), truth, list(names), data_range)


def classical(method: str) -> dict[str, Any]:
    """A classical filter whose one strength parameter is chosen on the validation fields.

    ``gaussian``: scipy's Gaussian filter, sigma in pixels; ``nlm``: scikit-image non-local
    means with h a multiple of the noise sigma (estimated from the median absolute deviation of
    horizontal neighbour differences; scikit-image's estimate_sigma needs PyWavelets). The
    strength with the best mean PSNR over fov17/fov18 is applied to fov19, as a network picks
    its checkpoint on them: a floor tuned on the test field would flatter it.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.restoration import denoise_nl_means

    def run(noisy: np.ndarray, strength: float) -> np.ndarray:
        if method == "gaussian":
            return gaussian_filter(noisy, strength)
        sigma = float(np.median(np.abs(np.diff(noisy, axis=1))) / 0.6745 / np.sqrt(2))
        return denoise_nl_means(noisy, h=strength * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)

    grid = {"gaussian": (0.6, 0.8, 1.0, 1.2, 1.5), "nlm": (1.0, 2.0, 4.0, 8.0, 12.0, 16.0)}[method]
    read = lambda folder, name: tifffile.imread(FMD / folder / f"{name}.tif").astype(np.float32)  # noqa: E731
    val = [(read("images", v), read("targets", v)[..., None]) for v in VAL]
    best = max(grid, key=lambda k: float(np.mean([score(run(n, k)[..., None], t)["psnr"] for n, t in val])))
    noisy = read("images", TEST)
    start = time.perf_counter()
    out = run(noisy, best)
    seconds = time.perf_counter() - start
    name = "sigma" if method == "gaussian" else "h/sigma"
    return {**score(out[..., None], fmd_truth()), "train_s": 0.0, "predict_s": seconds,
            "note": f"{name} {best:g}, chosen on {'/'.join(VAL)}"}


def linear_sr(sr: Path, size: int = 11) -> dict[str, Any]:
    """The best ``size`` x ``size`` linear x2 super-resolution for this data: for each of the four
    output pixels of a low-resolution pixel, one filter of its low-resolution neighbourhood (and
    an offset), fitted by least squares on the training fields (not fov17/18/19). A network's gain
    beyond it is what non-linearity adds."""
    def windows(low: np.ndarray) -> np.ndarray:
        r = size // 2
        padded = np.pad(low.astype(np.float64), r, mode="reflect")
        view = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
        return np.concatenate([view.reshape(-1, size * size), np.ones((low.size, 1))], axis=1)

    def phases(high: np.ndarray) -> np.ndarray:  # the 4 output pixels of each low-resolution pixel
        return np.stack([high[a::2, b::2].ravel() for a in (0, 1) for b in (0, 1)], axis=1).astype(np.float64)

    names = [p.stem for p in sorted((sr / "images").glob("*.tif")) if p.stem not in (TEST, *VAL)]
    start = time.perf_counter()
    x = np.concatenate([windows(tifffile.imread(sr / "images" / f"{n}.tif")) for n in names])
    y = np.concatenate([phases(tifffile.imread(sr / "targets" / f"{n}.tif")) for n in names])
    weights = np.linalg.lstsq(x, y, rcond=None)[0]
    train_s = time.perf_counter() - start
    low = tifffile.imread(sr / "images" / f"{TEST}.tif")
    start = time.perf_counter()
    values = windows(low) @ weights
    out = np.zeros((low.shape[0] * 2, low.shape[1] * 2))
    for k, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[a::2, b::2] = values[:, k].reshape(low.shape)
    return {**score(out[..., None], fmd_truth()), "train_s": train_s, "predict_s": time.perf_counter() - start,
            "note": f"{size}x{size} filters fitted on the {len(names)} training fields"}


def careamics_run(python: str, mode: str, minutes: float, threads: int, work: Path) -> dict[str, Any]:
    """CAREamics in its own interpreter (benchmarks/careamics_runner.py); an error row says why it failed."""
    out = work / f"careamics_{mode}.tif"
    cmd = [python, str(Path(__file__).with_name("careamics_runner.py")), "--mode", mode, "--minutes", str(minutes),
           "--threads", str(threads), "--data", str(FMD), "--test", TEST, "--val", *VAL, "--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=minutes * 60 * 3 + 600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": last[-1] if last else f"exit {proc.returncode}"}
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**score(tifffile.imread(out)[..., None], fmd_truth()), **times}


# --------------------------------------------------------------------------- the table


def row(task: str, method: str, r: dict[str, Any], budget: str) -> str:
    if "error" in r:
        return f"| {task} | {method} | — | — | — | — | not run: {r['error']} |"
    return (f"| {task} | {method} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['train_s'] / 60:.1f} | "
            f"{r['predict_s']:.2f} | {budget}{r.get('note', '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time per method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--careamics-python", default="/work/venv-careamics/bin/python",
                        help="interpreter of a separate venv with careamics (skipped when absent)")
    parser.add_argument("--only", nargs="*", default=None, help="subset: nlm gaussian careamics (careamics_n2v, careamics_care) supervised n2n n2v sr isl")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    want = lambda key: args.only is None or key in args.only  # noqa: E731
    loss = {"l1": 0.0, "l2": 1.0, "ssim": 0.0}
    budget = f"{args.minutes:g} min"
    rows = ["| task | method | PSNR (dB) | SSIM | training (min) | prediction (s) | notes |",
            "|---|---|---|---|---|---|---|"]
    noisy = tifffile.imread(FMD / "images" / f"{TEST}.tif")[..., None]
    rows.append(row("denoise fov19", "noisy input", {**score(noisy, fmd_truth()), "train_s": 0, "predict_s": 0}, "—"))
    with tempfile.TemporaryDirectory(prefix="bench-restoration-") as tmp:
        work = Path(tmp)
        if want("nlm"):
            rows.append(row("denoise fov19", "scikit-image non-local means", classical("nlm"), "no training, "))
        if want("gaussian"):
            rows.append(row("denoise fov19", "Gaussian filter (scipy)", classical("gaussian"), "no training, "))
        for mode, name in (("n2v", "CAREamics N2V"), ("care", "CAREamics CARE (supervised)")):
            if not (want("careamics") or want(f"careamics_{mode}")):
                continue
            if not Path(args.careamics_python).exists():
                rows.append(row("denoise fov19", name, {"error": f"no CAREamics interpreter at "
                                                                 f"{args.careamics_python}"}, ""))
                continue
            rows.append(row("denoise fov19", name, careamics_run(args.careamics_python, mode, args.minutes,
                                                                  args.threads, work), budget))
        test_image, test_truth = str(FMD / "images" / f"{TEST}.tif"), str(FMD / "targets" / f"{TEST}.tif")
        runs = [("supervised", "targets", "biapipe supervised"), ("noise2noise", "noisy_frame1", "biapipe Noise2Noise"),
                ("noise2void", "images", "biapipe Noise2Void")]
        keys = {"supervised": "supervised", "noise2noise": "n2n", "noise2void": "n2v"}
        for mode, folder, name in runs:
            if not want(keys[mode]):
                continue
            cfg = config("denoising", FMD, {"mode": mode, "mask_fraction": 0.01, "replace": "median", "channels": 1}, 2,
                         args.threads, loss)
            train, val = fmd_pairs(folder)
            r = biapipe_run(cfg, train, val, test_image, test_truth, work / mode, args.minutes)
            rows.append(row("denoise fov19", name, {**r, "note": f", {r['epochs']} epochs"}, budget))
        if want("sr"):
            sr = sr_data(work / "sr")
            low = tifffile.imread(sr / "images" / f"{TEST}.tif")
            from skimage.transform import resize

            start = time.perf_counter()
            bicubic = resize(low, (low.shape[0] * 2, low.shape[1] * 2), order=3, mode="edge", anti_aliasing=False)
            rows.append(row("SR x2 fov19 (2x2 binning)", "bicubic (scikit-image)",
                            {**score(bicubic[..., None], fmd_truth()), "train_s": 0,
                             "predict_s": time.perf_counter() - start}, "no training"))
            rows.append(row("SR x2 fov19 (2x2 binning)", "least-squares linear filters", linear_sr(sr), "fitted, "))
            cfg = config("super_resolution", sr, {"factor": 2, "channels": 1}, 2, args.threads, {"l1": 1.0, "l2": 0.0, "ssim": 0.0})
            names = sorted(p.stem for p in (sr / "images").glob("*.tif") if p.stem != TEST)
            pair = lambda n: (str(sr / "images" / f"{n}.tif"), str(sr / "targets" / f"{n}.tif"))  # noqa: E731
            r = biapipe_run(cfg, [pair(n) for n in names if n not in VAL], [pair(n) for n in VAL],
                            str(sr / "images" / f"{TEST}.tif"), str(sr / "targets" / f"{TEST}.tif"), work / "srrun",
                            args.minutes)
            rows.append(row("SR x2 fov19 (2x2 binning)", "biapipe super_resolution", {**r, "note": f", {r['epochs']} epochs"},
                            budget))
        if want("isl"):
            isl = isl_data(work / "isl")
            cfg = config("image_to_image", isl, {"channels": ["DAPI", "MAP2", "NFH"]}, 2, args.threads,
                         {"l1": 1.0, "l2": 0.0, "ssim": 0.0}, axes="CYX", data_range="minmax")
            cfg = cfg.with_value("train.patch_size", [128, 128])
            pair = lambda q: (str(isl / "images" / f"q{q}.tif"), str(isl / "targets" / f"q{q}.tif"))  # noqa: E731
            r = biapipe_run(cfg, [pair(0), pair(1), pair(2)], [], *pair(3), work / "islrun", args.minutes)
            note = (f", {r['epochs']} epochs; DAPI Pearson r {r['pearson_r_DAPI']:.3f} (MAP2 {r['pearson_r_MAP2']:.3f}, "
                    f"NFH {r['pearson_r_NFH']:.3f})")
            dapi = {"psnr": r["psnr_DAPI"], "ssim": r["ssim_DAPI"], "train_s": r["train_s"], "predict_s": r["predict_s"],
                    "note": note}
            rows.append(row("ISL phase -> DAPI, quadrant 4", "biapipe image_to_image", dapi, budget))
    print(f"\nTraining budget: {budget} of wall time per trained method on {args.threads} threads "
          f"({torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), {_cpu_name()}, "
          f"load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end.\n")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
