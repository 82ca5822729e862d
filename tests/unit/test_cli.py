"""The biapipe command: demo data and evaluation of two folders with the workflow's metrics."""

import numpy as np
import pandas as pd
import tifffile

from biapipe.cli import main


def test_demo_data_then_evaluate_instance_against_itself(tmp_path):
    assert main(["demo-data", str(tmp_path / "d"), "--ndim", "2", "--n-train", "1", "--n-val", "0", "--n-test", "2", "--size", "48"]) == 0
    labels = tmp_path / "d" / "test" / "labels"
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--workflow", "instance", "--pred", str(labels), "--gt", str(labels), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 2 and (table["f1@0.5"] == 1.0).all()


def test_evaluate_semantic_known_iou(tmp_path):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir(), gt.mkdir()
    a = np.zeros((4, 4), np.uint8)
    a[0, :2] = 1  # 2 px
    b = np.zeros((4, 4), np.uint8)
    b[0, 1:4] = 1  # 3 px, 1 shared -> IoU 1/4
    tifffile.imwrite(pred / "x.tif", a)
    tifffile.imwrite(gt / "x.tif", b)
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--workflow", "semantic", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    assert pd.read_csv(out).loc[0, "iou_1"] == 0.25


def test_evaluate_detection_points(tmp_path):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir(), gt.mkdir()
    (gt / "x.csv").write_text("y,x\n10,10\n20,20\n")
    (pred / "x.csv").write_text("y,x,score,class\n10,11,0.9,0\n40,40,0.8,0\n")
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--workflow", "detection", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    row = pd.read_csv(out).loc[0]
    assert (row["tp"], row["fp"], row["fn"]) == (1, 1, 1)


def test_missing_prediction_is_an_error(tmp_path, capsys):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir(), gt.mkdir()
    tifffile.imwrite(gt / "x.tif", np.zeros((4, 4), np.uint8))
    assert main(["evaluate", "--workflow", "semantic", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "m.csv")]) == 2
    assert "no prediction for ground truth 'x'" in capsys.readouterr().err


def test_job_threads_override_the_config_thread_count():
    from biapipe.core.config import defaults
    from biapipe.workflow.stages import with_threads

    section = defaults("predict", threads=8, tile_size=[64, 64])
    scaled = with_threads(section, 2)
    assert scaled == {**section, "threads": 2}
    assert section["threads"] == 8  # the shared config is not modified
    assert with_threads(section, None) is section
