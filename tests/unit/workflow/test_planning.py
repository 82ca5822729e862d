"""Automatic planning: choices from a fingerprint, a written key wins, the same data plans the
same, budgets become epochs, and the fingerprint is cheap (a stable sample, cached)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import write_tif

from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.data import fingerprint as fingerprint_module
from biapipe.data.fingerprint import fingerprint, sample_ids
from biapipe.data.samples import Sample
from biapipe.tasks import get_task
from biapipe.workflow import smk
from biapipe.workflow.planning import PATCHES_PER_MINUTE, plan_config, receptive_field, written_keys

DSB_LIKE = {
    "images": 541, "sampled": 64, "ndim": 2, "voxel_size": None, "channels": 1, "dtypes": ["uint8"],
    "shape_median": [256, 320], "shape_min": [256, 256], "intensity": {"p1": 3.0, "p50": 6.0, "p99_8": 92.0},
    "objects": {"images_with_objects": 64, "diameter_median": 17.0, "diameter_p10": 9.0, "diameter_p90": 40.0,
                "count_median": 27, "foreground_median": 0.12, "touching_median": 0.004},
}


def raw(**sections) -> dict:
    cfg = {"experiment": "p", "workflow": "instance", "ndim": 2, "data": {"train": {"images": "x", "labels": "y"}}}
    cfg.update(sections)
    return cfg


def plan(raw_cfg: dict, fp: dict | None = DSB_LIKE, has_val: bool = True):
    cfg = validate_config(raw_cfg)
    return plan_config(raw_cfg, cfg, fp, get_task(cfg), has_val)


def test_written_keys_are_the_config_as_written():
    assert written_keys({"a": 1, "train": {"model": {"depth": 3}}}) == {"a", "train", "train.model",
                                                                        "train.model.depth"}


def test_a_dsb_like_dataset_plans_biapys_budget_as_the_issue_ran_it():
    cfg, record = plan(raw())
    train = cfg["train"]
    # median diameter 17 px -> 16 on the 2^(1/4) grid (within 16-40): every image zoomed to 16 px objects
    assert train["object_diameter"] == 16 and cfg["predict"]["rescale"] is True
    # about 6 diameters per patch side -> 128; receptive field of depth 3 (102 px) >= 3 x 16
    assert train["patch_size"] == [128, 128] and train["model"]["depth"] == 3 and receptive_field(2) < 48
    assert train["batch_size"] == 8 and train["model"]["width"] == 16
    # 40 reference minutes = 21,600 patches of 128² = 42 epochs of 512 (the issue's 21.5k)
    assert train["patches_per_epoch"] == 512 and train["epochs"] == round(40 * PATCHES_PER_MINUTE / 512) == 42
    assert train["early_stopping"]["patience"] == 42
    assert cfg["postprocess"]["instance"]["tuned"] is True
    # min_size: a ninth of the area of a 9 px object: pi/4 * 3² = 7
    assert cfg["postprocess"]["instance"]["min_size"] == 7
    assert cfg["targets"]["instance"]["channels"] == ["foreground", "contour"]
    assert cfg["postprocess"]["instance"]["seed_contour_depth"] == 0.05  # the tuner's start
    # test images are only zoomed down, so training zooms objects out to half the training scale
    assert train["augment"]["scale_range"] == [0.5, 1.4] and train["augment"]["scale"] == 0.3
    # instance: wider blur, shape and exposure changes than the schema's nnU-Net-like defaults
    augment = train["augment"]
    assert augment["elastic"] == 0.3 and augment["blur"] == 0.3 and augment["blur_range"] == [0.5, 2.0]
    assert augment["contrast_range"] == [0.5, 1.5] and augment["gamma_range"] == [0.5, 2.0]
    assert validate_config(raw())["train"]["augment"]["elastic"] == 0.0  # the schema's default, unplanned
    assert set(record.choices) >= {"train.object_diameter", "train.patch_size", "train.epochs", "normalize.method"}
    assert all(choice["why"] for choice in record.choices.values())


def test_a_written_key_wins_even_when_it_equals_the_schema_default():
    cfg, record = plan(raw(train={"batch_size": 4, "model": {"depth": 2}, "object_diameter": None},
                           predict={"rescale": False}))
    assert cfg["train"]["batch_size"] == 4 and cfg["train"]["model"]["depth"] == 2
    assert cfg["train"]["object_diameter"] is None and cfg["predict"]["rescale"] is False
    assert {"train.batch_size", "train.model.depth", "train.object_diameter"} <= set(record.written)
    assert "train.batch_size" not in record.choices
    # a task's planned key too: an augmentation written as the schema's default stays off
    off, record = plan(raw(train={"augment": {"elastic": 0.0}}))
    assert off["train"]["augment"]["elastic"] == 0.0 and "train.augment.elastic" in record.written
    assert off["train"]["augment"]["blur"] == 0.3
    # with the object scale left as it is, the patch follows the images' own median diameter (17 px)
    assert cfg["train"]["patch_size"] == [128, 128]


def test_budgets_and_networks_set_the_epochs():
    cfg, _ = plan(raw(train={"budget_minutes": 10}))
    assert cfg["train"]["patches_per_epoch"] * cfg["train"]["epochs"] == pytest.approx(10 * PATCHES_PER_MINUTE, rel=0.1)
    # a wider network costs 4x per patch: a quarter of the patches for the same budget
    wide, _ = plan(raw(train={"budget_minutes": 40, "model": {"width": 32}, "patches_per_epoch": 128}))
    assert wide["train"]["epochs"] == round(40 * PATCHES_PER_MINUTE / 4 / 128)
    # written epochs are kept
    fixed, _ = plan(raw(train={"epochs": 7}))
    assert fixed["train"]["epochs"] == 7


def test_crowded_objects_get_a_distance_channel_and_large_ones_a_deeper_network():
    crowded = {**DSB_LIKE, "objects": {**DSB_LIKE["objects"], "touching_median": 0.08}}
    cfg, _ = plan(raw(), crowded)
    assert cfg["targets"]["instance"]["channels"] == ["foreground", "contour", "distance"]
    large = {**DSB_LIKE, "shape_median": [1024, 1024],
             "objects": {**DSB_LIKE["objects"], "diameter_median": 60.0, "diameter_p10": 50.0}}
    cfg, _ = plan(raw(train={"object_diameter": None}), large)
    # 60 px objects kept at their scale: 256 px patches (6 x 60 capped), depth 4 (214 px >= 180)
    assert cfg["train"]["patch_size"] == [256, 256] and cfg["train"]["model"]["depth"] == 4
    assert cfg["train"]["batch_size"] == 2


def test_3d_plans_z_from_the_voxel_size():
    fp = {**DSB_LIKE, "ndim": 3, "voxel_size": [4.0, 1.0, 1.0], "shape_median": [40, 512, 512],
          "objects": {**DSB_LIKE["objects"], "diameter_median": 20.0}}
    cfg, record = plan(raw(ndim=3, data={"train": {"images": "x", "labels": "y"}, "voxel_size": [4.0, 1.0, 1.0]}), fp)
    patch = cfg["train"]["patch_size"]
    assert patch[1:] == [128, 128] and patch[0] == 32  # 128 / anisotropy 4
    # z is pooled once its spacing (4, doubling when pooled) is at most twice the YX one (1, 2, 4, ...)
    assert cfg["train"]["model"]["pool_z"] == [False, True, True][: cfg["train"]["model"]["depth"]]
    assert "train.model.pool_z" in record.choices
    # z spacing 4x the YX one: zooming would cost z planes, so the stacks keep their own scale
    assert cfg["train"]["object_diameter"] is None and cfg["predict"]["rescale"] is False
    assert "z spacing 4" in record.choices["predict.rescale"]["why"]
    iso, _ = plan(raw(ndim=3, data={"train": {"images": "x", "labels": "y"}, "voxel_size": [1.0, 1.0, 1.0]}), fp)
    assert iso["train"]["object_diameter"] == 19 and iso["predict"]["rescale"] is True  # 20 px -> 2^(17/4)


def test_plan_none_and_demo_data():
    cfg, record = plan(raw(train={"plan": "none"}), None)
    assert record.mode == "auto"  # plan_config plans; plan_experiment is what honours plan: none
    demo = validate_config({"experiment": "d", "workflow": "instance", "ndim": 2, "data": {"demo": {}},
                            "train": {"plan": "none"}})
    planned, record = smk.plan_experiment({}, demo, None, get_task(demo))
    assert planned == demo and record.mode == "none" and not record.choices


# --------------------------------------------------------------------------- the fingerprint


def test_the_sample_does_not_change_when_an_image_is_added_unless_it_hashes_low():
    ids = [f"img_{i:03d}" for i in range(200)]
    first = sample_ids(ids, 16)
    added = sample_ids(ids + ["img_new"], 16)
    assert len(set(first) ^ set(added)) in (0, 2)  # unchanged, or one swapped for the new image
    assert sample_ids(list(reversed(ids)), 16) == first


def test_the_fingerprint_reads_each_image_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    samples = []
    for k in range(3):
        labels = np.zeros((64, 64), np.uint16)
        labels[10:20, 10:20], labels[30:50, 30:50] = 1, 2
        image = (rng.random((64, 64)) * 10 + 100 * (labels > 0)).astype(np.uint16)
        samples.append(Sample(f"i{k}", str(write_tif(tmp_path / "im" / f"i{k}.tif", image)),
                              str(write_tif(tmp_path / "lb" / f"i{k}.tif", labels)), "train"))
    task = get_task(validate_config(raw()))
    calls = []
    real = fingerprint_module.image_record
    monkeypatch.setattr(fingerprint_module, "image_record", lambda *a: calls.append(a[0].id) or real(*a))
    fp = fingerprint(samples, 2, None, None, task.label_stats, tmp_path / "cache.json")
    assert sorted(calls) == ["i0", "i1", "i2"]
    # two squares of 10 and 20 px: inscribed diameters 2 x 5 and 2 x 10, median 15
    assert fp["objects"]["diameter_median"] == pytest.approx(15.0, abs=0.5)
    assert fp["shape_median"] == [64, 64] and fp["channels"] == 1 and fp["images"] == 3
    assert fingerprint(samples, 2, None, None, task.label_stats, tmp_path / "cache.json") == fp
    assert len(calls) == 3  # the second fingerprint read no pixels


@pytest.mark.parametrize("value, problem", [(np.nan, "NaN"), (1.5, "non-integer")])
def test_a_bad_label_met_while_planning_names_its_file(tmp_path, value, problem):
    image = np.full((32, 32), 100, np.uint16)
    label = np.zeros((32, 32), np.float32)
    label[8:16, 8:16] = 1
    label[20, 20] = value
    bad = str(write_tif(tmp_path / "lb" / "bad.tif", label))
    samples = [Sample("bad", str(write_tif(tmp_path / "im" / "bad.tif", image)), bad, "train")]
    task = get_task(validate_config(raw()))
    with pytest.raises(InputError, match=problem) as caught:
        fingerprint(samples, 2, None, None, task.label_stats, None)
    assert caught.value.path == bad


# --------------------------------------------------------------------------- in the parsed workflow


def test_a_planned_config_spelled_out_plans_the_same(tmp_path, monkeypatch):
    """results/{experiment}/config.yaml (the planned config) as a new config changes nothing;
    one training image more that leaves the object scale on its grid changes nothing either."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)

    def add(k: int) -> None:
        labels = np.zeros((96, 96), np.uint16)
        for j, (y, x) in enumerate([(20, 20), (20, 70), (70, 45)], start=1):
            labels[y - 8:y + 8, x - 8:x + 8] = j
        image = (rng.random((96, 96)) * 20 + 150 * (labels > 0)).astype(np.uint8)
        write_tif(tmp_path / "images" / f"a{k}.tif", image)
        write_tif(tmp_path / "labels" / f"a{k}.tif", labels)

    for k in range(4):
        add(k)
    given = raw(data={"train": {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels")}})
    first = smk.make_plan(given, tmp_path)
    assert first.cfg["train"]["object_diameter"] == 16  # 16 px squares
    spelled = yaml.safe_load(yaml.safe_dump(dict(first.cfg)))
    again = smk.make_plan(spelled, tmp_path)
    assert smk.train_params(again.cfg) == smk.train_params(first.cfg)
    assert smk.predict_params(again.cfg) == smk.predict_params(first.cfg)
    assert not again.planning.choices  # everything was written
    # so model/plan.json (rule plan: rerun on the meaning of the plan) is not rewritten either
    assert again.planning.meaning() == first.planning.meaning()
    assert set(again.planning.written) == set(first.planning.choices)
    add(4)
    more = smk.make_plan(given, tmp_path)
    assert smk.train_params(more.cfg) == smk.train_params(first.cfg)
    assert more.planning.fingerprint["images"] == first.planning.fingerprint["images"] + 1


def test_restoration_keeps_its_normalization_and_geometric_augmentation():
    """A restoration network learns one intensity map: the planner must not switch it to
    per-image normalization or add intensity and zoom augmentation (an instance run gets both)."""
    restoration = {"experiment": "p", "workflow": "denoising", "ndim": 2,
                   "data": {"train": {"images": "x", "targets": "y"}}, "normalize": {"scope": "dataset"}}
    fp = {**DSB_LIKE, "objects": None}
    cfg, record = plan(restoration, fp)
    defaults = validate_config(restoration)
    assert cfg["normalize"] == defaults["normalize"] and cfg["train"]["augment"] == defaults["train"]["augment"]
    assert not any(k.startswith(("normalize.", "train.augment.")) for k in record.choices)
    assert "train.epochs" in record.choices  # the rest is planned as for any workflow
    instance, _ = plan(raw(), DSB_LIKE)
    assert instance["normalize"]["scope"] == "image" and instance["train"]["augment"]["gamma"] == 0.3


def test_class_names_as_labels_are_not_read(tmp_path):
    """A classification sample's label is its class name: the fingerprint reads only the image."""
    write_tif(tmp_path / "a.tif", np.full((16, 24), 7, np.uint8))
    fp = fingerprint([Sample("a", str(tmp_path / "a.tif"), "fluorescence", "train")], 2, None, None, None,
                     tmp_path / "cache.json")
    assert fp["images"] == 1 and fp["objects"] is None and fp["shape_median"] == [16, 24]
    assert fp["intensity"]["p50"] == 7.0
