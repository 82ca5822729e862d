"""Run time and peak memory of each stage of a finished run, from what the jobs left behind.

Every job's log ends with ``done in X s (process peak RSS Y MiB)`` (:mod:`.joblog`); the
few experiment-level rules also have a Snakemake benchmark (``benchmarks/{rule}.tsv``,
whose ``max_rss`` counts the job's own process tree). Per-image jobs run as threads of
the one Snakemake process, so their "peak RSS" is that process's peak so far, an upper
bound on what the stage needed, which is what sizing a machine asks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

#: The last line of a finished job's log.
DONE = re.compile(r"done in ([0-9.]+) s \(process peak RSS ([0-9.]+) MiB\)")
COLUMNS = ["stage", "jobs", "total_s", "mean_s", "max_s", "peak_rss_mib", "benchmark_s", "benchmark_max_rss_mib"]


def stage_of(log: Path, logs: Path) -> str:
    """The rule a log belongs to: ``logs/{rule}.log`` or ``logs/{rule}/...`` (tuning: its sub-stage)."""
    parts = log.relative_to(logs).parts
    if len(parts) == 1:
        return parts[0][: -len(".log")]
    return "/".join(parts[:2]) if parts[0] == "tuning" and len(parts) > 2 else parts[0]


def job_times(results: str | Path, skip: tuple[str, ...] = ("report",)) -> pd.DataFrame:
    """One row per finished job: stage, seconds, peak RSS (MiB); unfinished or failed jobs are left out."""
    logs = Path(results) / "logs"
    rows = []
    for log in sorted(logs.rglob("*.log")) if logs.is_dir() else []:
        stage = stage_of(log, logs)
        if stage in skip:
            continue
        found = DONE.findall(_tail(log))
        if found:
            seconds, rss = found[-1]
            rows.append({"stage": stage, "seconds": float(seconds), "peak_rss_mib": float(rss)})
    return pd.DataFrame(rows, columns=["stage", "seconds", "peak_rss_mib"])


def stage_table(results: str | Path) -> pd.DataFrame:
    """Per stage: jobs, total / mean / longest job seconds, peak RSS, and the benchmark's figures."""
    jobs = job_times(results)
    table = jobs.groupby("stage", sort=False).agg(
        jobs=("seconds", "size"), total_s=("seconds", "sum"), mean_s=("seconds", "mean"),
        max_s=("seconds", "max"), peak_rss_mib=("peak_rss_mib", "max")).reset_index()
    bench = benchmarks(results)
    table = table.merge(bench, on="stage", how="outer") if len(bench) else table.assign(
        benchmark_s=float("nan"), benchmark_max_rss_mib=float("nan"))
    order = {name: k for k, name in enumerate(STAGE_ORDER)}
    table = table.sort_values("stage", key=lambda s: s.map(lambda x: order.get(x, len(order))), kind="stable")
    return table[COLUMNS].reset_index(drop=True)


#: Stages in the order data flows through them (others follow).
STAGE_ORDER = ("demo_data", "normalize_stats_inputs", "normalize_stats", "check_test_pixels", "prepare",
               "train_inputs", "train", "tuning/predict", "tune", "predict", "postprocess", "aggregate",
               "outputs_tables", "metrics_tables")


def benchmarks(results: str | Path) -> pd.DataFrame:
    """``benchmarks/{rule}.tsv`` of a run: seconds and max RSS (MiB) of the last repeat."""
    rows = []
    for path in sorted((Path(results) / "benchmarks").glob("*.tsv")):
        try:
            bench = pd.read_csv(path, sep="\t")
        except (OSError, ValueError):
            continue
        if len(bench) and {"s", "max_rss"} <= set(bench.columns):
            last = bench.iloc[-1]
            rows.append({"stage": path.stem, "benchmark_s": float(last["s"]),
                         "benchmark_max_rss_mib": pd.to_numeric(last["max_rss"], errors="coerce")})
    return pd.DataFrame(rows, columns=["stage", "benchmark_s", "benchmark_max_rss_mib"])


def _tail(path: Path, size: int = 4096) -> str:
    """The end of a log (the "done" line is the last one; logs of long jobs can be long)."""
    with path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", errors="replace")
