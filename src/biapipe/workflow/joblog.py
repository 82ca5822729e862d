"""One log file per job, and a stage decorator that writes it.

Per-image jobs run as threads of one Snakemake process, so each job gets its own logger
object instead of reconfiguring the root logger. Per-image rules carry no ``benchmark:``
(it slows planning of thousands of jobs): the log ends with the job's time and the
process's peak memory so far.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.errors import expected_failure

_LOG_LOCK = threading.Lock()


@contextlib.contextmanager
def job_log(path: str | Path | None, name: str, echo: bool = False) -> Iterator[logging.Logger]:
    """A logger writing to one job's log file; errors are logged before they propagate.
    ``echo`` also writes each line to stderr, which Snakemake shows on the console: for the
    few long jobs (training, large volumes) whose progress a person follows."""
    with _LOG_LOCK:
        logger = logging.getLogger(f"biapipe.job.{name}.{threading.get_ident()}.{time.monotonic_ns()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler: logging.Handler
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("")  # a fresh log per run, then appended to (O_APPEND): the orphan
        handler = logging.FileHandler(path, mode="a")  # watchdog's last line is never overwritten
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    console = logging.StreamHandler(sys.stderr) if echo else None
    if console is not None:
        console.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
        logger.addHandler(console)
    start = time.perf_counter()
    try:
        yield logger
        logger.info("done in %.2f s (process peak RSS %.0f MiB)", time.perf_counter() - start, peak_rss_mib())
    except Exception as exc:
        shown = expected_failure(exc) or exc
        logger.error("%s: %s", type(shown).__name__, shown)
        raise
    finally:
        for h in (handler, console):
            if h is not None:
                h.close()
                logger.removeHandler(h)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stage called with keyword arguments only, plus ``log`` (the job's log file), ``echo``
    (its lines on the console too) and the job's ``logger`` handed to stages that log themselves.

    An expected failure (bad input, disk full, permissions: :func:`expected_failure`) leaves the
    stage as one BiapipeError without the library's frames, so the console shows one line of
    what, which file and what to do rather than a stack trace; anything else is a bug and keeps
    its traceback.
    """
    wants_logger = "logger" in fn.__code__.co_varnames[: fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount]

    @functools.wraps(fn)
    def run(*, log: str | None = None, echo: bool = False, **kwargs: Any) -> Any:
        try:
            with job_log(log, fn.__name__, echo) as logger:
                return fn(**kwargs, logger=logger) if wants_logger else fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 (sorted into expected failures and bugs)
            failure = expected_failure(exc)
            if failure is None:
                raise
        raise failure.with_traceback(None) from None

    return run
