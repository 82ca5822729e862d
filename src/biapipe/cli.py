"""The ``biapipe`` command: demo data and evaluation of any two folders, without Snakemake."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import BiapipeError


def _demo_data(args: argparse.Namespace) -> None:
    from .demo import make_classification_demo, make_demo_data

    make = make_classification_demo if args.workflow == "classification" else make_demo_data  # n_*: per class
    make(args.out, args.ndim, args.n_train, args.n_val, args.n_test, args.size, args.seed)
    print(f"demo data ({args.ndim}D) written to {args.out}")


def _evaluate(args: argparse.Namespace) -> None:
    if args.workflow == "classification":  # --pred: classes/{image}.csv, --gt: <class>/<image> folders
        from .tasks.classification import evaluate_folders

        print(evaluate_folders(args.pred, args.gt, args.out).to_string(index=False))
        return
    import pandas as pd

    from . import imageio
    from .config import validate_config
    from .imageio import IMAGE_SUFFIXES
    from .samples import LABEL_SUFFIXES, list_images
    from .tasks import get_task

    cfg = validate_config(
        {
            "experiment": "evaluate",
            "workflow": args.workflow,
            "ndim": args.ndim,
            "data": {"demo": {}},
            "targets": {"classes": args.classes, "binarize": args.binarize},
        }
    )
    task = get_task(cfg)
    suffixes = LABEL_SUFFIXES.get(args.workflow, IMAGE_SUFFIXES)
    preds = list_images(args.pred, (task.output_suffix,) if task.output_suffix == ".csv" else IMAGE_SUFFIXES)
    gts = list_images(args.gt, suffixes)
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise BiapipeError(f"{args.pred}: no prediction for ground truth '{missing[0]}' ({len(missing)} missing)")
    rows = []
    for image_id, gt_path in gts.items():
        output = task.read_output(preds[image_id])
        label = task.read_label(gt_path, None) if suffixes != IMAGE_SUFFIXES else imageio.read_label(gt_path, args.ndim)
        rows.append({"image": image_id, **task.evaluate(output, label)})
    table = pd.DataFrame(rows)
    imageio.write_csv(args.out, table)
    summary_path = Path(args.out).with_name(Path(args.out).stem + "_summary.csv")
    imageio.write_csv(summary_path, task.summarize(table))
    print(task.summarize(table).to_string(index=False))


def _export_bmz(args: argparse.Namespace) -> None:
    from .config import load_config
    from .export_bmz import export_bmz

    cfg = load_config(args.config)
    written = export_bmz(args.model, cfg, args.out, args.test_image or _first_image(cfg), name=args.name,
                         authors=args.author or ["biapipe user"], license=args.license, stats=args.stats,
                         validate=not args.no_validate)
    print(f"BioImage Model Zoo package written to {written}")


def _first_image(cfg: dict) -> str:
    """The first test (else training) image of the config, as the package's test input."""
    from .samples import list_images

    for split in ("test", "train"):
        folder = (cfg["data"].get(split) or {}).get("images")
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
    demo.add_argument("--workflow", default="semantic", choices=["semantic", "instance", "detection", "classification"])
    demo.add_argument("--ndim", type=int, default=2, choices=[2, 3])
    demo.add_argument("--n-train", type=int, default=8)
    demo.add_argument("--n-val", type=int, default=2)
    demo.add_argument("--n-test", type=int, default=4)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo_data)

    ev = sub.add_parser("evaluate", help="score a folder of outputs against a folder of ground truth")
    ev.add_argument("--workflow", required=True, choices=["semantic", "instance", "detection", "classification"])
    ev.add_argument("--pred", required=True, help="folder of post-processed outputs")
    ev.add_argument("--gt", required=True, help="folder of ground-truth labels, same file names")
    ev.add_argument("--out", required=True, help="per-image metrics CSV to write")
    ev.add_argument("--ndim", type=int, default=2, choices=[2, 3])
    ev.add_argument("--classes", type=int, default=2)
    ev.add_argument("--binarize", action="store_true", help="semantic: ground-truth labels > 0 are foreground")
    ev.set_defaults(func=_evaluate)

    bmz = sub.add_parser("export-bmz",
                         help="write a trained model as a BioImage Model Zoo package (needs biapipe[export])")
    bmz.add_argument("--model", required=True, help="checkpoint, e.g. results/EXP/model/best.pt")
    bmz.add_argument("--config", required=True, help="the experiment's config YAML (task and normalization)")
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
        args.func(args)
    except BiapipeError as exc:
        print(f"biapipe: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
