"""Parse-time caches kept as one JSON file each (under ``.snakemake/biapipe/``), keyed by file
size and modification time, so a second parse of a large dataset reads no header or pixel twice.

A cache is only ever a speed-up: one that cannot be read starts empty. It is written under a
temporary name of the writer's own and renamed, because two parses (or a cluster's jobs) may
save it at the same time; the last rename wins, and either content is valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .imageio import write_text


class JsonCache:
    """``entries`` loaded from ``path`` (None: kept in memory only); :meth:`save` writes them back
    when something was added (``dirty``)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, Any] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def save(self) -> None:
        if self.path and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(self.entries))
            self.dirty = False
