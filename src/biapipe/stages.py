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
    start = time.perf_counter()
    try:
        yield logger
        # per-image rules carry no `benchmark:` (it slows planning of thousands of jobs): the log
        # says how long the job took and the process's peak memory so far
        logger.info("done in %.2f s (process peak RSS %.0f MiB)", time.perf_counter() - start, _peak_rss_mib())
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        handler.close()
        logger.removeHandler(handler)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


# --------------------------------------------------------------------------- manifests


def manifest(files: dict[str, list[str]], out_json: str) -> None:
    """A rule's many inputs as one file (see workflow/rules/train.smk: keeps planning linear)."""
    imageio.write_json(out_json, {k: [str(f) for f in v] for k, v in files.items()})


def check_pixels(image_paths: Sequence[str], out_ok: str, cfg: dict[str, Any]) -> None:
    """Scan float images for NaN/Inf block by block (bounded memory, large images too)."""
    from .large.blocks import block_grid, choose_block_shape
    from .large.lazy import open_lazy
    from .normalize import check_finite

    budget = float(cfg["predict"].get("memory_gb") or 4) * 2**30
    for path in image_paths:
        image = open_lazy(path, cfg["ndim"], cfg["data"]["axes"])
        spatial = image.shape[:-1]
        shape = choose_block_shape(spatial, image.chunks[:-1], budget, 4 * image.shape[-1])
        for block in block_grid(spatial, shape):
            check_finite(image[block.slices], path)
    imageio.write_text(out_ok, f"{len(image_paths)} images without NaN/Inf\n")


# --------------------------------------------------------------------------- normalize


def normalize_stats(manifest_json: str, out_json: str, cfg: dict[str, Any]) -> None:
    """Dataset statistics of the training images listed in ``manifest_json`` (key ``images``)."""
    from .normalize import check_finite, dataset_stats

    image_paths = imageio.read_json(manifest_json)["images"]

    def images() -> Iterator[np.ndarray]:
        for p in image_paths:
            img = imageio.read_image(p, cfg["ndim"], cfg["data"]["axes"])
            check_finite(img, p)
            yield img

    imageio.write_json(out_json, dataset_stats(images(), cfg["normalize"]))


def normalize_image(image_path: str, out_zarr: str, cfg: dict[str, Any], stats_json: str | None = None) -> None:
    stats = imageio.read_json(stats_json) if stats_json else None
    out = normalized_image(image_path, cfg, stats)
    imageio.write_zarr(out_zarr, out, chunks=_chunks(out.shape, cfg["ndim"]), attrs={"source": str(image_path)})


# --------------------------------------------------------------------------- targets


def make_targets(label_path: str, image_path: str, out_zarr: str, cfg: dict[str, Any]) -> None:
    task = get_task(cfg)
    label = task.read_label(label_path, image_shape(image_path, cfg))
    target = task.make_targets(label, label_path)
    imageio.write_zarr(out_zarr, target, chunks=_chunks(target.shape, cfg["ndim"]), attrs={"source": str(label_path)})


def prepare(image_path: str, label: str, image_zarr: str, targets_zarr: str, cfg: dict[str, Any],
            stats_json: str | None = None) -> None:
    """A training/validation image: its normalized copy and its targets, in one job."""
    normalize_image(image_path, image_zarr, cfg, stats_json)
    make_targets(label, image_path, targets_zarr, cfg)


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


def predict(model_path: str, image_path: str, out_zarr: str, cfg: dict[str, Any], threads: int | None = None,
            stats_json: str | None = None, image_id: str | None = None, normalized: bool = False) -> None:
    """Predict one image: a raw image is normalized here, in memory (test images have no
    separate normalize job: one job less per image keeps planning for thousands of images
    fast, and predict reruns whenever normalization would anyway); ``normalized`` images
    (validation images, already normalized for training) are read as they are. Images that
    ``predict.large_voxels`` / ``large_images`` mark as large go block by block."""
    cfg = with_threads(cfg, "predict", threads)
    task = get_task(cfg)
    stats = imageio.read_json(stats_json) if stats_json else None
    if not normalized and is_large_image(image_path, image_id, cfg):
        from .large.run import predict_large

        predict_large(model_path, image_path, out_zarr, cfg, stats)
        return
    image = imageio.read_array(image_path) if normalized else normalized_image(image_path, cfg, stats)
    if hasattr(task, "predict_array"):  # whole-image tasks (classification): no tiling
        task.predict_array(model_path, image, out_zarr)
        return
    from .predict import load_predictor, predict_image

    pcfg = cfg["predict"]
    predictor = load_predictor(model_path, pcfg["device"])
    out = predict_image(predictor.model, image.astype(np.float32, copy=False), pcfg, task.activate,
                        predictor.divisor, predictor.device)
    imageio.write_zarr(
        out_zarr,
        out.astype(np.float32, copy=False),
        chunks=_chunks(out.shape, cfg["ndim"]),
        attrs={"model": str(model_path), "mode": pcfg["mode"], "tile_size": list(pcfg["tile_size"]), "overlap": pcfg["overlap"]},
    )


def canonical_shape(image_path: str, cfg: dict[str, Any]) -> tuple[int, ...]:
    """(Z)YXC shape of a raw image from its header (the lazy reader's axes rules)."""
    from .large.lazy import open_lazy

    return open_lazy(image_path, cfg["ndim"], cfg["data"]["axes"]).shape


def check_large_input(image_path: str, cfg: dict[str, Any]) -> None:
    """A large image's axes and storage chunks against the memory budget, from its header."""
    from .large.run import open_raw

    open_raw(image_path, cfg)


def block_ids(image_path: str, cfg: dict[str, Any]) -> list[int]:
    """The prediction blocks of a large image, from its header (one block job each)."""
    from .large.run import plan_for_shape

    return [b.index for b in plan_for_shape(canonical_shape(image_path, cfg), get_task(cfg), cfg["predict"])[1]]


def segment_block_ids(image_path: str, cfg: dict[str, Any]) -> list[int]:
    """The segmentation blocks of a large image, from its header (one job each)."""
    from .large.run import instance_block_ids

    return instance_block_ids(canonical_shape(image_path, cfg), cfg)


def prepare_prediction(image_path: str, store: str, cfg: dict[str, Any], stats_json: str | None = None) -> None:
    """Large image split across jobs: the empty prediction store and the image's statistics."""
    from .large.run import prepare_prediction as make_store

    make_store(image_path, store, cfg, imageio.read_json(stats_json) if stats_json else None)


def predict_block(model_path: str, image_path: str, store: str, block: int, marker: str, cfg: dict[str, Any],
                  threads: int | None = None) -> None:
    """Large image split across jobs: one block into the shared store, then its marker file."""
    from .large.run import predict_block_job

    predict_block_job(model_path, image_path, store, [block], marker, with_threads(cfg, "predict", threads))


def raw_labels(pred_zarr: str, raw_store: str) -> None:
    """Large instance image split across jobs: the empty store of block-local ids."""
    from .large.run import create_raw_labels

    create_raw_labels(pred_zarr, raw_store)


def segment_block(pred_zarr: str, raw_store: str, block: int, record_npz: str, cfg: dict[str, Any]) -> None:
    """Large instance image split across jobs: one block's watershed, merged later at the seams."""
    from .large.run import instance_block_job

    instance_block_job(pred_zarr, raw_store, block, record_npz, cfg)


def normalized_image(image_path: str, cfg: dict[str, Any], stats: dict[str, Any] | None = None) -> np.ndarray:
    """A raw image read in canonical axes, checked for NaN/Inf and normalized (float32)."""
    from .normalize import check_finite, normalize

    img = imageio.read_image(image_path, cfg["ndim"], cfg["data"]["axes"])
    check_finite(img, image_path)
    return normalize(img, cfg["normalize"], stats).astype(np.float32, copy=False)


def is_large_image(image_path: str, image_id: str | None, cfg: dict[str, Any]) -> bool:
    """Whether ``predict.large_voxels``/``large_images`` send this image down the block-wise path."""
    pcfg = cfg["predict"]
    if (image_id or Path(image_path).name) in (pcfg.get("large_images") or []):
        return True
    if not pcfg.get("large_voxels"):
        return False  # no header read: this runs for every test image at every workflow parse
    from .large.run import is_large

    return is_large(canonical_shape(image_path, cfg)[:-1], image_id or Path(image_path).name, pcfg)


# --------------------------------------------------------------------------- postprocess / evaluate


def postprocess(
    pred_zarr: str, out_path: str, cfg: dict[str, Any], image_path: str | None = None, side: dict[str, str] | None = None,
    label: str | None = None, metrics_csv: str | None = None, image_id: str | None = None,
    segmented: tuple[str, list[str]] | None = None,
) -> None:
    """Post-process one prediction and score it against ``label`` (when the image has one).

    ``side`` names the task's extra outputs (e.g. object tables, whose mean intensities are
    those of the raw image at ``image_path``). Scoring happens here, on the output still in
    memory, rather than in a job of its own: one job less per image keeps planning thousands
    of images fast (benchmarks/bench_dag.py), and post-processing is cheap next to the
    prediction it starts from. Predictions made block by block (large images) are
    post-processed and scored block by block; ``segmented`` = (raw-id store, block records)
    when their instance blocks were segmented by separate jobs (rules/large.smk).
    """
    task = get_task(cfg)
    image_id = image_id or Path(pred_zarr).name.removesuffix(".zarr")
    if is_block_prediction(pred_zarr):
        from .large.run import evaluate_large, postprocess_large

        postprocess_large(pred_zarr, out_path, cfg, side, image_path, segmented)
        if metrics_csv and not str(out_path).endswith(".ome.zarr"):  # points: a small table, scored as usual
            write_metrics(task, task.read_output(out_path), label, metrics_csv, image_id, cfg, image_path)
        elif metrics_csv:
            scores = evaluate_large(out_path, label, cfg) if label is not None else {}
            imageio.write_csv(metrics_csv, pd.DataFrame([{"image": image_id, **scores}]))
        return
    output = task.postprocess(imageio.read_array(pred_zarr))
    task.write_output(out_path, output)
    if side:
        image = imageio.read_image(image_path, cfg["ndim"], cfg["data"]["axes"]) if image_path else None
        task.write_side_outputs(side, output, image)
    if metrics_csv:
        write_metrics(task, output, label, metrics_csv, image_id, cfg, image_path)


def write_metrics(task: Any, output: Any, label_path: str | None, out_csv: str, image_id: str, cfg: dict[str, Any],
                  image_path: str | None = None) -> None:
    """One row of scores for one image (only its id when it has no ground truth), plus the
    task's per-object details."""
    if label_path is None:
        imageio.write_csv(out_csv, pd.DataFrame([{"image": image_id}]))
        return
    shape = image_shape(image_path, cfg) if image_path else None
    label = task.read_label(label_path, shape) if shape else imageio.read_label(label_path, cfg["ndim"])
    row = {"image": image_id, **task.evaluate(output, label)}
    # details first: the metrics file is the rule's output, so when it exists the details do too
    task.write_details(out_csv, output, label)
    imageio.write_csv(out_csv, pd.DataFrame([row]))


def is_block_prediction(pred_zarr: str) -> bool:
    """Whether a prediction store was written block by block (large image): its attrs say so."""
    import zarr

    return "blocks" in zarr.open_array(str(pred_zarr), mode="r").attrs


def tune(prediction_zarrs: Sequence[str], label_paths: Sequence[str], out_json: str, cfg: dict[str, Any]) -> None:
    get_task(cfg).tune_files(list(prediction_zarrs), list(label_paths), out_json)


def evaluate(
    output_path: str, label_path: str, out_csv: str, image_id: str, cfg: dict[str, Any], image_path: str | None = None
) -> None:
    """Score a post-processed output file (what ``biapipe evaluate`` does for a folder)."""
    task = get_task(cfg)
    if str(output_path).endswith(".ome.zarr"):  # large image: counted block by block
        from .large.run import evaluate_large

        imageio.write_csv(out_csv, pd.DataFrame([{"image": image_id, **evaluate_large(output_path, label_path, cfg)}]))
        return
    write_metrics(task, task.read_output(output_path), label_path, out_csv, image_id, cfg, image_path)


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
    "manifest": manifest,
    "check_pixels": check_pixels,
    "demo_data": demo_data,
    "normalize_stats": normalize_stats,
    "prepare": prepare,
    "predict": predict,
    "prepare_prediction": prepare_prediction,
    "predict_block": predict_block,
    "raw_labels": raw_labels,
    "segment_block": segment_block,
    "postprocess": postprocess,
    "tune": tune,
    "aggregate": aggregate,
    "classes_table": classes_table,
    "confusion_matrix": confusion_matrix,
}
