"""Loading and validating experiment configs against the one schema.

The schema (``schemas/config.schema.yaml``) is the single source of defaults and of
each key's documentation; this module fills those defaults in and turns the first
violation into a :class:`ConfigError` that names the key, before any compute starts.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    text = resources.files("biapipe").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class: type) -> type:
    """A validator that writes each property's default into the instance as it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with defaults filled in, or raise ConfigError."""
    cfg = copy.deepcopy(dict(config))
    _fill_ndim_defaults(cfg)
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        raise _to_config_error(errors[0])
    _check_cross_keys(cfg)
    return cfg


def _to_config_error(err: jsonschema.ValidationError) -> ConfigError:
    key = ".".join(str(p) for p in err.path) or "<top level>"
    if err.validator == "additionalProperties":
        known = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        prefix = f"{key}." if err.path else ""
        return ConfigError(f"{prefix}{extra[0]}", f"unknown key (known keys here: {', '.join(known)})")
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        prefix = f"{key}." if err.path else ""
        return ConfigError(f"{prefix}{missing}", "is required")
    return ConfigError(key, err.message)


#: Defaults that depend on ndim, which a JSON schema cannot express.
NDIM_DEFAULTS = {
    2: {"train": {"patch_size": [128, 128]}, "predict": {"tile_size": [256, 256]}},
    3: {"train": {"patch_size": [32, 64, 64]}, "predict": {"tile_size": [32, 128, 128]}},
}


def _fill_ndim_defaults(cfg: dict[str, Any]) -> None:
    ndim = cfg.get("ndim")
    if ndim not in NDIM_DEFAULTS:
        return
    for section, values in NDIM_DEFAULTS[ndim].items():
        sub = cfg.setdefault(section, {})
        if isinstance(sub, dict):
            for key, value in values.items():
                sub.setdefault(key, list(value))


def _check_cross_keys(cfg: dict[str, Any]) -> None:
    """Checks the schema language cannot express: sizes matching ndim, data present."""
    ndim = cfg["ndim"]
    for key in ("train.patch_size", "predict.tile_size"):
        section, name = key.split(".")
        value = cfg[section][name]
        if len(value) != ndim:
            raise ConfigError(key, f"has {len(value)} entries but ndim is {ndim}")
    data = cfg["data"]
    if not data.get("samples") and not data.get("demo") and not data.get("train"):
        raise ConfigError("data", "needs train/test folders, a samples sheet or demo settings")
    vs = data.get("voxel_size")
    if vs is not None and len(vs) != ndim:
        raise ConfigError("data.voxel_size", f"has {len(vs)} entries but ndim is {ndim}")
    norm = cfg["normalize"]
    if norm["method"] == "percentile" and norm["low"] >= norm["high"]:
        raise ConfigError("normalize.low", f"{norm['low']} must be below normalize.high ({norm['high']})")
    ignore = cfg["targets"]["ignore_value"]
    if ignore is not None and 0 <= ignore < cfg["targets"]["classes"]:
        raise ConfigError("targets.ignore_value", f"{ignore} is also a class index (classes: 0..{cfg['targets']['classes'] - 1})")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply nested overrides, validate."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"is not valid YAML ({exc})") from exc
    if overrides:
        cfg = merge(cfg, overrides)
    return validate_config(cfg)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values in ``update`` win."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
