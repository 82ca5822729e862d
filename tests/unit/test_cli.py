"""The biapipe command: demo data and evaluation of two folders with the workflow's metrics."""

import numpy as np
import pandas as pd
import pytest
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


def test_evaluate_detection_tolerance_voxel_size_and_classes(tmp_path):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir(), gt.mkdir()
    (gt / "x.csv").write_text("y,x,class\n10,10,1\n30,30,3\n")
    (pred / "x.csv").write_text("y,x,score,class\n10,14,0.9,1\n30,31,0.8,1\n")  # 4 px off; 1 px off, wrong class
    out = tmp_path / "m.csv"

    def scores(*options):
        assert main(["evaluate", "--workflow", "detection", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                     *options]) == 0
        return pd.read_csv(out).loc[0]

    assert scores()["tp"] == 1  # default tolerance 3: only the 1-pixel pair
    assert scores("--tolerance", "5")["tp"] == 2
    assert scores("--tolerance", "5", "--voxel-size", "2", "2")["tp"] == 1  # 4 px are 8 units
    row = scores("--tolerance", "5", "--classes", "1", "3")
    assert (row["tp_class_1"], row["fp_class_1"], row["fn_class_3"]) == (1, 1, 1)
    summary = pd.read_csv(tmp_path / "m_summary.csv").loc[0]
    assert summary["ap_class_1"] == pytest.approx(1.0) and summary["ap_class_3"] == 0.0  # ranked AP, per class


def test_evaluate_instance_iou_thresholds_and_mixed_2d_3d(tmp_path):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir(), gt.mkdir()
    flat, volume = np.zeros((16, 16), np.uint16), np.zeros((4, 16, 16), np.uint16)
    flat[2:8, 2:8] = 1
    volume[1:3, 4:12, 4:12] = 1
    shifted = np.zeros_like(volume)
    shifted[1:3, 4:12, 6:14] = 1  # IoU 48/80 = 0.6
    tifffile.imwrite(gt / "a.tif", flat), tifffile.imwrite(pred / "a.tif", flat)
    tifffile.imwrite(gt / "b.tif", volume, photometric="minisblack")
    tifffile.imwrite(pred / "b.tif", shifted, photometric="minisblack")
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--workflow", "instance", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                 "--iou-thresholds", "0.5", "0.75"]) == 0
    table = pd.read_csv(out).set_index("image")
    assert [c for c in table.columns if c.startswith("f1@")] == ["f1@0.5", "f1@0.75"]
    assert table.loc["a", "f1@0.75"] == 1.0
    assert (table.loc["b", "f1@0.5"], table.loc["b", "f1@0.75"]) == (1.0, 0.0)
    # forcing one dimensionality stops at the file that does not fit, naming it
    assert main(["evaluate", "--workflow", "instance", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                 "--ndim", "2"]) == 2


def test_classes_option_is_per_workflow(tmp_path, capsys):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir(), gt.mkdir()
    a = np.array([[0, 1, 2, 2]], np.uint8)
    tifffile.imwrite(pred / "x.tif", a), tifffile.imwrite(gt / "x.tif", a)
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--workflow", "semantic", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                 "--classes", "3"]) == 0
    assert pd.read_csv(out).loc[0, "iou_2"] == 1.0
    assert main(["evaluate", "--workflow", "semantic", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                 "--classes", "a", "b"]) == 2
    assert "--classes: the semantic workflow takes the number of classes" in capsys.readouterr().err
    assert main(["evaluate", "--workflow", "instance", "--pred", str(pred), "--gt", str(gt), "--out", str(out),
                 "--classes", "1"]) == 2
    assert "--classes: the instance workflow takes no class list" in capsys.readouterr().err


def test_summary_of_a_run_that_has_not_finished(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == 2
    assert f"{tmp_path}/config.yaml: not found" in capsys.readouterr().err


def test_predict_with_a_missing_model_writes_nothing(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "x.tif", np.zeros((8, 8), np.uint8))
    out = tmp_path / "run"
    assert main(["predict", str(tmp_path / "absent.pt"), str(images), "--out", str(out)]) == 2
    assert f"{tmp_path / 'absent.pt'}: model not found" in capsys.readouterr().err
    assert not out.exists()
