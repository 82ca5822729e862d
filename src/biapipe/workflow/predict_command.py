"""``biapipe predict MODEL INPUT... --out DIR``: a predict-only run without writing a config.

It writes the config it stands for (``DIR/predict.yaml``) and runs the same Snakemake
workflow on it, so outputs, reruns, the report and a cluster profile behave as in any run:
a second call with nothing changed does nothing, a new image is predicted alone. The
folder's name is the experiment's (outputs go to ``DIR/``).
"""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..core.config import EXPERIMENT_NAME, merge
from ..core.errors import BiapipeError, ConfigError, InputError
from ..core.imageio import image_id, write_csv, write_text
from ..data.samples import list_images
from .report import CONFIG_FILE, summary_lines

#: The workflow this command runs (a source checkout's; the package does not ship it).
SNAKEFILE = Path(__file__).resolve().parents[3] / "workflow" / "Snakefile"
CONFIG_NAME, SHEET_NAME = "predict.yaml", "inputs.csv"


def input_images(inputs: list[str]) -> dict[str, str]:
    """Image id -> path of every image named by ``inputs``: folders (their images), globs, files."""
    found: dict[str, str] = {}
    for item in inputs:
        if Path(item).is_dir():
            paths = list(list_images(item).values())
        elif any(c in item for c in "*?["):
            paths = sorted(glob.glob(item))
            if not paths:
                raise InputError(item, "matches no file")
        elif Path(item).exists():
            paths = [item]
        else:
            raise InputError(item, "not found")
        for path in paths:
            name = image_id(Path(path).name)
            if name in found and found[name] != str(Path(path).resolve()):
                raise InputError(path, f"has the name '{name}' of {found[name]}; image names must be unique")
            found[name] = str(Path(path).resolve())
    if not found:
        raise InputError(" ".join(inputs), "no images")
    return found


def predict_config(model: str, inputs: list[str], out: str | Path, labels: str | None = None,
                   workflow: str | None = None, settings: list[str] = ()) -> dict[str, Any]:
    """The config a ``biapipe predict`` call stands for (a sample sheet is written beside it
    when the inputs are not exactly one folder)."""
    out = Path(out).resolve()
    if not Path(model).exists():  # before anything is written to the output folder
        raise InputError(model, "model not found")
    if not EXPERIMENT_NAME.fullmatch(out.name):
        raise ConfigError("--out", f"the folder name {out.name!r} must be letters, digits, _ . - (it names the run)")
    cfg: dict[str, Any] = {"experiment": out.name, "results": str(out.parent), "model": str(Path(model).resolve())}
    if workflow:
        cfg["workflow"] = workflow
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        cfg["data"] = {"test": {"images": str(Path(inputs[0]).resolve()),
                                "labels": str(Path(labels).resolve()) if labels else None}}
    else:
        images = input_images(inputs)
        truth = {image_id(p.name): p for p in sorted(Path(labels).iterdir()) if not p.name.startswith(".")} \
            if labels else {}
        rows = [{"image": path, "label": str(Path(truth[i]).resolve()) if i in truth else "", "split": "test"}
                for i, path in sorted(images.items())]
        sheet = out / SHEET_NAME
        write_csv(sheet, pd.DataFrame(rows, columns=["image", "label", "split"]))
        cfg["data"] = {"samples": str(sheet)}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise ConfigError("--set", f"{setting!r} is not KEY=VALUE")
        nested: Any = yaml.safe_load(value)
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = merge(cfg, nested)
    return cfg


def predict_command(model: str, inputs: list[str], out: str | Path, labels: str | None = None,
                    workflow: str | None = None, settings: list[str] = (), profile: str | None = None,
                    cores: str = "all", dry_run: bool = False) -> int:
    """Write the config and run the workflow on it; Snakemake's exit status."""
    if not SNAKEFILE.is_file():
        raise BiapipeError(f"{SNAKEFILE}: the workflow is not there (biapipe predict runs from a source checkout)")
    out = Path(out).resolve()
    cfg = predict_config(model, inputs, out, labels, workflow, settings)
    config_file = out / CONFIG_NAME
    write_text(config_file, yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", str(config_file),
           "--directory", str(out), "--cores", str(cores)]
    if profile:
        cmd += ["--profile", str(Path(profile).resolve()) if Path(profile).exists() else profile]
    if dry_run:
        cmd.append("-n")
    print(f"biapipe predict: config {config_file}; outputs in {out}/", file=sys.stderr)
    status = subprocess.run(cmd).returncode
    if status == 0 and not dry_run and (out / CONFIG_FILE).is_file():
        print("\n".join(summary_lines(out)))  # the run's headline, not Snakemake's last log line
    return status
