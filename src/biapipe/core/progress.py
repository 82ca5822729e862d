"""Progress a person can follow: one line per step of a long job, with the time left.

Training epochs and the blocks of a large volume take minutes to hours each job; a log
that says nothing until the end looks like a hung job. Each step logs what was done, the
share done, the time since the start and an estimate of the time left (mean time per step
so far times the steps left), e.g. ``block 3/12 (25%), 41s elapsed, ETA 2m03s``.
"""

from __future__ import annotations

import logging
import time


def duration(seconds: float) -> str:
    """``12s``, ``3m05s``, ``2h07m``: what a person reads at a glance."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts ``total`` steps of ``what`` (e.g. "block") and logs a line per step.

    ``done`` steps finished before (a resumed job) count as done but not in the rate, so
    the estimate is the pace of this run.
    """

    def __init__(self, total: int, what: str, log: logging.Logger, done: int = 0) -> None:
        self.total, self.what, self.log = int(total), what, log
        self.done = self.first = int(done)
        self.start = time.perf_counter()

    @property
    def eta(self) -> float:
        """Estimated seconds left (0 when finished; inf before the first step)."""
        ran = self.done - self.first
        if self.done >= self.total:
            return 0.0
        if ran <= 0:
            return float("inf")
        return (time.perf_counter() - self.start) / ran * (self.total - self.done)

    def left(self) -> str:
        """``ETA 2m03s`` (``done`` when finished, ``ETA ?`` before the first step)."""
        eta = self.eta
        return "done" if self.done >= self.total else ("ETA ?" if eta == float("inf") else f"ETA {duration(eta)}")

    def status(self) -> str:
        """``3/12 (25%), 41s elapsed, ETA 2m03s``."""
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.done}/{self.total} ({share:.0f}%), {duration(time.perf_counter() - self.start)} elapsed, "
                f"{self.left()}")

    def advance(self, n: int = 1) -> None:
        """Count ``n`` steps done, without a line (the caller writes its own)."""
        self.done += n

    def step(self, detail: str = "", n: int = 1) -> None:
        """Count ``n`` steps done and log ``what done/total ..., detail``."""
        self.advance(n)
        self.log.info("%s %s%s", self.what, self.status(), f"  {detail}" if detail else "")
