"""U-Net shapes in 2D and 3D, spec handling, and the config -> spec mapping."""

from __future__ import annotations

import json

import pytest
import torch

from biapipe.core.config import validate_config
from biapipe.core.errors import ConfigError
from biapipe.models.registry import build_model, count_parameters, divisor
from biapipe.models.unet import unet_spec
from biapipe.tasks import get_task


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
    s = unet_spec(cfg["train"]["model"], 3, 2, 3, cfg["data"]["voxel_size"], cfg["train"]["patch_size"])
    assert s == {"arch": "unet", "ndim": 3, "in_channels": 2, "out_channels": 3, "depth": 3, "width": 8,
                 "norm": "batch", "dropout": 0.0, "pool_z": [True, True, True]}
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


# --------------------------------------------------------------------------- architectures, anisotropy

from biapipe.models.packaged import ActivatedNet  # noqa: E402
from biapipe.models.registry import divisor_per_axis  # noqa: E402
from biapipe.models.unet import resolve_pool_z  # noqa: E402

ARCHS = ["unet", "resunet", "attention_unet"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_every_architecture_runs_in_2d_and_3d(arch: str, norm: str) -> None:
    model2 = build_model(spec(arch=arch, norm=norm, in_channels=2, out_channels=3, dropout=0.1))
    assert model2(torch.randn(2, 2, 16, 20)).shape == (2, 3, 16, 20)
    model3 = build_model(spec(arch=arch, norm=norm, ndim=3, pool_z=[False, True]))
    out = model3(torch.randn(1, 1, 6, 16, 12))  # z only needs to be even: it is pooled once
    assert out.shape == (1, 2, 6, 16, 12)


def test_architectures_differ_in_blocks_not_interface() -> None:
    counts = {a: count_parameters(build_model(spec(arch=a, depth=3, width=16))) for a in ARCHS}
    assert counts["unet"] < counts["attention_unet"] < 1.2 * counts["unet"]
    assert counts["resunet"] > counts["unet"]  # 1x1 projections on the shortcuts
    names = [n for n, _ in build_model(spec(arch="attention_unet")).named_modules()]
    assert any(n.endswith("gate.psi") for n in names)


def test_unet_state_dict_keys_are_unchanged() -> None:
    """Checkpoints written before resunet/attention existed must still load."""
    keys = set(build_model(spec(depth=1, width=2)).state_dict())
    assert "decoders.0.up.weight" in keys and "decoders.0.conv.0.weight" in keys and "head.weight" in keys
    assert not any("gate" in k or "pool" in k for k in keys)


@pytest.mark.parametrize(("voxel", "patch_z", "expected"), [
    (None, None, [True, True, True]),
    ([1.0, 1.0, 1.0], 32, [True, True, True]),
    ([2.0, 1.0, 1.0], 32, [True, True, True]),  # at most twice the YX spacing: pool
    ([3.0, 1.0, 1.0], 32, [False, True, True]),  # z 3 > 2 x 1; then 3 <= 2 x 2
    ([5.0, 1.0, 1.0], 32, [False, False, True]),  # 5 > 2, 5 > 4, 5 <= 8
    ([10.0, 0.5, 0.5], 32, [False, False, False]),
    ([1.0, 1.0, 1.0], 6, [True, False, False]),  # 6 -> 3: an odd extent is not halved again
])
def test_pool_z_auto_follows_spacing_and_patch(voxel: list | None, patch_z: int | None, expected: list) -> None:
    assert resolve_pool_z("auto", 3, voxel, patch_z) == expected


def test_pool_z_explicit_settings_and_errors() -> None:
    assert resolve_pool_z(False, 2) == [False, False]
    assert resolve_pool_z([True, False], 2) == [True, False]
    with pytest.raises(ConfigError, match="train.model.pool_z"):
        resolve_pool_z([True], 2)


def test_anisotropic_pooling_gives_per_axis_divisor_and_right_shape() -> None:
    s = spec(ndim=3, depth=3, pool_z=[False, True, True])
    assert divisor_per_axis(s) == (4, 8, 8) and divisor(s) == (4, 8, 8)
    assert divisor(spec(ndim=3, depth=3, pool_z=[True] * 3)) == 8
    model = build_model(s)
    x = torch.randn(1, 1, 4, 24, 16)
    assert model(x).shape == (1, 2, 4, 24, 16)
    # the smallest level keeps z: 4 slices pooled twice -> 1, YX 24 -> 3
    with pytest.raises(RuntimeError):
        build_model(spec(ndim=3, depth=3, pool_z=[True] * 3))(x)  # 4 slices cannot be halved 3 times


def test_spec_from_config_resolves_pool_z_from_voxel_size() -> None:
    cfg = validate_config({"experiment": "t", "workflow": "semantic", "ndim": 3, "data": {"train": {"images": "x"},
                           "voxel_size": [4.0, 1.0, 1.0]},
                           "train": {"model": {"arch": "resunet"}, "patch_size": [8, 64, 64]}})
    s = get_task(cfg).model_spec(1)
    assert s["arch"] == "resunet" and s["pool_z"] == [False, True, True]  # z spacing 4 > 2 x 1, then <= 2 x 2
    assert divisor(s) == (4, 8, 8)
    assert "pool_z" not in unet_spec(cfg["train"]["model"], 2, 1, 2, None, [8, 8])


def test_activated_net_applies_softmax_sigmoid_and_clamp() -> None:
    torch.manual_seed(0)
    net = build_model(spec(out_channels=3)).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        logits = net(x)
        soft = ActivatedNet(net, [["softmax"]])(x)
        mixed = ActivatedNet(net, [["sigmoid"], ["clamp", -1.0, 1.0], ["identity"]])(x)
    torch.testing.assert_close(soft, torch.softmax(logits, 1))
    torch.testing.assert_close(mixed[:, 0], torch.sigmoid(logits[:, 0]))
    torch.testing.assert_close(mixed[:, 1], logits[:, 1].clamp(-1, 1))
    torch.testing.assert_close(mixed[:, 2], logits[:, 2])
