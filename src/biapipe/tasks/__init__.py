"""Registry of workflows: config ``workflow`` name -> Task class."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Task


def get_task(cfg: dict[str, Any]) -> Task:
    """Instantiate the Task for ``cfg['workflow']``; imports lazily to keep start-up cheap."""
    name = cfg["workflow"]
    if name == "semantic":
        from .semantic import SemanticTask

        return SemanticTask(cfg)
    if name == "instance":
        from .instance import InstanceTask

        return InstanceTask(cfg)
    if name == "detection":
        from .detection import DetectionTask

        return DetectionTask(cfg)
    if name == "classification":
        from .classification import ClassificationTask

        return ClassificationTask(cfg)
    raise ConfigError("workflow", f"'{name}' is not implemented yet")


__all__ = ["Task", "get_task"]
