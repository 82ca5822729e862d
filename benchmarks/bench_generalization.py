"""Instance segmentation on images of a kind the model has never seen (issue 13).

A random split of DSB2018 puts images of every acquisition type on both sides, so its score
says little about new data. This benchmark holds out whole *types*:

- **leave-type-out**: the 541 images of ``dsb2018_train_fluo`` are grouped by acquisition type
  (image size, which in DSB2018 follows the microscope and magnification, and the median
  nucleus diameter measured from the labels; the groups are listed in ``GROUPS``); for each
  group, a model is trained on the other groups and scored on the held-out one;
- **cross-dataset**: a model trained on all of ``dsb2018_train_fluo`` is scored on other
  datasets of fluorescence nuclei: ``ctc_fluo_n2dl_hela_02_errseg`` (widefield HeLa, another
  lab) and the middle z-plane of ``ctc_fluo_n3dh_cho_02_errseg`` (confocal CHO, large nuclei).
  ``stardist_demo_nuclei2d`` is left out: it is DSB-derived, and its centre matches a
  ``dsb2018_train_fluo`` training image (normalized cross-correlation 0.96, ``stardist_overlap``,
  printed with the table), so it is not unseen. ``usiigaci_phase_cells`` is left out:
  phase-contrast whole cells are not nuclei, a nuclei model has nothing to find there.

Each experiment is a real workflow run (Snakemake with a sample sheet: train = the other
groups, validation = ``train.val_fraction`` of them, test = the held-out group), so what is
measured is what a user gets from a config: planning, rescaling, tuning included. Scores are
pooled over the held-out images: F1 = 2TP / (2TP + FP + FN) at IoU 0.5 and 0.75, with
precision and recall at 0.5.

Configurations: ``before`` is the config the issue's user ran (``config/examples/instance_2d.yaml``
of the code before issue 13, with patch 128², batch 8, 512 patches per epoch, tuned thresholds),
frozen here; ``after`` is this repository's ``config/examples/instance_2d.yaml`` as a new user
copies it. The budget is the same for both, in training patches (``--patches``; 128² patches
of the default network: the planner turns ``train.budget_minutes`` into patches at
``PATCHES_PER_MINUTE``), so a busy machine changes the wall time, not the result.
``--code DIR`` runs the workflow of another checkout (e.g. the code before this work, for ``before``).

Results are appended to ``WORKDIR/results.jsonl`` as each experiment finishes (runs may be
split over several invocations); ``--table`` prints the markdown table of everything there.

Run: .venv/bin/python benchmarks/bench_generalization.py --config after --patches 3072 \
         [--groups small256,large] [--cross] [--code DIR] [--workdir DIR] [--set train.x=1 ...] [--table]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DSB = DATA / "dsb2018_train_fluo"

#: The planner's conversion of ``train.budget_minutes`` (reference: 2 quiet CPU cores train the
#: default 2D network on 128² patches of batch 8 at about 9 patches/s; BiaPy's 40 minutes =
#: 21.5k patches).
PATCHES_PER_MINUTE = 540

#: Leave-type-out groups: name -> (description, rule on the image's size "HxW" and median diameter).
GROUPS: dict[str, tuple[str, Any]] = {
    "small256": ("256×256, median nucleus diameter < 12 px: small nuclei, low magnification",
                 lambda size, d: size == "256x256" and d < 12),
    "medium256": ("256×256, diameter ≥ 12 px: medium nuclei, several cell lines",
                  lambda size, d: size == "256x256" and d >= 12),
    "widefield520": ("520×696: widefield U2OS-like (BBBC039), medium nuclei, many per image",
                     lambda size, d: size == "520x696"),
    "large": ("360×360, 512×640, 1040×1388: large, often dim nuclei at high magnification",
              lambda size, d: size in ("360x360", "512x640", "1040x1388")),
    "dense": ("603×1272, 260×347, 256×320: dense clusters of small touching nuclei (embryos, colonies)",
              lambda size, d: size in ("603x1272", "260x347", "256x320")),
}

#: Cross-dataset test sets: name -> (description, builder of (image, label) pairs in the workdir).
CROSS = {
    "hela": "ctc_fluo_n2dl_hela_02_errseg: widefield HeLa H2B-GFP, 20 frames 700×1100, automatic labels",
    "cho_mid": "ctc_fluo_n3dh_cho_02_errseg, middle z-plane of each of the 20 volumes: confocal CHO, large nuclei",
}

#: The config the issue's user ran: config/examples/instance_2d.yaml before issue 13, with
#: patch 128², batch 8, 512 patches per epoch and tuned thresholds (data and epochs are set per run).
BEFORE: dict[str, Any] = {
    "workflow": "instance", "ndim": 2, "seed": 1,
    "normalize": {"method": "percentile", "low": 1.0, "high": 99.8},
    "targets": {"instance": {"channels": ["foreground", "contour"], "contour_mode": "thick"}},
    "train": {"model": {"depth": 3, "width": 16}, "patch_size": [128, 128], "batch_size": 8,
              "patches_per_epoch": 512, "early_stopping": {"patience": 5}},
    "predict": {"tile_size": [128, 128], "overlap": 0.25},
    "postprocess": {"instance": {"method": "watershed", "seed_foreground": 0.5, "seed_contour": 0.2,
                                 "mask_threshold": 0.5, "min_seed_size": 5, "min_size": 10, "tuned": True}},
}


# --------------------------------------------------------------------------- data


def dsb_table(work: Path) -> pd.DataFrame:
    """Per DSB image: size and median nucleus diameter (equivalent circle of the median area)."""
    path = work / "dsb_images.csv"
    if path.is_file():
        return pd.read_csv(path)
    rows = []
    for image in sorted((DSB / "images").glob("*.tif")):
        label = tifffile.imread(DSB / "labels" / image.name)
        areas = np.bincount(label.ravel())[1:]
        areas = areas[areas > 0]
        rows.append({"image": image.name, "size": f"{label.shape[0]}x{label.shape[1]}", "objects": len(areas),
                     "diameter": 2 * np.sqrt(np.median(areas) / np.pi) if len(areas) else np.nan})
    table = pd.DataFrame(rows)
    table["group"] = [next(g for g, (_, rule) in GROUPS.items() if rule(s, d))
                      for s, d in zip(table["size"], table["diameter"])]
    table.to_csv(path, index=False)
    return table


def cross_pairs(name: str, work: Path) -> list[tuple[Path, Path]]:
    """(image, label) files of a cross-dataset test set (the CHO planes are written to ``work``)."""
    if name == "hela":
        root = DATA / "ctc_fluo_n2dl_hela_02_errseg"
        return [(p, root / "labels" / p.name) for p in sorted((root / "images").glob("*.tif"))]
    if name == "cho_mid":
        root, out = DATA / "ctc_fluo_n3dh_cho_02_errseg", work / "cho_mid"
        pairs = []
        for p in sorted((root / "images").glob("*.tif")):
            image, label = out / "images" / f"cho_{p.name}", out / "labels" / f"cho_{p.name}"
            if not label.is_file():
                volume, truth = tifffile.imread(p), tifffile.imread(root / "labels" / p.name)
                z = volume.shape[0] // 2
                for path, plane in ((image, volume[z]), (label, truth[z])):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(path, plane)
            pairs.append((image, label))
        return pairs
    raise SystemExit(f"unknown cross-dataset set {name}")


def stardist_overlap(work: Path) -> str:
    """Is the StarDist demo image a crop of a DSB training image (then it cannot be a cross-dataset
    test)? The best normalized cross-correlation of its centre 256² against every DSB image at
    least that large (0.96 measured: it is one)."""
    from skimage.feature import match_template

    path = work / "stardist_check.json"
    if path.is_file():
        return json.loads(path.read_text())["result"]
    demo = tifffile.imread(next((DATA / "stardist_demo_nuclei2d" / "images").glob("*.tif"))).astype(np.float32)
    patch = demo[128:384, 128:384]
    best, where = -1.0, ""
    for image in sorted((DSB / "images").glob("*.tif")):
        ref = tifffile.imread(image).astype(np.float32)
        if ref.shape[0] < patch.shape[0] or ref.shape[1] < patch.shape[1]:
            continue
        score = float(match_template(ref, patch).max())
        if score > best:
            best, where = score, image.name
    result = f"best normalized cross-correlation of its centre with a DSB training image: {best:.2f} ({where[:12]})"
    path.write_text(json.dumps({"result": result, "best": best}))
    return result


# --------------------------------------------------------------------------- configs


def set_key(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def make_config(name: str, code: Path, patches: int, sheet: Path, experiment: str,
                overrides: list[str]) -> dict[str, Any]:
    """The experiment config: ``before`` (frozen above) or ``after`` (the code's example), data
    from ``sheet``, the training budget, scores at IoU 0.5 and 0.75."""
    if name == "before":
        cfg = copy.deepcopy(BEFORE)
        cfg["train"]["epochs"] = max(1, round(patches / cfg["train"]["patches_per_epoch"]))
    else:
        cfg = yaml.safe_load((code / "config" / "examples" / "instance_2d.yaml").read_text())
        cfg.setdefault("train", {})["budget_minutes"] = patches / PATCHES_PER_MINUTE
    cfg["experiment"] = experiment
    cfg["data"] = {"samples": str(sheet)}
    cfg.setdefault("evaluate", {})["iou_thresholds"] = [0.5, 0.75]
    for item in overrides:
        key, _, value = item.partition("=")
        set_key(cfg, key, yaml.safe_load(value))
    return cfg


def write_sheet(path: Path, train: list[tuple[Path, Path]], test: list[tuple[Path, Path]],
                val: list[tuple[Path, Path]] = ()) -> None:
    """The run's sample sheet; without ``val`` rows the workflow splits ``train.val_fraction`` off."""
    rows = [{"image": str(i), "label": str(lab), "split": "train"} for i, lab in train]
    rows += [{"image": str(i), "label": str(lab), "split": "val"} for i, lab in val]
    rows += [{"image": str(i), "label": str(lab), "split": "test"} for i, lab in test]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


# --------------------------------------------------------------------------- runs


def run_experiment(folder: Path, cfg: dict[str, Any], code: Path, log: Path) -> float:
    """One workflow run in ``folder``; returns its wall time in seconds."""
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(code / "workflow" / "Snakefile"), "--directory", str(folder),
           "--configfile", str(config), "--cores", "2", "--rerun-incomplete"]
    env = {**os.environ, "PYTHONPATH": str(code / "src")}
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"workflow failed in {folder}; see {log}")
    return time.perf_counter() - start


def score_kept_epochs(folder: Path, experiment: str, code: Path, subsets: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Pooled scores of the weights of every kept epoch (``--keep-epochs``: ``train.keep_epochs``),
    each predicted through the workflow with the run's tuned thresholds: in a twin of the run
    folder whose inputs are hard links (cheap) and whose every file the workflow may write is a
    file of its own (logs, Snakemake's records and benchmark tables copied, outputs downstream
    of the model removed), and whose ``best.pt`` and ``model.pt`` hold that epoch's weights with
    the originals' times, so only prediction, post-processing and scoring run again (a log that
    shows training or tuning stops the benchmark)."""
    import torch

    out = folder / "results" / experiment
    rows = []
    for kept in sorted((out / "model" / "epochs").glob("epoch_*.pt")):
        epoch = int(kept.stem.split("_")[1])
        twin = folder.with_name(f"{folder.name}~{kept.stem}")
        shutil.rmtree(twin, ignore_errors=True)
        own = (".snakemake", "logs", "benchmarks", "snakemake.log", "config.yaml")
        shutil.copytree(folder, twin, copy_function=os.link, ignore=shutil.ignore_patterns(*own))
        for name in (".snakemake", f"results/{experiment}/logs", f"results/{experiment}/benchmarks"):
            shutil.copytree(folder / name, twin / name)
        twin_out = twin / "results" / experiment
        for name in ("predictions", "labels", "objects", "metrics", "report"):
            shutil.rmtree(twin_out / name, ignore_errors=True)
        for name in ("metrics.csv", "summary.csv", "report.html"):
            (twin_out / name).unlink(missing_ok=True)
        weights = torch.load(kept, map_location="cpu", weights_only=True)
        for name in ("best.pt", "model.pt"):
            ckpt = torch.load(out / "model" / name, map_location="cpu", weights_only=True)
            ckpt.update({k: weights[k] for k in ("state_dict", "epoch", "val_loss", "monitor_value")})
            target = twin_out / "model" / name
            target.unlink()
            torch.save(ckpt, target)
            times = (out / "model" / name).stat()
            os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["data"]["samples"] = str(twin / Path(cfg["data"]["samples"]).relative_to(folder))
        (twin / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(code / "workflow" / "Snakefile"), "--directory", str(twin),
               "--configfile", str(twin / "config.yaml"), "--cores", "2", "--rerun-triggers", "mtime", "input"]
        log = twin / "snakemake.log"
        with open(log, "w") as handle:
            proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(code / "src")})
        if proc.returncode != 0 or re.search(r"^(local)?rule (train|train_inputs|tune|prepare|predict_for_tuning):", log.read_text(), flags=re.M):
            raise SystemExit(f"scoring epoch {epoch} failed or trained again in {twin}; see {log}")
        metrics = pd.read_csv(twin_out / "metrics.csv")
        rows += [{"held_out": name, "epoch": epoch, **pooled(metrics[metrics["image"].astype(str).isin(ids)])}
                 for name, ids in subsets.items()]
        shutil.rmtree(twin)
    return rows


def pooled(metrics: pd.DataFrame) -> dict[str, float]:
    """F1 at IoU 0.5 and 0.75, precision and recall at 0.5, from TP/FP/FN summed over the images."""
    out: dict[str, float] = {"images": len(metrics)}
    for t in ("0.5", "0.75"):
        tp, fp, fn = (float(metrics[f"{k}@{t}"].sum()) for k in ("tp", "fp", "fn"))
        out[f"f1@{t}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        if t == "0.5":
            out["precision@0.5"] = tp / (tp + fp) if tp + fp else float("nan")
            out["recall@0.5"] = tp / (tp + fn) if tp + fn else float("nan")
    return out


def collect(folder: Path, experiment: str, subsets: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Pooled scores of each subset of test images, with the run's training time and patches seen."""
    out = folder / "results" / experiment
    metrics = pd.read_csv(out / "metrics.csv")
    history = pd.read_csv(out / "model" / "history.csv")
    settled = yaml.safe_load((out / "config.yaml").read_text())
    train_s = float(pd.read_csv(out / "benchmarks" / "train.tsv", sep="\t")["s"].iloc[0])
    run = {"train_min": train_s / 60, "epochs": len(history),
           "patches": len(history) * int(settled["train"]["patches_per_epoch"])}
    return [{"held_out": name, **pooled(metrics[metrics["image"].astype(str).isin(ids)]), **run}
            for name, ids in subsets.items()]


def run_one(args: argparse.Namespace, work: Path, kind: str, name: str, train: list[tuple[Path, Path]],
            test: dict[str, list[tuple[Path, Path]]], val: list[tuple[Path, Path]] = ()) -> None:
    """Train on ``train``, predict and score every test subset (name -> pairs) in one workflow run."""
    label = args.label or args.config
    experiment = f"{label}_{kind}_{name}".replace("/", "_")
    folder = work / "runs" / experiment
    sheet = folder / "samples.csv"
    write_sheet(sheet, train, [p for pairs in test.values() for p in pairs], val)
    keep = [f"train.keep_epochs={args.keep_epochs}"] if args.keep_epochs else []
    cfg = make_config(args.config, Path(args.code), args.patches, sheet, experiment, args.set + keep)
    wall = run_experiment(folder, cfg, Path(args.code), folder / "snakemake.log")
    subsets = {k: [Path(i).stem for i, _ in pairs] for k, pairs in test.items()}
    with open(work / "results.jsonl", "a") as handle:
        for row in collect(folder, experiment, subsets):
            row = {"config": label, "kind": kind, "budget_patches": args.patches, "wall_min": wall / 60,
                   "overrides": args.set, **row}
            handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    if args.keep_epochs:
        with open(work / "epochs.jsonl", "a") as handle:
            for row in score_kept_epochs(folder, experiment, Path(args.code), subsets):
                row = {"config": label, "kind": kind, "budget_patches": args.patches, "overrides": args.set, **row}
                handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def table(work: Path) -> str:
    """Markdown table of every result so far (the last run of each configuration, test and budget),
    with the mean over the leave-type-out groups and the pooled F1 over all of them."""
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows).drop_duplicates(["config", "kind", "held_out", "budget_patches"], keep="last")
    lines = ["| config | budget (patches) | test set | images | patches seen | training min | F1@0.5 | F1@0.75 "
             "| precision@0.5 | recall@0.5 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in df.sort_values(["budget_patches", "kind", "held_out", "config"], kind="stable").to_dict("records"):
        lines.append(f"| {r['config']} | {r['budget_patches']:,} | {r['kind']}: {r['held_out']} | {r['images']} "
                     f"| {r['patches']:,} | {r['train_min']:.0f} | {r['f1@0.5']:.3f} | {r['f1@0.75']:.3f} "
                     f"| {r['precision@0.5']:.3f} | {r['recall@0.5']:.3f} |")
    groups = df[df["kind"] == "leave-type-out"]
    for (config, budget), part in groups.groupby(["config", "budget_patches"]):
        # the mean over the groups every configuration has at this budget: means comparable by row
        common = set.intersection(*(set(g["held_out"]) for _, g in groups[groups["budget_patches"] == budget]
                                    .groupby("config")))
        part = part[part["held_out"].isin(common)]
        lines.append(f"| {config} | {budget:,} | leave-type-out, mean of {len(part)} groups "
                     f"({', '.join(sorted(common))}) | | | "
                     f"| **{part['f1@0.5'].mean():.3f}** | {part['f1@0.75'].mean():.3f} "
                     f"| {part['precision@0.5'].mean():.3f} | {part['recall@0.5'].mean():.3f} |")
    return "\n".join(lines)


def epochs_table(work: Path) -> str:
    """Markdown table of the kept epochs' scores (``--keep-epochs``), the last run of each."""
    rows = [json.loads(line) for line in (work / "epochs.jsonl").read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows).drop_duplicates(["config", "kind", "held_out", "budget_patches", "epoch"], keep="last")
    lines = ["| config | budget (patches) | test set | weights after epoch | F1@0.5 | F1@0.75 | precision@0.5 "
             "| recall@0.5 |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in df.sort_values(["budget_patches", "kind", "held_out", "config", "epoch"], kind="stable").to_dict("records"):
        lines.append(f"| {r['config']} | {r['budget_patches']:,} | {r['kind']}: {r['held_out']} | {r['epoch']} "
                     f"| {r['f1@0.5']:.3f} | {r['f1@0.75']:.3f} | {r['precision@0.5']:.3f} | {r['recall@0.5']:.3f} |")
    return "\n".join(lines)


def check_label(label: str, code: Path) -> None:
    """Stop before any run when ``label`` cannot start an experiment name of ``code``'s schema."""
    schema = yaml.safe_load((code / "src" / "biapipe" / "schemas" / "config.schema.yaml").read_text())
    pattern = schema["properties"]["experiment"]["pattern"]
    if not re.search(pattern, label):
        raise SystemExit(f"--label {label!r} does not match {pattern}: it starts the experiment name")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="after", help="before (the issue's config) or after (the example)")
    parser.add_argument("--label", help="name of this configuration in the table (default: --config)")
    parser.add_argument("--patches", type=int, default=3072, help="training budget in 128² patches")
    parser.add_argument("--groups", default="", help="leave-type-out groups to run (comma-separated; 'all')")
    parser.add_argument("--cross", action="store_true", help="train on all of DSB2018 fluo, score the other sets")
    parser.add_argument("--code", default=str(REPO), help="checkout whose workflow runs (default: this one)")
    parser.add_argument("--workdir", default=str(REPO / "results" / "bench_generalization"))
    parser.add_argument("--set", action="append", default=[], help="override a config key: a.b.c=value (YAML)")
    parser.add_argument("--keep-epochs", type=int, default=0, help="keep the weights of every N-th epoch "
                        "(train.keep_epochs) and score each on the test sets with the run's tuned thresholds "
                        "(to WORKDIR/epochs.jsonl)")
    parser.add_argument("--val-group", default=None, help="validate on this whole group (another unseen type: "
                        "it chooses best.pt and tunes the thresholds) instead of a random share of the training "
                        "images; it is not trained on")
    parser.add_argument("--table", action="store_true", help="print the table of the results so far")
    args = parser.parse_args()
    check_label(args.label or args.config, Path(args.code))
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    images = dsb_table(work)
    if args.table:
        print("| group | images | rule |\n|---|---:|---|")
        for name, (text, _) in GROUPS.items():
            print(f"| {name} | {int((images['group'] == name).sum())} | {text} |")
        print(f"\nStarDist demo image (left out): {stardist_overlap(work)}\n")
        print(table(work))
        if (work / "epochs.jsonl").exists():
            print("\n" + epochs_table(work))
        return
    pair = {r.image: (DSB / "images" / r.image, DSB / "labels" / r.image) for r in images.itertuples()}
    groups = list(GROUPS) if args.groups == "all" else [g for g in args.groups.split(",") if g]
    if args.val_group is not None and args.val_group not in GROUPS:
        raise SystemExit(f"unknown --val-group {args.val_group} (known: {', '.join(GROUPS)})")
    for group in groups:
        if group not in GROUPS:
            raise SystemExit(f"unknown group {group} (known: {', '.join(GROUPS)})")
        if args.val_group == group:
            raise SystemExit(f"--val-group {group} is the held-out group")
        train = [pair[i] for i in images.loc[~images["group"].isin([group, args.val_group]), "image"]]
        val = [pair[i] for i in images.loc[images["group"] == args.val_group, "image"]]
        test = [pair[i] for i in images.loc[images["group"] == group, "image"]]
        run_one(args, work, "leave-type-out", group, train, {group: test}, val)
    if args.cross:
        run_one(args, work, "cross", "dsb_all", list(pair.values()), {n: cross_pairs(n, work) for n in CROSS})


if __name__ == "__main__":
    main()
