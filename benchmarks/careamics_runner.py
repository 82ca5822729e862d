"""CAREamics (N2V or CARE) on FMD for bench_restoration.py, run in CAREamics' own venv.

Not part of biapipe and never imported by it: ``bench_restoration.py`` runs this file with the
interpreter of a separate virtual environment (``pip install careamics`` with ``torch==2.13.0``
pinned, so that it takes this machine's CPU wheel), trains for the same wall time as biapipe
(a Lightning ``Timer`` callback stops training when the budget is spent), predicts the test
field and writes it as a float32 TIFF; the last stdout line is JSON with the times.

torchvision: careamics 0.3.5 pins ``torchvision<=0.26``, which needs torch 2.11; the torchvision
that matches torch 2.13 (0.28) on PyPI is built for the CUDA wheel and its operators fail to load
on the CPU wheel. N2V and CARE never use torchvision (only CAREamics' LVAE models import
``torchvision.transforms.functional``), so this script installs an empty stand-in module under
that name after importing torchmetrics and Lightning (which then see no torchvision at all).

Usage: <careamics venv>/bin/python careamics_runner.py --mode n2v|care --minutes M --data FMD_FOLDER
       --test fov19 --val fov17 fov18 --out prediction.tif [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import tifffile
import torch


def _stand_in_torchvision() -> None:
    import lightning.pytorch  # noqa: F401  (first: they must see torchvision absent)
    import torchmetrics  # noqa: F401

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0+absent"
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms, transforms.functional = transforms, functional
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["n2v", "care"], required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--val", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _stand_in_torchvision()
    from careamics import CAREamist
    from careamics.config import create_care_config, create_n2v_config
    from lightning.pytorch.callbacks import Timer

    data = Path(args.data)
    names = sorted(p.stem for p in (data / "images").glob("*.tif") if p.stem != args.test)
    train = [n for n in names if n not in args.val]
    read = lambda folder, ns: np.stack([tifffile.imread(data / folder / f"{n}.tif") for n in ns]).astype(np.float32)  # noqa: E731
    common = dict(experiment_name=f"fmd_{args.mode}", data_type="array", axes="SYX", patch_size=[64, 64],
                  batch_size=8, num_epochs=10_000)
    if args.mode == "n2v":
        config = create_n2v_config(**common)
        fit = dict(train_data=read("images", train), val_data=read("images", args.val))
    else:
        config = create_care_config(**common)
        fit = dict(train_data=read("images", train), train_data_target=read("targets", train),
                   val_data=read("images", args.val), val_data_target=read("targets", args.val))
    work = Path(args.out).with_suffix("")
    timer = Timer(duration=datetime.timedelta(seconds=args.minutes * 60))
    careamist = CAREamist(config, work_dir=work, callbacks=[timer], enable_progress_bar=False)
    start = time.perf_counter()
    careamist.train(**fit)
    train_s = time.perf_counter() - start
    test = tifffile.imread(data / "images" / f"{args.test}.tif").astype(np.float32)
    start = time.perf_counter()
    # one sample axis, as in training (CARE refuses axes without the sample axes of its targets)
    prediction = careamist.predict(test[None], axes="SYX", tile_size=(256, 256), tile_overlap=(48, 48))
    predict_s = time.perf_counter() - start
    result = prediction[0] if isinstance(prediction, tuple) else prediction
    result = np.asarray(result[0] if isinstance(result, list) else result).squeeze()
    tifffile.imwrite(args.out, result.astype(np.float32))
    print(json.dumps({"train_s": train_s, "predict_s": predict_s,
                      "epochs": int(careamist.trainer.current_epoch) if hasattr(careamist, "trainer") else None}))


if __name__ == "__main__":
    main()
