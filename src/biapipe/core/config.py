"""Loading and validating experiment configs against the one schema.

The schema (``schemas/config.schema.yaml``) is the single source of defaults and of
each key's documentation; this module fills those defaults in and turns the first
violation into a :class:`ConfigError` that names the key, before any compute starts.
A validated config is a tree of read-only :class:`Section` views, so code reads every key
as it is (``section["key"]`` or ``section.key``) and never repeats a default.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
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


def validate_config(config: Mapping[str, Any]) -> Section:
    """Return ``config`` with defaults filled in, as read-only sections, or raise ConfigError."""
    cfg = plain(config)
    _fill_dependent_defaults(cfg)
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        raise _to_config_error(errors[0])
    _check_cross_keys(cfg)
    return Section(cfg)


# --------------------------------------------------------------------------- read-only views


class Section(dict):
    """A read-only view of one validated config section (nested sections are views too).

    Keys read as items or attributes; a key the schema does not have is a ConfigError that
    names it. Views never change: :meth:`replace` returns a new view. They stay dicts, so
    they pickle (DDP workers, Snakemake scripts) and serialise to JSON as they are.
    """

    __slots__ = ("path",)

    def __init__(self, values: Mapping[str, Any] = (), path: str = "") -> None:
        super().__init__({k: _freeze(v, f"{path}.{k}" if path else str(k)) for k, v in dict(values).items()})
        self.path = path

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except ConfigError as exc:
            raise AttributeError(name) from exc

    def __missing__(self, key: str) -> Any:
        raise ConfigError(f"{self.path}.{key}" if self.path else str(key), "is not a key of this config section")

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"config section '{self.path or '<top level>'}' is read-only; use replace()")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Section, (plain(self), self.path))

    def __deepcopy__(self, memo: dict[int, Any]) -> Section:
        return self  # immutable

    def replace(self, **values: Any) -> Section:
        """A new view with ``values`` replacing (whole) keys of this one."""
        return Section({**plain(self), **plain(values)}, self.path)

    def with_value(self, dotted: str, value: Any) -> Section:
        """A new view with the nested key ``a.b.c`` set to ``value``."""
        head, _, rest = dotted.partition(".")
        if not rest:
            return self.replace(**{head: value})
        inner = self[head] if isinstance(self.get(head), Section) else Section({}, f"{self.path}.{head}")
        return self.replace(**{head: inner.with_value(rest, value)})


def _freeze(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return Section(value, path)
    if isinstance(value, list | tuple):
        return [_freeze(v, path) for v in value]
    return value


def plain(value: Any) -> Any:
    """Plain dicts and lists (what YAML and jsonschema take) from views, tuples and mappings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


def rerun_key(value: Any) -> str:
    """What a value *means*, as text: keys sorted, so Snakemake's parameter check does not
    rerun a job because a config file lists the same keys in another order."""
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"))


#: train.* keys that change how fast a run goes or where its images live, not the trained weights
#: (a resumed run may differ in them; changing them never retrains).
TRAIN_RUNTIME_KEYS = ("device", "threads", "num_workers", "gpus", "memory_gb")


#: train.* keys that act only through the values the planner chooses (which are config values
#: themselves): changing them alone never retrains.
TRAIN_PLANNING_KEYS = ("plan", "budget_minutes")


#: train.* keys that only add files beside the trained weights.
TRAIN_OUTPUT_KEYS = ("keep_epochs",)


def training_keys(train: Mapping[str, Any]) -> dict[str, Any]:
    """train.* that determines the trained weights: without runtime, planning and output keys and debug samples."""
    out = {k: v for k, v in train.items() if k not in TRAIN_RUNTIME_KEYS + TRAIN_PLANNING_KEYS + TRAIN_OUTPUT_KEYS}
    if isinstance(out.get("augment"), Mapping):
        out["augment"] = {k: v for k, v in out["augment"].items() if k != "debug_samples"}
    return out


def defaults(section: str, ndim: int = 2, **overrides: Any) -> Section:
    """One section (``predict``, ``postprocess.instance``, ...) as the schema fills it in, with
    ``overrides``: for library callers (tests, notebooks) that have no experiment config."""
    head, _, rest = section.partition(".")
    value: dict[str, Any] = dict(overrides)
    for part in reversed(rest.split(".") if rest else []):
        value = {part: value}
    cfg = validate_config({"experiment": "defaults", "workflow": "semantic", "ndim": ndim, "data": {"demo": {}},
                           head: value})
    out = cfg[head]
    for part in rest.split(".") if rest else []:
        out = out[part]
    return out


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


def _fill_dependent_defaults(cfg: dict[str, Any]) -> None:
    """The schema's ``x-defaults-when``: a default that holds when other keys have given values
    (sizes by ndim, Noise2Void's norm; docs/architecture.md, Defaults live in the schema), unless
    the config sets the key."""
    for rule in load_schema().get("x-defaults-when", []):
        if all(_lookup(cfg, key) == value for key, value in rule["when"].items()):
            *parents, name = rule["key"].split(".")
            section = cfg
            for part in parents:
                section = section.setdefault(part, {}) if isinstance(section, dict) else None
            if isinstance(section, dict):
                section.setdefault(name, copy.deepcopy(rule["default"]))


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


#: An experiment name is one folder under ``results`` (never ".", "..", a path or a line break).
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_cross_keys(cfg: dict[str, Any]) -> None:
    """Checks the schema language cannot express: sizes matching ndim, data present."""
    if not EXPERIMENT_NAME.fullmatch(cfg["experiment"]):
        raise ConfigError("experiment", f"{cfg['experiment']!r} is not a folder name (letters, digits, _ . -, "
                                        "not starting with a dot)")
    ndim = cfg["ndim"]
    for key in ("train.patch_size", "predict.tile_size"):
        section, name = key.split(".")
        value = cfg[section][name]
        if len(value) != ndim:
            raise ConfigError(key, f"has {len(value)} entries but ndim is {ndim}")
    data = cfg["data"]
    if not data.get("samples") and not data.get("demo") and not data.get("train") \
            and not (cfg.get("model") and data.get("test")):
        raise ConfigError("data", "needs train/test folders, a samples sheet or demo settings (or, with model, "
                                  "test images only)")
    vs = data.get("voxel_size")
    if vs is not None and len(vs) != ndim:
        raise ConfigError("data.voxel_size", f"has {len(vs)} entries but ndim is {ndim}")
    norm = cfg["normalize"]
    if norm["method"] == "percentile" and norm["low"] >= norm["high"]:
        raise ConfigError("normalize.low", f"{norm['low']} must be below normalize.high ({norm['high']})")
    ignore = cfg["targets"]["ignore_value"]
    if ignore is not None and 0 <= ignore < cfg["targets"]["classes"]:
        raise ConfigError("targets.ignore_value", f"{ignore} is also a class index (classes: 0..{cfg['targets']['classes'] - 1})")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Section:
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


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge into plain dicts; values in ``update`` win."""
    out = plain(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = plain(value)
    return out


# Views dump as the mappings they are (a config written back to YAML, e.g. next to outputs).
yaml.SafeDumper.add_representer(Section, lambda dumper, section: dumper.represent_dict(dict(section)))
yaml.Dumper.add_representer(Section, lambda dumper, section: dumper.represent_dict(dict(section)))
