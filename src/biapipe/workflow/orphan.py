"""A job process that outlives its Snakemake stops itself.

Killing Snakemake (``kill -9``, a closed terminal, a login node's reaper) leaves the jobs it
started running; a training job would then keep a GPU busy and race the next run for the
same files. Training watches the nearest Snakemake among its ancestors and, once it is gone,
stops at once: its last finished epoch is already saved, so the next run resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

#: Seconds between two looks at the parent Snakemake.
POLL_SECONDS = 2.0


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return 0


def is_snakemake(argv: list[str]) -> bool:
    """A Snakemake process: ``snakemake ...`` or ``python -m snakemake ...`` (not a job's shell,
    whose command merely mentions a path under .snakemake/)."""
    heads = [os.path.basename(a) for a in argv[:2]]
    return "snakemake" in heads or any(a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:]))


def snakemake_ancestor(pid: int | None = None) -> int | None:
    """The nearest Snakemake process above ``pid`` (default: this process), or None."""
    pid = _parent(os.getpid() if pid is None else pid)
    while pid > 1:
        if is_snakemake(_argv(pid)):
            return pid
        pid = _parent(pid)
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent(int(entry.name)) == pid:
            out.append(int(entry.name))
    return out


def stop_with_snakemake(log_file: str | None = None) -> threading.Thread | None:
    """Start a daemon thread that ends this process (and its children, e.g. DDP ranks) when
    the Snakemake that started it is gone, saying so in the job's ``log_file``. No-op outside
    Snakemake or without /proc."""
    snakemake = snakemake_ancestor()
    if snakemake is None:
        return None

    def watch() -> None:
        while Path(f"/proc/{snakemake}").exists():
            time.sleep(POLL_SECONDS)
        message = (f"Snakemake (pid {snakemake}) is gone; stopping this job. Its last finished epoch is saved: "
                   "rerun to resume (after `snakemake --unlock`, since a killed run leaves its lock).")
        logging.getLogger(__name__).error(message)
        if log_file:
            with open(log_file, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {message}\n")
        for child in _children(os.getpid()):
            os.kill(child, signal.SIGTERM)
        os._exit(1)

    thread = threading.Thread(target=watch, name="biapipe-orphan-watch", daemon=True)
    thread.start()
    return thread
