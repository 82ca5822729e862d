"""One function per workflow rule: read inputs, call the library, write outputs atomically.

Rules call these with keyword arguments and nothing else, so every stage can also be run
and tested from plain Python. Each stage receives the task (what differs between
workflows) and the config sections it uses. Why test images are normalized inside
``predict`` and scored inside ``postprocess``: docs/architecture.md, "planning cost".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import imageio
from ..core.config import Section
from ..core.errors import InputError
from ..data.blocks import block_grid, choose_block_shape
from ..data.lazy import open_lazy
from ..data.normalize import check_finite, dataset_stats, normalize
from ..data.normalize import normalize as normalize_image
from ..data.validate import probe, spatial_shape
from ..large.plan import is_block_prediction
from ..tasks.base import Task
from .joblog import stage


def zarr_chunks(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Chunk (Z)YXC arrays in spatial blocks with all channels together."""
    spatial = (16, 256, 256) if ndim == 3 else (512, 512)
    return tuple(min(s, c) for s, c in zip(shape[:-1], spatial)) + (shape[-1],)


def normalized_image(image: str, ndim: int, axes: str | None, cfg_normalize: dict[str, Any],
                     stats: dict[str, Any] | None = None) -> np.ndarray:
    """A raw image read in canonical axes, checked for NaN/Inf and normalized (float32)."""
    img = imageio.read_image(image, ndim, axes)
    check_finite(img, image)
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
def manifest(*, files: dict[str, list[str]], out: str) -> None:
    """A rule's many inputs as one file (rules/train.smk: keeps planning linear)."""
    imageio.write_json(out, {k: [str(f) for f in v] for k, v in files.items()})


@stage
def check_pixels(*, images: Sequence[str], out: str, ndim: int, axes: str | None, memory_gb: float) -> None:
    """Scan float images for NaN/Inf block by block (bounded memory, large images too)."""
    for path in images:
        image = open_lazy(path, ndim, axes)
        spatial = image.shape[:-1]
        shape = choose_block_shape(spatial, image.chunks[:-1], memory_gb * 2**30, 4 * image.shape[-1])
        for block in block_grid(spatial, shape):
            check_finite(image[block.slices], path)
    imageio.write_text(out, f"{len(images)} images without NaN/Inf\n")


@stage
def normalize_stats(*, manifest: str, out: str, ndim: int, axes: str | None, normalize: dict[str, Any]) -> None:
    """Dataset statistics of the training images listed in ``manifest`` (key ``images``)."""
    paths = imageio.read_json(manifest)["images"]

    def images() -> Iterator[np.ndarray]:
        for p in paths:
            img = imageio.read_image(p, ndim, axes)
            check_finite(img, p)
            yield img

    imageio.write_json(out, dataset_stats(images(), normalize))


@stage
def prepare(*, image: str, label: str, image_out: str, targets_out: str, task: Task, axes: str | None,
            normalize: dict[str, Any], stats: str | None = None) -> None:
    """A training/validation image: its normalized copy (as the network sees it: the task's
    ``training_input`` and ``network_input``) and its targets, in one job."""
    raw = task.training_input(imageio.read_image(image, task.ndim, axes), imageio.image_id(image))
    check_finite(raw, image)
    norm = np.asarray(task.network_input(normalize_image(raw, normalize, _stats(stats)).astype(np.float32,
                                                                                                copy=False)))
    imageio.write_zarr(image_out, norm, chunks=zarr_chunks(norm.shape, task.ndim), attrs={"source": str(image)})
    truth = task.read_label(label, image_shape(image, task.ndim, axes))
    target = task.make_targets(truth, label)
    imageio.write_zarr(targets_out, target, chunks=zarr_chunks(target.shape, task.ndim), attrs={"source": str(label)})


# --------------------------------------------------------------------------- train


@stage
def train(*, manifest: str, model_dir: str, cfg: dict[str, Any], task: Task, threads: int | None = None,
          logger: logging.Logger) -> None:
    from ..training.launch import train as run_training

    files = imageio.read_json(manifest)
    cfg = cfg.replace(train=with_threads(cfg["train"], threads))
    run_training(cfg, task.__class__(cfg), list(zip(files["train_images"], files["train_targets"])),
                 list(zip(files["val_images"], files["val_targets"])), Path(model_dir), log=logger)


# --------------------------------------------------------------------------- predict


@stage
def predict(*, model: str, image: str, out: str, task: Task, axes: str | None, normalize: dict[str, Any],
            predict: Section, threads: int | None = None, stats: str | None = None, large: bool = False,
            normalized: bool = False) -> None:
    """Predict one image. A raw image is normalized here, in memory; ``normalized`` images
    (validation images, normalized for training) are read as they are; ``large`` images go
    block by block (``predict.large_voxels`` / ``large_images``)."""
    pcfg = with_threads(predict, threads)
    if large:
        from ..large.run import predict_large

        cfg = task.cfg.replace(predict=pcfg)
        predict_large(model, image, out, task, cfg, _stats(stats))
        return
    # validation images were normalized (and given their network input) for training
    array = imageio.read_array(image) if normalized else \
        task.network_input(normalized_image(image, task.ndim, axes, normalize, _stats(stats)))
    if task.whole_image:
        task.predict_whole(model, array, out)
        return
    from ..inference.predict import predict_image
    from ..inference.predictor import load_predictor

    predictor = load_predictor(model, pcfg["device"])
    if np.shape(array)[-1] != predictor.spec["in_channels"]:
        raise InputError(image, f"has {np.shape(array)[-1]} channels but the model expects "
                                f"{predictor.spec['in_channels']}")
    trained = task.for_model(predictor.meta)
    result = predict_image(predictor.model, np.asarray(array, dtype=np.float32), pcfg, trained.activate,
                           predictor.divisor, predictor.device)
    imageio.write_zarr(out, result.astype(np.float32, copy=False), chunks=zarr_chunks(result.shape, task.ndim),
                       attrs={"model": str(model), "mode": pcfg["mode"], "tile_size": list(pcfg["tile_size"]),
                              "overlap": pcfg["overlap"]})


@stage
def prepare_prediction(*, image: str, store: str, task: Task, stats: str | None = None) -> None:
    """Large image split across jobs: the empty prediction store and the image's statistics."""
    from ..large.run import prepare_prediction as make_store

    make_store(image, store, task, task.cfg, _stats(stats))


@stage
def predict_block(*, model: str, image: str, store: str, block: int, marker: str, task: Task,
                  threads: int | None = None) -> None:
    """Large image split across jobs: one block into the shared store, then its marker file."""
    from ..large.run import predict_block_job

    cfg = task.cfg.replace(predict=with_threads(task.cfg["predict"], threads))
    predict_block_job(model, image, store, [block], marker, task, cfg)


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
        output = task.postprocess(imageio.read_array(prediction))
        task.write_output(out, output)
        if side:
            raw = imageio.read_image(image, task.ndim, axes) if image else None
            task.write_side_outputs(side, output, raw)
    if metrics:
        write_metrics(task, output, label, metrics, image_id, image_shape(image, task.ndim, axes) if image else None)


def write_metrics(task: Task, output: Any, label: str | None, out_csv: str, image_id: str,
                  shape: tuple[int, ...] | None) -> None:
    """One row of scores for one image (only its id when it has no ground truth), plus the
    task's per-object details (written first: when the metrics file exists, they do too)."""
    if label is None:
        imageio.write_csv(out_csv, pd.DataFrame([{"image": image_id}]))
        return
    truth = task.read_label(label, shape)
    row = {"image": image_id, **task.evaluate(output, truth)}
    task.write_details(out_csv, output, truth)
    imageio.write_csv(out_csv, pd.DataFrame([row]))


@stage
def tune(*, predictions: Sequence[str], labels: Sequence[str], out: str, task: Task) -> None:
    task.tune_files(list(predictions), list(labels), out)


@stage
def aggregate(*, metrics: Sequence[str], out_metrics: str, out_summary: str, task: Task) -> None:
    """One row per image in metrics.csv; dataset figures in summary.csv."""
    if metrics:
        table = pd.concat([pd.read_csv(p) for p in metrics], ignore_index=True)
        table = table.sort_values("image", kind="stable").reset_index(drop=True)
    else:
        table = pd.DataFrame({"image": []})
    imageio.write_csv(out_metrics, table)
    summary = task.summarize(table) if len(table) else pd.DataFrame([{"n_images": 0}])
    summary.insert(0, "experiment", task.cfg["experiment"])
    imageio.write_csv(out_summary, summary)


@stage
def outputs_tables(*, outputs: Sequence[str], paths: dict[str, str], task: Task) -> None:
    """The task's experiment-level tables of every test image's output (e.g. classes.csv)."""
    task.write_outputs_tables(list(outputs), dict(paths))


@stage
def metrics_tables(*, metrics: str, paths: dict[str, str], task: Task) -> None:
    """The task's experiment-level tables of metrics.csv (e.g. the confusion matrix)."""
    task.write_metrics_tables(metrics, dict(paths))
