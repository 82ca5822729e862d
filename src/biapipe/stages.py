"""One function per workflow stage: read inputs, call the library, write outputs atomically.

Snakemake rules call these and nothing else, so every stage can also be run and tested
from plain Python. Stages never guess axes or formats: they go through imageio/axes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import imageio
from .tasks import get_task

_LOG_LOCK = threading.Lock()


@contextlib.contextmanager
def job_log(path: str | Path | None, name: str) -> Iterator[logging.Logger]:
    """A logger writing to one job's log file; errors are logged before they propagate.

    Per-image jobs may run as threads of one process, so each job gets its own logger
    object instead of reconfiguring the root logger.
    """
    with _LOG_LOCK:
        logger = logging.getLogger(f"biapipe.job.{name}.{threading.get_ident()}.{time.monotonic_ns()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler: logging.Handler
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="w")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        yield logger
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        handler.close()
        logger.removeHandler(handler)


def run(name: str, *args: Any, log: str | None = None) -> None:
    """Run stage ``name`` with its output logged to ``log``; keeps Snakemake run blocks one line."""
    with job_log(log, name):
        STAGES[name](*args)


def _chunks(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Chunk (Z)YXC arrays in spatial blocks with all channels together."""
    spatial = (16, 256, 256)[3 - ndim:] if ndim == 3 else (512, 512)
    return tuple(min(s, c) for s, c in zip(shape[:-1], spatial)) + (shape[-1],)


# --------------------------------------------------------------------------- demo data


def demo_data(cfg: dict[str, Any]) -> None:
    from .demo import make_classification_demo, make_demo_data

    d = cfg["data"]["demo"]
    if cfg["workflow"] == "classification":  # class folders; n_* count images per class
        make_classification_demo(d["folder"], cfg["ndim"], d["n_train"], d["n_val"], d["n_test"], d["size"], cfg["seed"])
        return
    make_demo_data(d["folder"], cfg["ndim"], d["n_train"], d["n_val"], d["n_test"], d["size"], cfg["seed"])


# --------------------------------------------------------------------------- normalize


def normalize_stats(image_paths: Sequence[str], out_json: str, cfg: dict[str, Any]) -> None:
    from .normalize import check_finite, dataset_stats

    def images() -> Iterator[np.ndarray]:
        for p in image_paths:
            img = imageio.read_image(p, cfg["ndim"], cfg["data"]["axes"])
            check_finite(img, p)
            yield img

    imageio.write_json(out_json, dataset_stats(images(), cfg["normalize"]))


def normalize_image(image_path: str, out_zarr: str, cfg: dict[str, Any], stats_json: str | None = None) -> None:
    from .normalize import check_finite, normalize

    img = imageio.read_image(image_path, cfg["ndim"], cfg["data"]["axes"])
    check_finite(img, image_path)
    stats = imageio.read_json(stats_json) if stats_json else None
    out = normalize(img, cfg["normalize"], stats).astype(np.float32, copy=False)
    imageio.write_zarr(out_zarr, out, chunks=_chunks(out.shape, cfg["ndim"]), attrs={"source": str(image_path)})


# --------------------------------------------------------------------------- targets


def make_targets(label_path: str, image_path: str, out_zarr: str, cfg: dict[str, Any]) -> None:
    task = get_task(cfg)
    label = task.read_label(label_path, image_shape(image_path, cfg))
    target = task.make_targets(label, label_path)
    imageio.write_zarr(out_zarr, target, chunks=_chunks(target.shape, cfg["ndim"]), attrs={"source": str(label_path)})


def image_shape(image_path: str, cfg: dict[str, Any]) -> tuple[int, ...]:
    """Spatial (Z)YX shape of a raw image, from its header."""
    from .validate import probe, spatial_shape

    shape, dtype = probe(image_path)
    return spatial_shape(shape, dtype, cfg["ndim"], image_path, cfg["data"]["axes"])


# --------------------------------------------------------------------------- train


def train(
    train_images: Sequence[str],
    train_targets: Sequence[str],
    val_images: Sequence[str],
    val_targets: Sequence[str],
    model_dir: str,
    cfg: dict[str, Any],
    log_path: str | None = None,
    threads: int | None = None,
) -> None:
    from .train import train_model

    cfg = with_threads(cfg, "train", threads)
    with job_log(log_path, "train") as log:
        train_model(
            cfg,
            get_task(cfg),
            list(zip(train_images, train_targets)),
            list(zip(val_images, val_targets)),
            Path(model_dir),
            log=log,
        )


# --------------------------------------------------------------------------- predict


def with_threads(cfg: dict[str, Any], section: str, threads: int | None) -> dict[str, Any]:
    """``cfg`` with the thread count Snakemake actually granted the job (it scales a rule's
    ``threads`` down to ``--cores``), so torch never runs more threads than the job holds."""
    if not threads:
        return cfg
    return {**cfg, section: {**cfg[section], "threads": int(threads)}}


def predict(model_path: str, image_zarr: str, out_zarr: str, cfg: dict[str, Any], threads: int | None = None) -> None:
    from .predict import load_predictor, predict_image

    cfg = with_threads(cfg, "predict", threads)
    task = get_task(cfg)
    if hasattr(task, "predict_file"):  # whole-image tasks (classification): no tiling
        task.predict_file(model_path, image_zarr, out_zarr)
        return
    pcfg = cfg["predict"]
    predictor = load_predictor(model_path, pcfg["device"])
    image = imageio.read_array(image_zarr).astype(np.float32, copy=False)
    out = predict_image(predictor.model, image, pcfg, task.activate, predictor.divisor, predictor.device)
    imageio.write_zarr(
        out_zarr,
        out.astype(np.float32, copy=False),
        chunks=_chunks(out.shape, cfg["ndim"]),
        attrs={"model": str(model_path), "mode": pcfg["mode"], "tile_size": list(pcfg["tile_size"]), "overlap": pcfg["overlap"]},
    )


# --------------------------------------------------------------------------- postprocess / evaluate


def postprocess(
    pred_zarr: str, out_path: str, cfg: dict[str, Any], image_zarr: str | None = None, side: dict[str, str] | None = None
) -> None:
    """Post-process one prediction; ``side`` names the task's extra outputs (e.g. object tables)."""
    task = get_task(cfg)
    output = task.postprocess(imageio.read_array(pred_zarr))
    task.write_output(out_path, output)
    if side:
        image = imageio.read_array(image_zarr) if image_zarr else None
        task.write_side_outputs(side, output, image)


def tune(prediction_zarrs: Sequence[str], label_paths: Sequence[str], out_json: str, cfg: dict[str, Any]) -> None:
    get_task(cfg).tune_files(list(prediction_zarrs), list(label_paths), out_json)


def evaluate(
    output_path: str, label_path: str, out_csv: str, image_id: str, cfg: dict[str, Any], image_path: str | None = None
) -> None:
    task = get_task(cfg)
    output = task.read_output(output_path)
    shape = image_shape(image_path, cfg) if image_path else None
    label = task.read_label(label_path, shape) if shape else imageio.read_label(label_path, cfg["ndim"])
    row = {"image": image_id, **task.evaluate(output, label)}
    # details first: the metrics file is the rule's output, so when it exists the details do too
    task.write_details(out_csv, output, label)
    imageio.write_csv(out_csv, pd.DataFrame([row]))


def aggregate(metric_csvs: Sequence[str], out_metrics: str, out_summary: str, cfg: dict[str, Any]) -> None:
    """One row per image in metrics.csv; dataset figures in summary.csv."""
    task = get_task(cfg)
    if metric_csvs:
        table = pd.concat([pd.read_csv(p) for p in metric_csvs], ignore_index=True)
        table = table.sort_values("image", kind="stable").reset_index(drop=True)
    else:
        table = pd.DataFrame({"image": []})
    imageio.write_csv(out_metrics, table)
    summary = task.summarize(table) if len(table) else pd.DataFrame([{"n_images": 0}])
    summary.insert(0, "experiment", cfg["experiment"])
    imageio.write_csv(out_summary, summary)


def classes_table(per_image_csvs: Sequence[str], out_csv: str, cfg: dict[str, Any]) -> None:
    """Classification: every test image's predicted class and probabilities in one ``classes.csv``."""
    from .tasks.classification import write_classes_table

    write_classes_table(per_image_csvs, out_csv)


def confusion_matrix(metrics_csv: str, out_csv: str, out_png: str, cfg: dict[str, Any]) -> None:
    """Classification: the confusion matrix of the scored test images, as CSV and PNG."""
    from .tasks.classification import write_confusion_matrix

    write_confusion_matrix(metrics_csv, out_csv, out_png, cfg)


STAGES = {
    "demo_data": demo_data,
    "normalize_stats": normalize_stats,
    "normalize": normalize_image,
    "targets": make_targets,
    "predict": predict,
    "postprocess": postprocess,
    "tune": tune,
    "evaluate": evaluate,
    "aggregate": aggregate,
    "classes_table": classes_table,
    "confusion_matrix": confusion_matrix,
}
