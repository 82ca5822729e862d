"""The run report: one self-contained HTML page per experiment, and its three-line summary.

A run ends in files; a person wants to see whether it worked. The page holds, in the
order one reads them: the headline score, the summary and per-image tables (sortable),
the task's gallery (``Task.report_gallery``: outlines, points or misclassified images,
so a new workflow brings its own), the task's extra tables and figures, the training
curves (and augmented samples, when written), run time and peak memory per stage, and
the config and software versions that reproduce it. Everything is read from
``results/{experiment}/``, so the page can be rebuilt from a finished run alone.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..core import imageio
from ..core.config import plain, validate_config
from ..core.errors import InputError
from ..data.samples import Sample
from ..tasks import Task, get_task
from ..tasks.gallery import ReportImage
from . import html
from .runtimes import stage_table

#: Distributions whose versions the report lists (torch's is read without importing it).
PACKAGES = ("biapipe", "torch", "numpy", "scipy", "scikit-image", "pandas", "zarr", "tifffile", "pillow",
            "matplotlib", "snakemake")
#: Where a run keeps the config it ran with (written with the report; ``biapipe summary`` reads it).
CONFIG_FILE = "config.yaml"


def software_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def report_images(task: Task, results: str | Path, samples: Sequence[Sample],
                  outputs: Mapping[str, str]) -> list[ReportImage]:
    """The test images as the gallery sees them: files, metrics row, side outputs, details."""
    results = Path(results)
    metrics = _read(results / "metrics.csv")
    rows = {str(r["image"]): r for r in metrics.to_dict("records")} if metrics is not None else {}
    images = []
    for sample in samples:
        metrics_csv = results / "metrics" / f"{sample.id}.csv"
        details = task.details_path(metrics_csv)
        images.append(ReportImage(
            sample.id, sample.image, sample.label, outputs[sample.id], rows.get(sample.id, {}),
            {k: str(results / v.format(image=sample.id)) for k, v in task.side_outputs.items()},
            str(details) if details is not None and details.is_file() else None))
    return images


def write_report(task: Task, results: str | Path, images: Sequence[ReportImage], html_out: str | Path,
                 gallery: str | Path, config_out: str | Path) -> float:
    """Write the page, its gallery PNGs (a folder) and the run's config; returns the seconds it took."""
    start = time.perf_counter()
    results = Path(results)
    imageio.write_text(config_out, yaml.safe_dump(plain(task.cfg), sort_keys=False))
    with imageio.atomic_path(gallery) as folder:
        folder.mkdir(parents=True)
        pictures = [html.figure(p.path, p.caption, p.title) for p in task.report_gallery(images, folder)]
    body = [f"<h1>{html.escape(task.cfg['experiment'])}: biapipe run report</h1>",
            *(html.paragraph(line, "headline") for line in headline(task, results))]
    body += _results_sections(task, results, pictures)
    body += _training_section(results)
    body.append(html.section("Run time and memory per stage", "runtime", [
        html.paragraph("From each job's log (time, and the peak RSS of the process that ran it: per-image jobs "
                       "share the Snakemake process) and the Snakemake benchmarks of the experiment-level rules."),
        html.table(stage_table(results), "stages-table")]))
    body.append(html.section("Config and software", "config", [
        html.vertical(software_versions(), "versions"),
        html.paragraph("The validated config, defaults included (also written to config.yaml):"),
        html.preformatted(yaml.safe_dump(plain(task.cfg), sort_keys=False))]))
    imageio.write_text(html_out, html.page(f"{task.cfg['experiment']}: biapipe report", body))
    return time.perf_counter() - start


def _results_sections(task: Task, results: Path, pictures: list[str]) -> list[str]:
    out = []
    summary, metrics = _read(results / "summary.csv"), _read(results / "metrics.csv")
    if summary is not None and len(summary):
        notes = [html.vertical(summary.iloc[0], "summary-table")]
        if any(str(c).startswith("ap") or str(c) == "map" for c in summary.columns):
            notes.insert(0, html.paragraph(
                "ap*: average precision of the score-ranked predictions pooled over all test images, COCO's "
                "101-point interpolation (instance: objects ranked by mean foreground probability, IoU 0.5:0.95 is "
                "the mean over ten thresholds; detection: points ranked by peak score, matched within the "
                "tolerance; map: the mean over classes). accuracy@t is the DSB2018 'AP', TP / (TP + FP + FN)."))
        out.append(html.section("Summary", "summary", notes))
    if metrics is not None and len(metrics):
        out.append(html.section("Per image", "per-image", [
            html.paragraph(f"{len(metrics)} scored test images; click a column header to sort."),
            html.table(metrics, "metrics-table", scroll=True)]))
    intro = (f"Best, median and worst test image by {task.main_metric}." if task.main_metric else "")
    out.append(html.section("Gallery", "gallery", [html.paragraph(intro)] + (pictures or [
        html.paragraph("No pictures for this run.")])))
    extra = []
    for rel in [*task.metrics_tables.values(), *task.outputs_tables.values()]:
        path = results / rel
        if path.suffix == ".png" and path.is_file():
            extra.append(html.figure(path, rel, rel))
        elif path.suffix == ".csv" and path.is_file():
            extra += [html.paragraph(rel), html.table(pd.read_csv(path), f"table-{path.stem}", scroll=True)]
    if extra:
        out.append(html.section("Tables of the workflow", "tables", extra))
    return out


def _training_section(results: Path) -> list[str]:
    model = results / "model"
    history = _read(model / "history.csv")
    parts = []
    if (model / "training_curve.png").is_file():
        parts.append(html.figure(model / "training_curve.png", "training and validation loss per epoch",
                                 "training curve"))
    if (model / "augment_samples" / "montage.png").is_file():
        parts.append(html.figure(model / "augment_samples" / "montage.png",
                                 "augmented training samples (train.augment.debug_samples)", "augmented samples"))
    if history is not None:
        parts.append(html.table(history, "history-table", scroll=True))
    return [html.section("Training", "training", parts)] if parts else []


def headline(task: Task, results: str | Path) -> list[str]:
    """Three lines: what ran, the main score, where the outputs and the report are."""
    results = Path(results)
    cfg = task.cfg
    manifest = results / "model" / "inputs.json"
    counts = imageio.read_json(manifest) if manifest.is_file() else {}
    history = _read(results / "model" / "history.csv")
    folder = results / task.output_dir
    suffixes = {task.output_suffix, task.large_output_suffix or task.output_suffix}
    outputs = [p for p in folder.iterdir() if p.name.endswith(tuple(suffixes)) and not p.name.startswith(".")] \
        if folder.is_dir() else []
    trained = f"trained {len(history)} epochs" if history is not None else \
        f"model {cfg['model']}" if cfg.get("model") else "not trained"
    if history is not None and counts:
        trained += f" on {len(counts['train_images'])} images, validated on {len(counts['val_images'])}"
    what = f"{cfg['experiment']}: {task.name} workflow, {task.ndim}D; {trained}; {len(outputs)} test images predicted"
    summary = _read(results / "summary.csv")
    if summary is None or task.main_score not in summary.columns:
        score = "main score: none (no test image has ground truth)"
    else:
        n = int(summary.loc[0, "n_images"]) if "n_images" in summary.columns else 0
        score = (f"main score: {task.main_score_name} = {float(summary.loc[0, task.main_score]):.4f} on {n} "
                 f"scored images (summary.csv: {task.main_score})")
    written = [f"{task.output_dir}/"] + [name for name in ("metrics.csv", "summary.csv") if (results / name).is_file()]
    where = f"outputs: {results}/ ({', '.join(written)}); report: {results / 'report.html'}"
    return [what, score, where]


def summary_lines(results: str | Path) -> list[str]:
    """The three headline lines of a finished run (``biapipe summary``), from its config.yaml."""
    path = Path(results) / CONFIG_FILE
    if not path.is_file():
        raise InputError(path, "not found: the run has not finished (its report rule writes it)")
    cfg: Any = yaml.safe_load(path.read_text())
    return headline(get_task(validate_config(cfg)), results)


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path) if path.is_file() else None
    except pd.errors.EmptyDataError:
        return None
