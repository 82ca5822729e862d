"""The workflows: one Task per folder, found by the config's ``workflow`` name.

A new workflow is a folder here with its Task subclass, one line in ``REGISTRY``, and a
section in the config schema (docs/architecture.md lists the files).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..core.errors import ConfigError
from .base import Task

#: workflow name -> "module:class" under biapipe.tasks (imported on first use, so a run pays
#: only for the workflow it runs)
REGISTRY: dict[str, str] = {
    "semantic": "semantic.task:SemanticTask",
    "instance": "instance.task:InstanceTask",
    "detection": "detection.task:DetectionTask",
    "classification": "classification.task:ClassificationTask",
    "denoising": "denoising.task:DenoisingTask",
    "super_resolution": "super_resolution.task:SuperResolutionTask",
    "image_to_image": "image_to_image.task:ImageToImageTask",
    "self_supervised": "self_supervised.task:SelfSupervisedTask",
}


def task_class(name: str) -> type[Task]:
    if name not in REGISTRY:
        raise ConfigError("workflow", f"'{name}' is not one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def get_task(cfg: dict[str, Any]) -> Task:
    """The Task of ``cfg['workflow']``, configured by ``cfg``."""
    return task_class(cfg["workflow"])(cfg)


__all__ = ["REGISTRY", "Task", "get_task", "task_class"]
