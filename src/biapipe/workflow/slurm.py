"""SLURM glue that must run before Snakemake parses the workflow (docs/cluster.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def group_job_args(argv: Sequence[str], environ: dict[str, str]) -> list[str] | None:
    """Snakemake arguments that run a SLURM group job's jobs in one process, or None.

    The executor plugin starts a group job's Snakemake with ``--executor slurm-jobstep
    --jobs 1``, which runs every image of the group as its own ``srun`` + Snakemake process,
    one after another (snakemake-executor-plugin-slurm issue 469): torch imported and the
    model loaded once per image. The same command as the local executor with threads instead
    (the workflow profile is not read in --mode remote); --cores and the job's GPUs bound it.
    """
    argv = list(argv)
    if not environ.get("SLURM_JOB_ID") or "--target-jobs" not in argv or "--executor" not in argv:
        return None
    if argv[argv.index("--executor") + 1] != "slurm-jobstep":
        return None
    targets = argv[argv.index("--target-jobs") + 1 :]
    if len(next((targets[:i] for i, a in enumerate(targets) if a.startswith("-")), targets)) < 2:
        return None  # a single job (train): keep the plugin's srun step
    drop = {"--executor": 2, "--jobs": 2, "--slurm-jobstep-pass-command-as-script": 1}
    args, i = [], 0
    while i < len(argv):
        if argv[i] in drop:
            i += drop[argv[i]]
        else:
            args.append(argv[i])
            i += 1
    args.append("--force-use-threads")
    gpus = environ.get("SLURM_GPUS_ON_NODE")
    if gpus and "--resources" not in args:
        args += ["--resources", f"gpu={gpus}"]
    return args


def reexec_group_job() -> None:
    """Replace this process by the one-process form of a SLURM group job, when it is one."""
    args = group_job_args(sys.argv[1:], dict(os.environ))
    if args is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *args])
