"""Error types whose messages a user can act on without reading a traceback.

Every problem with user input is raised as one of these, with the offending file
or config key first in the message, so the one line Snakemake prints is enough.
"""

from __future__ import annotations

import errno
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


#: What to do about the operating-system errors a user can meet, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device; free space or point 'results' at a larger disk, then rerun",
    errno.EDQUOT: "disk quota exceeded; free space or point 'results' elsewhere, then rerun",
    errno.EACCES: "permission denied; make the folder writable (or choose another 'results' folder)",
    errno.EPERM: "operation not permitted (an immutable or protected file or folder?)",
    errno.EROFS: "the file system is read-only; point 'results' at a writable folder",
    errno.ELOOP: "too many levels of symbolic links (a link that points to itself?); fix or remove the link",
    errno.ENOENT: "file not found",
    errno.ENAMETOOLONG: "the file name is too long for this file system",
    errno.EIO: "input/output error (a failing disk or network file system?)",
}


def explain_os_error(exc: OSError) -> str:
    """One line a user can act on for an operating-system error (without the file name)."""
    return _OS_ADVICE.get(exc.errno or -1, exc.strerror or str(exc))


def expected_failure(exc: BaseException) -> BiapipeError | None:
    """The one-line error for a failure that is the machine's or the data's, not a bug:
    disk full, permissions, broken links; None for anything else (a bug keeps its traceback).

    torch.save reports a full disk as a RuntimeError of its zip writer ("unexpected pos").
    """
    if isinstance(exc, BiapipeError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        return InputError(exc.filename, explain_os_error(exc))
    if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "PytorchStreamWriter" in str(exc)):
        return InputError(None, "could not write a checkpoint: " + _OS_ADVICE[errno.ENOSPC])
    return None
