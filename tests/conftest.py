"""Shared fixtures: paths, tiny data writers and a real Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


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
