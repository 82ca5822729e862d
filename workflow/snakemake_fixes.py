"""Work-arounds for Snakemake 9 bugs that biapipe users meet, applied when the Snakefile loads.

Beside the Snakefile, not in the library, because the library never imports Snakemake. Each
patch replaces one method, keeps the original beside it, and applies at most once per process.
"""

from __future__ import annotations

import threading
from typing import Any

import snakemake.executors.local as local_executor
from snakemake.jobs import GroupJob
from snakemake.logging import logger
from snakemake.scheduling.job_scheduler import JobScheduler


def log_group_errors() -> None:
    """Print the executor's message of a failed group job before Snakemake's summary.

    Snakemake 9's ``GroupJob.log_error`` ignores it, so a group that SLURM refused showed
    "message: None" instead of sbatch's reason ("More processors requested than permitted").
    """
    if hasattr(GroupJob, "_biapipe_log_error"):
        return
    original = GroupJob.log_error
    GroupJob._biapipe_log_error = original

    def log_error(job: Any, msg: str | None = None, aux_logs: Any = None, **kwargs: Any) -> Any:
        if msg:
            logger.error(f"Error in group {job.groupid}: {msg}")
        return original(job, msg, aux_logs, **kwargs)

    GroupJob.log_error = log_error


def one_reevaluation_timer() -> None:
    """Keep at most one pending scheduler wake-up timer instead of one more per finished job.

    Snakemake's scheduler starts a ``threading.Timer`` on every pass of its loop (for the job
    rate limit, ``--max-jobs-per-timespan``, on by default). A timer's firing causes a pass that
    starts the next timer, and every finished job starts one more such chain, so after k jobs
    the scheduler wakes k times a second and takes CPU from the jobs themselves: in one 10,000
    image run the per-batch prediction time grew from 1.5 s to 5-8 s (snakemake issue 2967).
    One pending timer wakes the scheduler just as soon, so the rate limit still holds.
    """
    if hasattr(JobScheduler, "_biapipe_schedule_reevaluation"):
        return
    JobScheduler._biapipe_schedule_reevaluation = JobScheduler._schedule_reevalutation
    lock = threading.Lock()

    def schedule_reevaluation(scheduler: Any, delay: float) -> None:
        with lock:
            if getattr(scheduler, "_biapipe_timer", None) is not None:
                return  # a wake-up is already pending

            def wake() -> None:
                with lock:
                    scheduler._biapipe_timer = None  # before the pass it causes, which may start the next
                scheduler._open_jobs.release()

            timer = threading.Timer(delay, wake)
            timer.daemon = True
            scheduler._biapipe_timer = timer
            timer.start()

    JobScheduler._schedule_reevalutation = schedule_reevaluation


def no_traceback_for_expected_failures() -> None:
    """Show an expected failure of a ``run:`` job (bad input, disk full) as its one line.

    Snakemake formats an exception raised in a ``run:`` block with the frames it passed through
    (the rule's line and the stage wrapper's), which reads as a crash under a message that says
    what to fix. A :class:`BiapipeError` is raised without its library frames for that reason;
    this drops the last two. Any other exception (a bug) keeps its traceback.
    """
    if hasattr(local_executor, "_biapipe_format_error"):
        return
    from biapipe.core.errors import BiapipeError

    original = local_executor.format_error
    local_executor._biapipe_format_error = original

    def format_error(ex: BaseException, *args: Any, **kwargs: Any) -> str:
        if isinstance(ex, BiapipeError):
            kwargs["show_traceback"] = False
        return original(ex, *args, **kwargs)

    local_executor.format_error = format_error


def apply() -> None:
    log_group_errors()
    one_reevaluation_timer()
    no_traceback_for_expected_failures()
