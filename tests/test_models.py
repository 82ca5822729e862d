"""U-Net shapes in 2D and 3D, spec handling, and the config -> spec mapping."""

from __future__ import annotations

import json

import pytest
import torch

from biapipe.config import validate_config
from biapipe.errors import ConfigError
from biapipe.models import build_model, count_parameters, divisor, model_spec_from_config


def spec(**overrides) -> dict:
    base = {"arch": "unet", "ndim": 2, "in_channels": 1, "out_channels": 2, "depth": 2, "width": 4,
            "norm": "batch", "dropout": 0.0}
    return {**base, **overrides}


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_2d_output_has_input_size_and_out_channels(norm: str) -> None:
    model = build_model(spec(in_channels=2, out_channels=3, norm=norm))
    out = model(torch.randn(2, 2, 32, 24))
    assert out.shape == (2, 3, 32, 24)


def test_3d_output_shape() -> None:
    model = build_model(spec(ndim=3, in_channels=1, out_channels=4))
    out = model(torch.randn(1, 1, 8, 16, 12))
    assert out.shape == (1, 4, 8, 16, 12)


@pytest.mark.parametrize(("depth", "width", "norm"), [(1, 3, "group"), (3, 5, "group"), (3, 7, "batch")])
def test_odd_depth_and_width(depth: int, width: int, norm: str) -> None:
    s = spec(depth=depth, width=width, norm=norm, dropout=0.3)
    model = build_model(s)
    size = divisor(s) * 3
    assert divisor(s) == 2**depth
    assert model(torch.randn(2, 1, size, size)).shape == (2, 2, size, size)


def test_parameter_count_grows_with_width_as_expected() -> None:
    # the benchmark model (depth 3, width 16) is about half a million parameters
    n = count_parameters(build_model(spec(depth=3, width=16)))
    assert 450_000 < n < 520_000
    # doubling the width roughly quadruples the parameters of a conv net
    n2 = count_parameters(build_model(spec(depth=3, width=32)))
    assert 3.8 < n2 / n < 4.1


def test_spec_from_config_uses_schema_defaults_and_is_plain_json() -> None:
    cfg = validate_config({"experiment": "t", "workflow": "semantic", "ndim": 3,
                           "data": {"train": {"images": "x"}}, "train": {"model": {"width": 8}}})
    s = model_spec_from_config(cfg, in_channels=2, out_channels=3)
    assert s == {"arch": "unet", "ndim": 3, "in_channels": 2, "out_channels": 3, "depth": 3, "width": 8,
                 "norm": "batch", "dropout": 0.0}
    assert json.loads(json.dumps(s)) == s


def test_bad_spec_names_the_config_key() -> None:
    with pytest.raises(ConfigError, match="train.model.norm"):
        build_model(spec(norm="layer"))
    with pytest.raises(ConfigError, match="train.model.width"):
        build_model(spec(width=0))
    with pytest.raises(ConfigError, match="ndim"):
        build_model(spec(ndim=4))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    torch.manual_seed(0)
    model = build_model(spec(dropout=0.5))
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
