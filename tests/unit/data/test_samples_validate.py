"""Sample discovery and header-level input checks, each bad input with its message."""

import numpy as np
import pytest
from conftest import write_tif

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError, InputError
from biapipe.data.validate import check_dataset
from biapipe.workflow.smk import discover_dataset as discover


def make_split(root, split, names, shape=(32, 32), label_shape=None, dtype=np.uint8):
    for n in names:
        write_tif(root / split / "images" / f"{n}.tif", np.ones(shape, dtype))
        write_tif(root / split / "labels" / f"{n}.tif", np.zeros(label_shape or shape, np.uint16))


def cfg_for(root, **extra):
    cfg = {
        "experiment": "t",
        "workflow": "semantic",
        "ndim": 2,
        "data": {
            "train": {"images": str(root / "train" / "images"), "labels": str(root / "train" / "labels")},
            "test": {"images": str(root / "test" / "images"), "labels": str(root / "test" / "labels")},
        },
    }
    for k, v in extra.items():
        cfg[k] = v
    return validate_config(cfg)


def test_pairs_and_validation_split(tmp_path):
    make_split(tmp_path, "train", [f"a{i}" for i in range(10)])
    make_split(tmp_path, "test", ["t0", "t1"])
    ds = discover(cfg_for(tmp_path))
    assert len(ds.train) == 8 and len(ds.val) == 2 and ds.val_from_train
    assert {s.id for s in ds.train} | {s.id for s in ds.val} == {f"a{i}" for i in range(10)}
    assert [s.id for s in ds.test] == ["t0", "t1"]
    assert all(s.label.endswith(f"{s.id}.tif") for s in ds.all())
    # the same seed gives the same validation images
    assert [s.id for s in discover(cfg_for(tmp_path)).val] == [s.id for s in ds.val]


def test_missing_label(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"])
    (tmp_path / "train" / "labels" / "b.tif").unlink()
    with pytest.raises(InputError, match=r"train/images/b.tif: has no label"):
        discover(cfg_for(tmp_path))


def test_label_without_image(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"])
    (tmp_path / "train" / "images" / "b.tif").unlink()
    with pytest.raises(InputError, match=r"train/labels/b.tif: is a label without an image"):
        discover(cfg_for(tmp_path))


def test_empty_folder(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir(parents=True)
    make_split(tmp_path, "test", ["t"])
    with pytest.raises(InputError, match=r"train/images: no images"):
        discover(cfg_for(tmp_path))


def test_missing_folder(tmp_path):
    make_split(tmp_path, "test", ["t"])
    with pytest.raises(InputError, match=r"train/images: folder not found"):
        discover(cfg_for(tmp_path))


def test_names_may_repeat_across_training_and_test(tmp_path):
    """Many layouts number every split from 0001: test names live apart from training names."""
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "val", ["a"])
    make_split(tmp_path, "test", ["a", "b"])
    cfg = validate_config({**cfg_for(tmp_path), "data": {s: {"images": str(tmp_path / s / "images"),
                                                             "labels": str(tmp_path / s / "labels")}
                                                         for s in ("train", "val", "test")}})
    ds = discover(cfg)
    assert [s.id for s in ds.train] == ["a", "b"] and [s.id for s in ds.test] == ["a", "b"]
    assert [(s.id, s.image) for s in ds.val] == [("val_a", str(tmp_path / "val" / "images" / "a.tif"))]
    assert set(ds.training()) == {"a", "b", "val_a"} and set(ds.testing()) == {"a", "b"}


def test_duplicate_names_within_the_test_images(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    sheet = tmp_path / "sheet.csv"
    (tmp_path / "other").mkdir()
    write_tif(tmp_path / "other" / "b.tif", np.zeros((16, 16), np.uint8))
    sheet.write_text("image,label,split\ntrain/images/a.tif,train/labels/a.tif,train\n"
                     "train/images/b.tif,train/labels/b.tif,test\nother/b.tif,,test\n")
    with pytest.raises(InputError, match="other/b.tif.*unique within the test images"):
        discover(validate_config({**cfg_for(tmp_path), "data": {"samples": str(sheet)}}))


def test_shape_mismatch(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"], shape=(32, 32), label_shape=(32, 30))
    cfg = cfg_for(tmp_path)
    with pytest.raises(InputError, match=r"test/labels/t.tif: label shape \(32, 30\) does not match image"):
        check_dataset(discover(cfg), cfg, "image")


def test_3d_data_with_ndim2(tmp_path):
    make_split(tmp_path, "train", ["a", "b"], shape=(8, 32, 32))
    make_split(tmp_path, "test", ["t"])
    cfg = cfg_for(tmp_path)
    with pytest.raises(InputError, match=r"train/images/[ab].tif: .*looks 3D"):
        check_dataset(discover(cfg), cfg, "image")


def test_2d_data_with_ndim3(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"])
    cfg = cfg_for(tmp_path, ndim=3)
    with pytest.raises(InputError, match=r"[ab].tif: .*2D but the config has ndim: 3"):
        check_dataset(discover(cfg), cfg, "image")


def test_unsupported_dtype_in_header(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"])
    write_tif(tmp_path / "train" / "images" / "a.tif", np.ones((32, 32), np.complex64))
    cfg = cfg_for(tmp_path)
    with pytest.raises(InputError, match=r"a.tif: unsupported image dtype complex64"):
        check_dataset(discover(cfg), cfg, "image")


def test_unreadable_file(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"])
    (tmp_path / "train" / "images" / "a.tif").write_bytes(b"this is not a tiff")
    cfg = cfg_for(tmp_path)
    with pytest.raises(InputError, match=r"a.tif: cannot read"):
        check_dataset(discover(cfg), cfg, "image")


def test_patch_larger_than_image_without_padding(tmp_path):
    make_split(tmp_path, "train", ["a", "b"], shape=(32, 32))
    make_split(tmp_path, "test", ["t"])
    cfg = cfg_for(tmp_path, train={"patch_size": [64, 64], "pad": False})
    with pytest.raises(InputError, match=r"smaller than train.patch_size \[64, 64\]; set train.pad: true"):
        check_dataset(discover(cfg), cfg, "image")
    cfg_ok = cfg_for(tmp_path, train={"patch_size": [64, 64], "pad": True})
    check_dataset(discover(cfg_ok), cfg_ok, "image")


def test_probe_cache_is_used(tmp_path):
    make_split(tmp_path, "train", ["a", "b"])
    make_split(tmp_path, "test", ["t"])
    cfg = cfg_for(tmp_path)
    cache = tmp_path / "cache.json"
    check_dataset(discover(cfg), cfg, "image", cache)
    assert cache.is_file() and "a.tif" in cache.read_text()
    # a changed file invalidates its entry: now mismatched shape is caught
    write_tif(tmp_path / "test" / "labels" / "t.tif", np.zeros((31, 32), np.uint16))
    with pytest.raises(InputError, match="does not match"):
        check_dataset(discover(cfg), cfg, "image", cache)


def test_sample_sheet(tmp_path):
    make_split(tmp_path, "train", ["a", "b", "c"])
    make_split(tmp_path, "test", ["t"])
    sheet = tmp_path / "samples.csv"
    sheet.write_text(
        "image,label,split\n"
        "train/images/a.tif,train/labels/a.tif,train\n"
        "train/images/b.tif,train/labels/b.tif,train\n"
        "train/images/c.tif,train/labels/c.tif,val\n"
        "test/images/t.tif,,test\n"
    )
    cfg = validate_config({"experiment": "s", "workflow": "semantic", "ndim": 2, "data": {"samples": str(sheet)}})
    ds = discover(cfg)
    assert [s.id for s in ds.train] == ["a", "b"] and [s.id for s in ds.val] == ["c"]
    assert ds.test[0].label is None and not ds.val_from_train
    sheet.write_text("image,label,split\ntrain/images/a.tif,train/labels/a.tif,training\n")
    with pytest.raises(InputError, match="split 'training' is not one of"):
        discover(cfg)
    sheet.write_text("image,label,split\ntrain/images/zz.tif,train/labels/a.tif,train\n")
    with pytest.raises(InputError, match="zz.tif: file not found"):
        discover(cfg)


def test_training_labels_required(tmp_path):
    make_split(tmp_path, "train", ["a"])
    cfg = validate_config(
        {"experiment": "t", "workflow": "semantic", "ndim": 2, "data": {"train": {"images": str(tmp_path / "train" / "images")}}}
    )
    with pytest.raises(ConfigError, match="data.train.labels"):
        discover(cfg)
