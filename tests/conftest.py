"""Shared fixtures: paths, tiny data writers and a real Snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def _no_wait_for_an_absent_slurm_controller(tmp_path_factory: pytest.TempPathFactory):
    """Every Snakemake start imports the SLURM executor plugin, which asks ``scontrol show config``
    for a setting and waits up to 10 s when the SLURM client is installed but no controller
    answers (a development machine between ``make slurm-up`` runs). Then the workflow tests'
    Snakemake processes find an ``scontrol`` that fails at once; with a cluster up (CI) nothing
    changes, and the SLURM tests run against the real one."""
    if shutil.which("scontrol") is None or _slurm_controller_answers():
        yield
        return
    stub = tmp_path_factory.mktemp("no_slurm") / "scontrol"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{stub.parent}{os.pathsep}{old}"
    yield
    os.environ["PATH"] = old


def _slurm_controller_answers() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def write_tif(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)
    return path


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, configfile: Path | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` (outputs land there, not in the repo)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += ["--cores", "2", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, configfile: Path, *args: str) -> dict[str, int]:
    """Snakemake's own plan (dry run): rule name -> number of jobs it would run."""
    proc = snakemake(workdir, configfile, "-n", "--quiet", "rules", *args)
    counts: dict[str, int] = {}
    text = proc.stdout + proc.stderr
    in_table = False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                in_table = False
    return counts


TINY_TRAIN = {
    "plan": "none",  # the schema's defaults: tests of other features do not depend on the planner
    "model": {"depth": 2, "width": 4},
    "batch_size": 2,
    "epochs": 2,
    "patches_per_epoch": 4,
    "val_patches": 2,
    "threads": 1,
}


def tiny_config(folder: Path, workflow: str, experiment: str, ndim: int = 2, /, labels: str = "labels", **sections) -> dict:
    """A fast config over the demo layout ({split}/images, {split}/<labels>); ``sections`` are merged per key."""
    cfg = {
        "experiment": experiment,
        "workflow": workflow,
        "ndim": ndim,
        "seed": 3,
        "data": {s: {"images": str(folder / s / "images"), "labels": str(folder / s / labels)} for s in ("train", "val", "test")},
        "train": {**TINY_TRAIN, "patch_size": [32, 32] if ndim == 2 else [8, 16, 16]},
        "predict": {"tile_size": [32, 32] if ndim == 2 else [8, 16, 16], "threads": 1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (needs ../shared/data beside the checkout)")
    return SHARED_DATA


class ReportPage(HTMLParser):
    """What a reader finds on a run report: section ids, tables (header cells and rows of cell
    texts, by table id) and the embedded images (section, alt text)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tables: dict[str, list[str]] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.images: list[tuple[str, str]] = []
        self._table: str | None = None
        self._cell: str | None = None  # "th" or "td" while inside one
        self._text = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table], self.rows[self._table] = [], []
        elif tag == "tr" and self._table:
            self.rows[self._table].append([])
        elif tag in ("th", "td"):
            self._cell, self._text = tag, ""
        elif tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")  # self-contained
            self.images.append((self.sections[-1], attrs["alt"]))

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._table:
            (self.tables[self._table] if tag == "th" else self.rows[self._table][-1]).append(self._text.strip())
            self._cell = None
        elif tag == "table":
            self.rows[self._table] = [r for r in self.rows[self._table] if r]
            self._table = None

    def handle_data(self, data):
        if self._cell:
            self._text += data

    def frame(self, table_id: str) -> pd.DataFrame:
        """A table of the page as text cells."""
        return pd.DataFrame(self.rows[table_id], columns=self.tables[table_id])


def evaluate_like_the_workflow(out: Path, pred: Path, gt: Path, workflow: str, *options: str) -> pd.DataFrame:
    """``biapipe evaluate`` of a run's outputs; checks its per-image table equals the run's
    metrics.csv (same columns, same numbers) and returns its summary."""
    from biapipe.cli import main

    table = out.parent / f"{out.name}_evaluate.csv"
    assert main(["evaluate", "--workflow", workflow, "--pred", str(pred), "--gt", str(gt), "--out", str(table),
                 *options]) == 0
    ours, theirs = pd.read_csv(table), pd.read_csv(out / "metrics.csv")
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-9, atol=1e-12, check_dtype=False)
    return pd.read_csv(table.with_name(f"{table.stem}_summary.csv"))
