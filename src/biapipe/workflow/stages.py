"""One function per workflow rule: read inputs, call the library, write outputs atomically.

Rules call these with keyword arguments and nothing else, so every stage can also be run
and tested from plain Python. Each stage receives the task (what differs between
workflows) and the config sections it uses. Why test images are normalized inside
``predict`` and scored inside ``postprocess``: docs/architecture.md, "planning cost".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import imageio
from ..core.config import Section
from ..data.blocks import block_grid, choose_block_shape
from ..data.lazy import open_lazy, read_region
from ..data.normalize import check_finite, normalize
from ..data.scale import resize_image, resize_labels, scale_factor, scaled_shape, stored_scale
from ..data.samples import Sample
from ..data.sources import index_chunks
from ..data.validate import probe, spatial_shape
from ..large.plan import is_block_prediction
from ..large.prepare import dataset_stats_bounded, fits, prepare_blockwise
from ..tasks.base import Task
from .joblog import stage
from .prediction import predict_array, predict_rescaled, write_prediction, zarr_chunks
from .report import report_images, write_report
from .smk import make_plan


def normalized_image(image: str, ndim: int, axes: str | None, cfg_normalize: dict[str, Any],
                     stats: dict[str, Any] | None = None) -> np.ndarray:
    """A raw image read in canonical axes, checked for NaN/Inf and normalized (float32)."""
    return normalized_array(imageio.read_image(image, ndim, axes), image, cfg_normalize, stats)


def normalized_array(img: np.ndarray, path: str, cfg_normalize: dict[str, Any],
                     stats: dict[str, Any] | None = None) -> np.ndarray:
    """A raw (Z)YXC array from ``path``, checked for NaN/Inf and normalized (float32)."""
    check_finite(img, path)
    return normalize(img, cfg_normalize, stats).astype(np.float32, copy=False)


def image_shape(image: str, ndim: int, axes: str | None) -> tuple[int, ...]:
    """Spatial (Z)YX shape of a raw image, from its header."""
    shape, dtype = probe(image)
    return spatial_shape(shape, dtype, ndim, image, axes)


def with_threads(section: Section, threads: int | None) -> Section:
    """``section`` with the thread count Snakemake actually granted the job (it scales a rule's
    ``threads`` down to ``--cores``), so torch never runs more threads than the job holds."""
    return section.replace(threads=int(threads)) if threads else section


def _stats(path: str | None) -> dict[str, Any] | None:
    return imageio.read_json(path) if path else None


# --------------------------------------------------------------------------- inputs


@stage
def demo_data(*, task: Task) -> None:
    task.write_demo()


@stage
def write_plan(*, record: dict[str, Any], out: str) -> None:
    """model/plan.json: the planned keys with their values and reasons, and the data's fingerprint."""
    imageio.write_json(out, record)


@stage
def manifest(*, files: dict[str, list[str]], out: str) -> None:
    """A rule's many inputs as one file (rules/train.smk: keeps planning linear)."""
    imageio.write_json(out, {k: [str(f) for f in v] for k, v in files.items()})


def check_test_data(images: Sequence[str], labels: Sequence[str | None], task: Task, axes: str | None,
                     memory_gb: float, large: Sequence[bool]) -> None:
    """Read every test image (block by block: bounded memory, large images too) and every
    test label of an ordinary image, so a truncated file, NaN/Inf pixels or label values the
    task cannot score stop the run before training, naming the file."""
    for path, label, is_large in zip(images, labels, large, strict=True):
        image = open_lazy(path, task.ndim, axes)
        spatial = image.shape[:-1]
        shape = choose_block_shape(spatial, image.chunks[:-1], memory_gb * 2**30, 4 * image.shape[-1])
        for block in block_grid(spatial, shape):
            check_finite(read_region(image, block.slices, path), path)
        if label is not None and task.labels_are_files and not is_large:
            task.check_label(label, spatial)


@stage
def normalize_stats(*, manifest: str, out: str, ndim: int, axes: str | None, normalize: dict[str, Any],
                    memory_gb: float) -> None:
    """Dataset statistics of the training images listed in ``manifest`` (key ``images``); an
    image larger than ``memory_gb`` is read block by block."""
    paths = imageio.read_json(manifest)["images"]
    imageio.write_json(out, dataset_stats_bounded(paths, ndim, axes, normalize, memory_gb))


@stage
def prepare(*, image: str, label: str, image_out: str, targets_out: str, task: Task, axes: str | None,
            normalize: dict[str, Any], memory_gb: float, patch_size: Sequence[int], stats: str | None = None,
            object_diameter: float | None = None, logger: logging.Logger) -> None:
    """A training/validation image: its normalized copy (as the network sees it: the task's
    ``training_input`` and ``network_input``) and its targets, in one job; block by block when
    preparing it whole would not fit ``memory_gb`` (tasks that prepare by block), then stored in
    chunks that training reads patch by patch (data/sources.py). With ``object_diameter``
    (``train.object_diameter``) the image and its label are first zoomed so that the label's
    typical object has that diameter; the stores record the zoom, the original shape and the
    original diameter."""
    if task.prepares_by_block and not fits(image, task.ndim, axes, memory_gb):
        if object_diameter:
            logger.info("%s is prepared block by block, at its own scale (train.object_diameter applies to "
                        "images that fit train.memory_gb)", image)
        prepare_blockwise(image, label, image_out, targets_out, task, axes, normalize, _stats(stats), memory_gb,
                          lambda shape: index_chunks(shape[:-1], patch_size) + tuple(shape[-1:]))
        return
    raw = task.training_input(imageio.read_image(image, task.ndim, axes), imageio.image_id(image))
    norm = np.asarray(task.network_input(normalized_array(raw, image, normalize, _stats(stats))))
    truth = task.read_label(label, image_shape(image, task.ndim, axes))
    source_shape = list(norm.shape[:-1])
    diameter = task.label_diameter(truth, label) if task.measures_objects else None
    factor = scale_factor(object_diameter, diameter)
    if factor != 1.0:
        shape = scaled_shape(norm.shape[:-1], factor)
        norm, truth = resize_image(norm, shape), resize_labels(truth, shape)
        logger.info("object diameter %.1f px -> %g px: zoomed by %.3g to %s", diameter, object_diameter, factor,
                    "x".join(map(str, shape)))
    scale = {"scale": factor, "source_shape": source_shape,
             **({"object_diameter": diameter} if diameter is not None else {})}
    imageio.write_zarr(image_out, norm, chunks=zarr_chunks(norm.shape, task.ndim),
                       attrs={"source": str(image), **scale})
    target = task.make_targets(truth, label)
    imageio.write_zarr(targets_out, target, chunks=zarr_chunks(target.shape, task.ndim),
                       attrs={"source": str(label), **scale})


# --------------------------------------------------------------------------- train


@stage
def train(*, manifest: str, model_dir: str, cfg: dict[str, Any], task: Task, threads: int | None = None,
          stats: str | None = None, logger: logging.Logger) -> None:
    """Check the test data, then train. The test images are read here, in the train job, rather
    than by a job of their own that training waits for: such a job would make every later change
    of a test image retrain the model (docs/architecture.md, "bad input before compute").
    Dataset statistics (``stats``) go into the config, which the checkpoint records."""
    from ..training.launch import train as run_training

    if stats:
        cfg = cfg.with_value("normalize.stats", imageio.read_json(stats))

    plan = make_plan(cfg, ".")
    ids = plan.ids("test")
    if ids:
        logger.info("reading the %d test images and their labels before training", len(ids))
        check_test_data([plan.test_samples[i].image for i in ids], [plan.test_samples[i].label for i in ids],
                         task, cfg["data"]["axes"], cfg["predict"]["memory_gb"], [i in plan.large_ids for i in ids])
    files = imageio.read_json(manifest)
    cfg = cfg.replace(train=with_threads(cfg["train"], threads))
    run_training(cfg, task.__class__(cfg), list(zip(files["train_images"], files["train_targets"])),
                 list(zip(files["val_images"], files["val_targets"])), Path(model_dir), log=logger)


# --------------------------------------------------------------------------- predict


@stage
def predict(*, model: str, image: str, out: str, task: Task, axes: str | None, normalize: dict[str, Any],
            predict: Section, threads: int | None = None, stats: str | None = None, large: bool = False,
            normalized: bool = False, logger: logging.Logger) -> None:
    """Predict one image. A raw image is normalized here, in memory; ``normalized`` images
    (validation images, prepared for training) are read as they are, at the scale they were
    prepared at, and their prediction is zoomed back to the original grid; ``large`` images go
    block by block (``predict.large_voxels`` / ``large_images``), at their own scale."""
    pcfg = with_threads(predict, threads)
    if large:
        from ..large.run import predict_large

        if pcfg["rescale"] and task.measures_objects:
            logger.info("predict.rescale does not apply to images predicted block by block: %s is predicted at "
                        "its own scale", image)
        cfg = task.cfg.replace(predict=pcfg)
        predict_large(model, image, out, task, cfg, _stats(stats), log=logger)
        return
    if normalized:  # validation images were normalized (and given their network input) for training
        array, prepared = imageio.read_array(image), stored_scale(image)
        result = predict_array(model, image, array, task, pcfg)
        if prepared["scale"] != 1.0 and prepared["source_shape"]:
            result = resize_image(result, prepared["source_shape"])
        write_prediction(out, result, task, model, pcfg, {"scale": prepared["scale"]})
        return
    array = task.prediction_input(normalized_image(image, task.ndim, axes, normalize, _stats(stats)), image)
    result, scale = predict_rescaled(model, image, array, task, pcfg, logger)
    write_prediction(out, result, task, model, pcfg, scale)


@stage
def predict_batch(*, model: str, images: Sequence[str], outs: Sequence[str], marker: str, task: Task,
                  axes: str | None, normalize: dict[str, Any], predict: Section, threads: int | None = None,
                  stats: str | None = None, logger: logging.Logger) -> None:
    """Predict a batch of test images with one model load, each into its own output. The next
    image is read and normalized while the current one is predicted, and outputs are written in
    the background, so a GPU is not left waiting for the disk."""
    from concurrent.futures import ThreadPoolExecutor

    pcfg, stats_dict = with_threads(predict, threads), _stats(stats)

    def load(path: str) -> np.ndarray:
        return np.asarray(task.prediction_input(normalized_image(path, task.ndim, axes, normalize, stats_dict), path))

    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        next_image = reader.submit(load, images[0]) if images else None
        written = []
        for k, (image, out) in enumerate(zip(images, outs, strict=True)):
            array = next_image.result()
            next_image = reader.submit(load, images[k + 1]) if k + 1 < len(images) else None
            result, scale = predict_rescaled(model, image, array, task, pcfg, logger)
            written.append(writer.submit(write_prediction, out, result, task, model, pcfg, scale))
        for future in written:
            future.result()
    imageio.write_text(marker, f"{len(images)} images predicted\n")


@stage
def prepare_prediction(*, image: str, store: str, task: Task, stats: str | None = None) -> None:
    """Large image split across jobs: the empty prediction store and the image's statistics."""
    from ..large.run import prepare_prediction as make_store

    make_store(image, store, task, task.cfg, _stats(stats))


@stage
def predict_block(*, model: str, image: str, store: str, block: int, marker: str, task: Task,
                  threads: int | None = None, logger: logging.Logger) -> None:
    """Large image split across jobs: one block into the shared store, then its marker file."""
    from ..large.run import predict_block_job

    cfg = task.cfg.replace(predict=with_threads(task.cfg["predict"], threads))
    predict_block_job(model, image, store, [block], marker, task, cfg, log=logger)


@stage
def segment_store(*, prediction: str, out: str, task: Task) -> None:
    """Large image split across jobs: the empty store that segmentation block jobs fill."""
    task.create_segment_store(prediction, out)


@stage
def segment_block(*, prediction: str, store: str, block: int, out: str, task: Task) -> None:
    """Large image split across jobs: one block's segmentation, merged later at the seams."""
    task.segment_block(prediction, store, block, out)


# --------------------------------------------------------------------------- post-processing and scores


@stage
def postprocess(*, prediction: str, out: str, task: Task, axes: str | None, image: str | None = None,
                side: dict[str, str] | None = None, label: str | None = None, metrics: str | None = None,
                image_id: str, segmented: tuple[str, list[str]] | None = None) -> None:
    """Post-process one prediction and score it against ``label`` (when the image has one).

    ``side`` names the task's extra outputs (e.g. object tables, whose mean intensities are
    those of the raw ``image``). Predictions made block by block (large images) are
    post-processed by blocks; their label volumes are scored by blocks too.
    """
    _postprocess_one(prediction, out, task, axes, image, side, label, metrics, image_id, segmented)


@stage
def postprocess_batch(*, predictions: Sequence[str], outs: Sequence[str], metrics: Sequence[str],
                      images: Sequence[str], labels: Sequence[str | None], sides: Sequence[dict[str, str]],
                      image_ids: Sequence[str], marker: str, task: Task, axes: str | None) -> None:
    """Post-process and score a batch of test images, each into its own outputs."""
    for args in zip(predictions, outs, images, sides, labels, metrics, image_ids, strict=True):
        prediction, out, image, side, label, metric, image_id = args
        _postprocess_one(prediction, out, task, axes, image, side, label, metric, image_id, None)
    imageio.write_text(marker, f"{len(predictions)} images post-processed\n")


def _postprocess_one(prediction: str, out: str, task: Task, axes: str | None, image: str | None,
                     side: dict[str, str] | None, label: str | None, metrics: str | None, image_id: str,
                     segmented: tuple[str, list[str]] | None) -> None:
    if is_block_prediction(prediction):
        task.postprocess_large(prediction, out, side, image, segmented)
        if task.large_output_suffix == task.output_suffix:  # a small table (points): scored as usual
            output = task.read_output(out)
        else:
            if metrics:
                scores = task.evaluate_large(out, label) if label is not None else {}
                imageio.write_csv(metrics, pd.DataFrame([{"image": image_id, **scores}]))
            return
    else:
        pred = imageio.read_array(prediction)
        output = task.postprocess(pred)
        task.write_output(out, output)
        if side:
            raw = imageio.read_image(image, task.ndim, axes) if image else None
            task.write_side_outputs(side, output, raw, pred)
    if metrics:
        write_metrics(task, output, label, metrics, image_id, image_shape(image, task.ndim, axes) if image else None,
                      side)


def write_metrics(task: Task, output: Any, label: str | None, out_csv: str, image_id: str,
                  shape: tuple[int, ...] | None, side: dict[str, str] | None = None) -> None:
    """One row of scores for one image (only its id when it has no ground truth), plus the
    task's per-image details (written first: when the metrics file exists, they do too)."""
    if label is None:
        imageio.write_csv(out_csv, pd.DataFrame([{"image": image_id}]))
        return
    truth = task.read_label(label, shape)
    row = {"image": image_id, **task.evaluate(output, truth, label)}
    details, path = task.details(output, truth, side or {}), task.details_path(out_csv)
    if details is not None and path is not None:
        imageio.write_csv(path, details)
    imageio.write_csv(out_csv, pd.DataFrame([row]))


@stage
def tune(*, predictions: Sequence[str], labels: Sequence[str], out: str, task: Task) -> None:
    task.tune_files(list(predictions), list(labels), out)


@stage
def package_model(*, checkpoint: str, tuning: str | None, out: str) -> None:
    """The experiment's model in one file: the checkpoint with the tuned thresholds."""
    from ..models.checkpoint import package_checkpoint

    package_checkpoint(checkpoint, imageio.read_json(tuning) if tuning else None, out)


@stage
def aggregate(*, metrics: Sequence[str], out_metrics: str, out_summary: str, task: Task) -> None:
    """One row per image in metrics.csv; dataset figures in summary.csv, from the rows and
    the task's per-image details (e.g. the scored matches that average precision ranks)."""
    if metrics:
        table = imageio.read_csv_many(metrics)
        table = table.sort_values("image", kind="stable").reset_index(drop=True)
    else:
        table = pd.DataFrame({"image": []})
    imageio.write_csv(out_metrics, table)
    summary = task.summarize(table, read_details(task, metrics)) if len(table) else pd.DataFrame([{"n_images": 0}])
    summary.insert(0, "experiment", task.cfg["experiment"])
    imageio.write_csv(out_summary, summary)


def read_details(task: Task, metrics: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Image id -> its details, for the scored images that have them."""
    found = {}
    for path in metrics:
        details = task.details_path(path)
        if details is not None and details.is_file():
            found[Path(path).stem] = pd.read_csv(details)
    return found


@stage
def outputs_tables(*, outputs: Sequence[str], paths: dict[str, str], task: Task) -> None:
    """The task's experiment-level tables of every test image's output (e.g. classes.csv)."""
    task.write_outputs_tables(list(outputs), dict(paths))


@stage
def metrics_tables(*, metrics: str, paths: dict[str, str], task: Task) -> None:
    """The task's experiment-level tables of metrics.csv (e.g. the confusion matrix)."""
    task.write_metrics_tables(metrics, dict(paths))


@stage
def report(*, task: Task, results: str, samples: Sequence[Sample], outputs: dict[str, str], html_out: str,
           gallery: str, config_out: str, logger: logging.Logger) -> None:
    """The run report (workflow.report): a self-contained HTML page, its gallery PNGs and the config."""
    images = report_images(task, results, samples, outputs)
    seconds = write_report(task, results, images, html_out, gallery, config_out)
    logger.info("report of %d test images written in %.2f s", len(images), seconds)
