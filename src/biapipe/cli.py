"""The ``biapipe`` command: demo data, evaluation of any two folders (without Snakemake),
the three-line summary of a finished run, prediction with a trained model (through the
workflow), and model export."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .core import imageio
from .core.config import load_config, merge, validate_config
from .core.errors import BiapipeError
from .data.samples import list_images
from .tasks import REGISTRY, get_task, task_class
from .tasks.from_model import config_with_model
from .workflow.predict_command import predict_command
from .workflow.report import summary_lines


def _demo_data(args: argparse.Namespace) -> None:
    cfg = validate_config({"experiment": "demo", "workflow": args.workflow, "ndim": args.ndim, "seed": args.seed,
                           "data": {"demo": {"folder": args.out, "n_train": args.n_train, "n_val": args.n_val,
                                             "n_test": args.n_test, "size": args.size}}})
    get_task(cfg).write_demo()
    print(f"demo data ({args.ndim}D) written to {args.out}")


def evaluation_config(args: argparse.Namespace) -> dict:
    """The experiment config the evaluate options stand for (the workflow's own scoring keys)."""
    cfg: dict = {"experiment": "evaluate", "workflow": args.workflow, "data": {"demo": {}},
                 "ndim": args.ndim or (len(args.voxel_size) if args.voxel_size else 2),
                 "targets": {"binarize": args.binarize}, "evaluate": {}}
    if args.voxel_size:
        cfg["data"]["voxel_size"] = list(args.voxel_size)
    if args.iou_thresholds:
        cfg["evaluate"]["iou_thresholds"] = list(args.iou_thresholds)
    if args.tolerance is not None:
        cfg["evaluate"]["detection"] = {"tolerance": args.tolerance}
    if args.classes:
        cfg = merge(cfg, task_class(args.workflow).classes_config(args.classes))
    return cfg


def _evaluate(args: argparse.Namespace) -> None:
    task = get_task(validate_config(evaluation_config(args))).for_outputs(args.pred)
    table, details = task.score_folders(args.pred, args.gt, args.ndim)
    out = Path(args.out)
    imageio.write_csv(out, table)
    summary = task.summarize(table, details) if len(table) else pd.DataFrame([{"n_images": 0}])
    imageio.write_csv(out.with_name(f"{out.stem}_summary.csv"), summary)
    if task.metrics_tables:
        task.write_metrics_tables(out, {name: str(out.with_name(f"{out.stem}_{Path(path).name}"))
                                        for name, path in task.metrics_tables.items()})
    print(summary.to_string(index=False))


def _summary(args: argparse.Namespace) -> None:
    print("\n".join(summary_lines(args.results)))


def _export_bmz(args: argparse.Namespace) -> None:
    from .inference.export_bmz import export_bmz

    if args.config:
        cfg = load_config(args.config)
    elif args.test_image:  # the checkpoint carries its experiment's config
        cfg = config_with_model({"experiment": Path(args.model).stem, "model": args.model,
                                 "data": {"test": {"images": "."}}})
    else:
        raise BiapipeError("export-bmz: give --config (the experiment's) or --test-image")
    written = export_bmz(args.model, cfg, get_task(cfg), args.out, args.test_image or _first_image(cfg),
                         name=args.name, authors=args.author or ["biapipe user"], license=args.license,
                         stats=args.stats, validate=not args.no_validate)
    print(f"BioImage Model Zoo package written to {written}")


def _predict(args: argparse.Namespace) -> int:
    return predict_command(args.model, args.inputs, args.out, labels=args.labels, workflow=args.workflow,
                           settings=args.set or [], profile=args.profile, cores=args.cores, dry_run=args.dry_run)


def _first_image(cfg: dict) -> str:
    """The first test (else training) image of the config, as the package's test input."""
    for split in ("test", "train"):
        folder = (cfg["data"][split] or {}).get("images")
        if folder and Path(folder).is_dir():
            images = list_images(folder)
            if images:
                return images[sorted(images)[0]]
    raise BiapipeError("no test image found in data.test or data.train; pass --test-image")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biapipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="write synthetic images with ground truth in the input layout")
    demo.add_argument("out", help="output folder")
    demo.add_argument("--workflow", default="semantic", choices=sorted(REGISTRY))
    demo.add_argument("--ndim", type=int, default=2, choices=[2, 3])
    demo.add_argument("--n-train", type=int, default=8)
    demo.add_argument("--n-val", type=int, default=2)
    demo.add_argument("--n-test", type=int, default=4)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo_data)

    ev = sub.add_parser("evaluate", help="score a folder of outputs against a folder of ground truth")
    ev.add_argument("--workflow", required=True, choices=sorted(REGISTRY))
    ev.add_argument("--pred", required=True, help="folder of post-processed outputs")
    ev.add_argument("--gt", required=True, help="folder of ground-truth labels, same file names")
    ev.add_argument("--out", required=True, help="per-image metrics CSV to write")
    ev.add_argument("--ndim", type=int, choices=[2, 3],
                    help="read every file as 2D or 3D (default: each pair's own dimensionality)")
    ev.add_argument("--classes", nargs="+", metavar="C",
                    help="semantic: the number of classes K (default 2); detection: the class column's values in "
                         "channel order (targets.detection.classes), e.g. --classes 1 3")
    ev.add_argument("--binarize", action="store_true", help="semantic: ground-truth labels > 0 are foreground")
    ev.add_argument("--iou-thresholds", nargs="+", type=float, metavar="T",
                    help="instance: IoU thresholds of the matching (evaluate.iou_thresholds; default 0.1 ... 0.9)")
    ev.add_argument("--tolerance", type=float,
                    help="detection: largest distance of a match, physical units (evaluate.detection.tolerance; "
                         "default 3)")
    ev.add_argument("--voxel-size", nargs="+", type=float, metavar="S",
                    help="(Z) Y X size of a voxel (data.voxel_size): detection distances and object sizes; "
                         "2D files use the last two")
    ev.set_defaults(func=_evaluate)

    summ = sub.add_parser("summary", help="three lines on a finished run: what ran, the main score, where the "
                                          "outputs and the report are")
    summ.add_argument("results", help="the run's folder, e.g. results/demo")
    summ.set_defaults(func=_summary)

    pred = sub.add_parser("predict", help="predict images with a trained model (a biapipe checkpoint or a BioImage "
                                          "Model Zoo package) through the workflow, without writing a config")
    pred.add_argument("model", help="model.pt / best.pt of an experiment, or a BMZ package (.zip or folder)")
    pred.add_argument("inputs", nargs="+", metavar="INPUT", help="a folder of images, a glob (quoted), or image files")
    pred.add_argument("--out", required=True, help="output folder (its name is the experiment's); the config used is "
                                                   "written there as predict.yaml")
    pred.add_argument("--labels", help="folder of ground truth named like the images: outputs are scored")
    pred.add_argument("--workflow", choices=sorted(REGISTRY), help="for a package that does not say its own")
    pred.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a config key, e.g. --set postprocess.threshold=0.3 --set predict.tile_size=[512,512]")
    pred.add_argument("--profile", help="Snakemake profile, e.g. profiles/slurm (cluster)")
    pred.add_argument("--cores", default="all", help="cores for Snakemake (default all)")
    pred.add_argument("-n", "--dry-run", action="store_true", help="show the plan only")
    pred.set_defaults(func=_predict)

    bmz = sub.add_parser("export-bmz",
                         help="write a trained model as a BioImage Model Zoo package (needs biapipe[export])")
    bmz.add_argument("--model", required=True, help="checkpoint, e.g. results/EXP/model/best.pt")
    bmz.add_argument("--config", help="the experiment's config YAML (default: the one the checkpoint records; then "
                                      "--test-image is needed)")
    bmz.add_argument("--out", required=True, help="package to write: a .zip file, else a folder")
    bmz.add_argument("--test-image", help="raw image for the test input (default: first test, else training image)")
    bmz.add_argument("--stats", help="normalization statistics JSON, needed when normalize.scope is dataset")
    bmz.add_argument("--name", help="model name in rdf.yaml")
    bmz.add_argument("--author", action="append", help="author name (repeatable)")
    bmz.add_argument("--license", default="MIT", help="SPDX licence id of the weights (default MIT)")
    bmz.add_argument("--no-validate", action="store_true", help="skip bioimageio.spec's validation of the package")
    bmz.set_defaults(func=_export_bmz)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except BiapipeError as exc:
        print(f"biapipe: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
