import pytest

from biapipe.core.config import load_config, validate_config
from biapipe.core.errors import ConfigError

BASE = {"experiment": "x", "workflow": "semantic", "ndim": 2, "data": {"demo": {}}}


def test_defaults_filled_from_schema():
    cfg = validate_config(BASE)
    assert cfg["normalize"]["method"] == "percentile"
    assert cfg["normalize"]["low"] == 1.0 and cfg["normalize"]["high"] == 99.8
    assert cfg["train"]["model"]["depth"] == 3
    assert cfg["data"]["demo"]["n_train"] == 8
    assert cfg["train"]["patch_size"] == [128, 128]


def test_ndim_dependent_defaults():
    cfg = validate_config({**BASE, "ndim": 3})
    assert cfg["train"]["patch_size"] == [32, 64, 64]
    assert len(cfg["predict"]["tile_size"]) == 3


@pytest.mark.parametrize(
    "update, key",
    [
        ({"train": {"epocs": 3}}, "train.epocs"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"workflow": "segmentation"}, "workflow"),
        ({"ndim": 4}, "ndim"),
        ({"train": {"patch_size": [32, 32, 32]}}, "train.patch_size"),
        ({"normalize": {"low": 99.0, "high": 1.0}}, "normalize.low"),
        ({"bogus": 1}, "bogus"),
        ({"targets": {"ignore_value": 1}}, "targets.ignore_value"),
    ],
)
def test_bad_config_names_the_key(update, key):
    cfg = {**BASE, **update}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.key == key
    assert f"'{key}'" in str(err.value)


def test_missing_required_key():
    with pytest.raises(ConfigError) as err:
        validate_config({"workflow": "semantic", "ndim": 2, "data": {"demo": {}}})
    assert err.value.key == "experiment"


def test_shipped_configs_validate():
    from conftest import REPO

    for path in [REPO / "config" / "config.yaml", *sorted((REPO / "config" / "examples").glob("*.yaml"))]:
        cfg = load_config(path)
        assert cfg["experiment"]


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
