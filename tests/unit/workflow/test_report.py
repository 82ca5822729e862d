"""The run report's parts: stage times from job logs, progress lines, the gallery's picks and
pictures, and the page itself built from a finished run's files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import ReportPage as Page
from conftest import write_tif

from biapipe.core import progress as progress_module
from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.core.progress import Progress, duration
from biapipe.data import display
from biapipe.data.samples import Sample
from biapipe.tasks import get_task
from biapipe.tasks.gallery import ReportImage, pick_examples
from biapipe.workflow.report import headline, report_images, write_report
from biapipe.workflow.runtimes import stage_table


def test_stage_times_come_from_the_job_logs_and_benchmarks(tmp_path):
    logs = tmp_path / "logs"
    done = "2026-01-01 00:00:00,000 INFO done in {} s (process peak RSS {} MiB)\n"
    for name, seconds, rss in (("predict/a", 1.5, 700), ("predict/b", 2.5, 720), ("train", 30.0, 900)):
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.log").write_text("INFO something\n" + done.format(seconds, rss))
    (logs / "postprocess").mkdir()
    (logs / "postprocess" / "a.log").write_text("ERROR InputError: broken\n")  # failed: left out
    (logs / "report.log").write_text(done.format(9, 9))  # the report's own, from an earlier run
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "train.tsv").write_text("s\th:m:s\tmax_rss\n31.2\t0:00:31\t1024.5\n")
    table = stage_table(tmp_path).set_index("stage")
    assert list(table.index) == ["train", "predict"]  # in data-flow order
    assert table.loc["predict", "jobs"] == 2 and table.loc["predict", "total_s"] == 4.0
    assert table.loc["predict", "max_s"] == 2.5 and table.loc["predict", "peak_rss_mib"] == 720
    assert table.loc["train", "benchmark_s"] == 31.2 and table.loc["train", "benchmark_max_rss_mib"] == 1024.5


def test_progress_lines_estimate_the_time_left(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        p = Progress(4, "block", log, done=1)  # one block done before (a resumed job): not in the pace
        assert p.left() == "ETA ?"
        now[0] = 110.0
        p.step()  # 10 s for one block, 2 left
        now[0] = 120.0
        p.step()  # 20 s for two, 1 left
    assert [r.getMessage() for r in caplog.records] == ["block 2/4 (50%), 10s elapsed, ETA 20s",
                                                         "block 3/4 (75%), 20s elapsed, ETA 10s"]
    assert duration(185) == "3m05s" and duration(7380) == "2h03m" and duration(4.25) == "4.2s"


def image(i: str, score: float | None) -> ReportImage:
    return ReportImage(i, "", None, "", {} if score is None else {"f1": score})


def test_gallery_picks_best_median_and_worst():
    images = [image("a", 0.5), image("b", 0.9), image("c", float("nan")), image("d", 0.1), image("e", 0.7)]
    assert [(role, im.id) for role, im in pick_examples(images, "f1")] == [
        ("best", "b"), ("median", "e"), ("worst", "d")]  # NaN is not ranked; median of 4 is the 2nd
    assert [im.id for _, im in pick_examples(images[:2], "f1")] == ["b", "a"]  # each image once
    assert [role for role, _ in pick_examples([image("x", None), image("w", None)], "f1")] == [
        "example 1", "example 2"]


def test_large_images_are_shown_downsampled_at_the_same_pixels(tmp_path):
    view = display.view_for((40, 3000, 1000), max_side=768)
    assert (view.z, view.step) == (20, 4)
    labels = np.zeros((40, 3000, 1000), np.uint8)
    labels[20, 100:200, 40:80] = 3
    store = zarr.create_array(str(tmp_path / "l.zarr"), shape=labels.shape, dtype=labels.dtype,
                              chunks=(8, 512, 512))
    store[...] = labels
    plane = display.label_plane(tmp_path / "l.zarr", 3, view)
    assert plane.shape == (750, 250)
    np.testing.assert_array_equal(plane, labels[20, ::4, ::4])
    assert view.to_pixels(np.array([[20, 100, 40]])).tolist() == [[25, 10]]
    assert display.view_for((40, 64, 64), 768, project=True).project  # small volumes: max projection


# --------------------------------------------------------------------------- the page


def semantic_run(tmp_path: Path):
    """A finished semantic run's files, written by hand: 3 test images, one perfect, one half, one empty."""
    cfg = validate_config({"experiment": "hand", "workflow": "semantic", "ndim": 2, "data": {"demo": {}},
                           "targets": {"binarize": True}, "results": str(tmp_path / "results")})
    task = get_task(cfg)
    out = tmp_path / "results" / "hand"
    truth = np.zeros((32, 32), np.uint8)
    truth[8:24, 8:24] = 1
    samples, outputs = [], {}
    for name, pred in (("good", truth), ("half", truth * (np.arange(32) < 16)), ("bad", truth * 0)):
        write_tif(tmp_path / "images" / f"{name}.tif", (truth * 200 + 20).astype(np.uint8))
        write_tif(tmp_path / "labels" / f"{name}.tif", truth)
        task.write_output(out / "masks" / f"{name}.tif", pred)
        samples.append(Sample(name, str(tmp_path / "images" / f"{name}.tif"), str(tmp_path / "labels" / f"{name}.tif"),
                              "test"))
        outputs[name] = str(out / "masks" / f"{name}.tif")
    metrics = pd.DataFrame([{"image": s.id, **task.evaluate(task.read_output(outputs[s.id]), truth)} for s in samples])
    metrics.to_csv(out / "metrics.csv", index=False)
    task.summarize(metrics).assign(experiment="hand").to_csv(out / "summary.csv", index=False)
    (out / "model").mkdir()
    pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "lr": [1e-3, 1e-3],
                  "seconds": [1.0, 1.0]}).to_csv(out / "model" / "history.csv", index=False)
    return task, out, samples, outputs


def test_the_page_holds_tables_gallery_and_config(tmp_path):
    task, out, samples, outputs = semantic_run(tmp_path)
    from PIL import Image

    (out / "model" / "augment_samples").mkdir()  # train.augment.debug_samples wrote some
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(out / "model" / "augment_samples" / "montage.png")
    images = report_images(task, out, samples, outputs)
    seconds = write_report(task, out, images, out / "report.html", out / "report" / "gallery", out / "config.yaml")
    assert seconds < 30
    page = Page((out / "report.html").read_text())
    assert page.sections == ["summary", "per-image", "gallery", "training", "runtime", "config"]
    assert {"summary-table", "metrics-table", "history-table", "stages-table", "versions"} <= set(page.tables)
    assert "foreground_iou" in page.tables["metrics-table"]
    gallery = [alt for section, alt in page.images if section == "gallery"]
    assert gallery == ["best: good", "median: half", "worst: bad"]
    assert ("training", "augmented samples") in page.images
    assert sorted(p.name for p in (out / "report" / "gallery").iterdir()) == [
        "0_best_good.png", "1_median_half.png", "2_worst_bad.png"]
    text = (out / "report.html").read_text()
    assert 'class="dataframe data sortable" id="metrics-table"' in text
    lines = headline(task, out)
    assert lines[0] == "hand: semantic workflow, 2D; trained 2 epochs; 3 test images predicted"
    assert lines[1].startswith("main score: foreground IoU (pooled over pixels) = 0.5000 on 3 scored images")  # 384 / 768 pixels
    assert lines[2] == f"outputs: {out}/ ({task.output_dir}/, metrics.csv, summary.csv); report: {out}/report.html"
    (out / "metrics.csv").unlink()  # a run without ground truth writes no scores: none are listed
    (out / "summary.csv").unlink()
    lines = headline(task, out)
    assert lines[1] == "main score: none (no test image has ground truth)"
    assert lines[2] == f"outputs: {out}/ ({task.output_dir}/); report: {out}/report.html"
    assert validate_config(__import__("yaml").safe_load((out / "config.yaml").read_text()))["experiment"] == "hand"


def test_a_picture_marks_truth_and_prediction(tmp_path):
    task, out, samples, outputs = semantic_run(tmp_path)
    images = report_images(task, out, samples, outputs)
    picture = task.report_picture(images[0], "best", tmp_path / "p.png")
    assert picture.caption == "good: foreground_iou = 1"
    from PIL import Image

    pixels = np.asarray(Image.open(picture.path).convert("RGB")).reshape(-1, 3).astype(int)
    magenta = (pixels[:, 0] > 200) & (pixels[:, 1] < 100) & (pixels[:, 2] > 200)
    assert magenta.sum() > 100  # the prediction's outline is drawn (on top of the truth's: they agree)
    with pytest.raises(InputError, match="missing.tif: file not found"):
        task.report_picture(ReportImage("x", str(tmp_path / "missing.tif"), None, ""), "best", tmp_path / "q.png")
