"""The Snakemake work-arounds loaded by the Snakefile (workflow/snakemake_fixes.py)."""

from __future__ import annotations

import runpy
import threading
from pathlib import Path
from types import SimpleNamespace

from snakemake.scheduling.job_scheduler import JobScheduler

FIXES = Path(__file__).resolve().parents[3] / "workflow" / "snakemake_fixes.py"


def test_scheduler_keeps_one_pending_wakeup_however_often_it_passes() -> None:
    """Unpatched, 50 passes start 50 timers, each a chain that wakes the scheduler every second."""
    runpy.run_path(str(FIXES))["apply"]()
    scheduler = SimpleNamespace(_open_jobs=threading.Semaphore(0))
    for _ in range(50):
        JobScheduler._schedule_reevalutation(scheduler, 0.05)
    assert scheduler._open_jobs.acquire(timeout=5)  # the one wake-up came
    assert not scheduler._open_jobs.acquire(timeout=0.3)  # and only one
    # After it fired, the next pass starts the next wake-up (the rate limit is still honoured).
    JobScheduler._schedule_reevalutation(scheduler, 0.01)
    assert scheduler._open_jobs.acquire(timeout=5)


def test_fixes_apply_once() -> None:
    apply = runpy.run_path(str(FIXES))["apply"]
    apply()
    patched = JobScheduler._schedule_reevalutation
    apply()
    assert JobScheduler._schedule_reevalutation is patched
    assert JobScheduler._biapipe_schedule_reevaluation is not patched
