"""Error types whose messages a user can act on without reading a traceback.

Every problem with user input is raised as one of these, with the offending file
or config key first in the message, so the one line Snakemake prints is enough.
"""

from __future__ import annotations

from pathlib import Path


class BiapipeError(Exception):
    """Base class: an expected failure caused by input, not a bug."""


class InputError(BiapipeError):
    """A data file is missing, unreadable or inconsistent with the config."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(BiapipeError):
    """A config key is unknown or has a value outside what it accepts."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")
