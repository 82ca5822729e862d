"""Configs of runs that start from a model: ``model:`` (predict with it) and ``train.init:``
(train from its weights).

A model carries the config it was trained with (``models.info``); a run that uses it takes
those sections as its own and lays the user's config over them, so every key the user
wrote wins and every other key means what it meant in training (normalization and its
statistics, axes, targets, post-processing with tuned thresholds). The merge happens on
the raw user config, before defaults are filled in: a default must not hide the model's
value. Runs without training data never read the model's weights here, only its header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.config import Section, merge, plain, validate_config
from ..core.errors import ConfigError
from ..models.info import ModelInfo, read_model_info
from . import get_task

#: ``train.model`` keys that a biapipe network spec fixes (``train.init`` takes them from the model).
NETWORK_KEYS = ("arch", "depth", "width", "norm", "dropout", "pool_z")
#: Architectures ``train.model.arch`` can name (a classifier's spec names its own).
UNET_ARCHS = ("unet", "resunet", "attention_unet")


def config_with_model(given: Mapping[str, Any]) -> Section:
    """The validated config of ``given`` with what its ``model`` / ``train.init`` brings."""
    raw = plain(given)
    if raw.get("model"):
        info = read_model_info(raw["model"])
        check_agrees(raw, info, "model")
        cfg = validate_config(merge(info.config, raw))
        return settle_model(cfg, info)
    init = (raw.get("train") or {}).get("init")
    if init:
        info = read_model_info(init)
        return validate_config(merge(init_layer(info, raw), raw))
    return validate_config(raw)


def model_layer(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What a config's ``model`` or ``train.init`` brings beneath the keys it writes ({} without
    either): keys automatic planning leaves alone, as it leaves the written ones."""
    if raw.get("model"):
        return dict(read_model_info(raw["model"]).config)
    init = (raw.get("train") or {}).get("init")
    return init_layer(read_model_info(init), raw) if init else {}


def check_agrees(raw: Mapping[str, Any], info: ModelInfo, key: str) -> None:
    """A workflow or dimensionality the config states must be the model's."""
    for name, theirs in (("workflow", info.workflow), ("ndim", info.ndim)):
        ours = raw.get(name)
        if ours is not None and theirs is not None and ours != theirs:
            raise ConfigError(name, f"is {ours} but the model {info.path} ({key}) was trained with {name} {theirs}")


def settle_model(cfg: Section, info: ModelInfo) -> Section:
    """Tuned thresholds the model carries, written out as post-processing values (so the run
    needs no tuning file and post-processing reruns when they change); then the output
    channels the task expects checked against the model's."""
    task = get_task(cfg)
    if task.tuning_file() is not None:
        if not info.tuned:
            raise ConfigError(f"postprocess.{cfg['workflow']}", f"asks for tuned thresholds but the model {info.path} "
                                                                "carries none: give the experiment's model/model.pt "
                                                                "(best.pt is saved before tuning), or set the "
                                                                "thresholds")
        cfg = validate_config(merge(cfg, {"postprocess": task.tuned_postprocess(info.tuned)}))
        task = get_task(cfg)
    if info.workflow is not None and cfg["workflow"] == info.workflow:
        return cfg  # its own targets: the channels agree by construction (classes may settle later)
    try:
        expected = task.out_channels()
    except ConfigError:
        return cfg  # known once the data is discovered (classification classes)
    if expected != info.out_channels:
        raise ConfigError("targets", f"the {cfg['workflow']} workflow with these targets expects {expected} output "
                                     f"channel(s) but the model {info.path} has {info.out_channels}")
    return cfg


def init_layer(info: ModelInfo, raw: Mapping[str, Any]) -> dict[str, Any]:
    """What ``train.init`` brings: the network (so the weights fit) and the normalization method
    (the features expect it; the statistics are the new training data's)."""
    if info.spec is None:
        raise ConfigError("train.init", f"{info.path} is not a biapipe network (a package without config.biapipe): "
                                        "biapipe fine-tunes its own networks; predict with it through model")
    if raw.get("ndim") is not None and raw["ndim"] != info.ndim:
        raise ConfigError("train.init", f"{info.path} is a {info.ndim}D model but ndim is {raw['ndim']}")
    network = {k: info.spec[k] for k in NETWORK_KEYS if k in info.spec}
    if network.get("arch") not in UNET_ARCHS:
        network.pop("arch", None)
    normalize = {k: v for k, v in (info.config.get("normalize") or {}).items() if k not in ("stats", "scope")}
    return {"train": {"model": network}, "normalize": normalize}
