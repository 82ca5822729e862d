"""The semantic workflow on a real SLURM cluster: profiles/slurm plus the CI overlay.

Needs the one-node test cluster of `.ci/start-slurm.sh` (partitions `main` and `gpu`, one
fake GPU). Skipped when no cluster answers; with BIAPIPE_REQUIRE_SLURM=1 that is a failure.
One workflow run (about a minute and a half) serves every test here: during it, the first
SLURM job is cancelled with `scancel`, and the run must still finish, by resubmission, with
the same metrics.csv as a local run of the same config and seed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, snakemake, write_config

from biapipe.data.demo import make_demo_data

from .test_workflow_semantic import folder_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

PROFILES = ("--profile", str(REPO / "profiles" / "slurm"), "--profile", str(REPO / ".ci" / "slurm-profile"))
RUN_TIMEOUT_S = 360  # without accounting a misconfigured status query waits forever; never hang CI
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _cluster_problem() -> str | None:
    """Why the test cluster cannot be used, or None when it can."""
    if shutil.which("sinfo") is None:
        return "sinfo not found (no SLURM client installed)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip() or proc.stdout.strip()}"
    states = dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)
    partitions = {p.rstrip("*") for p in states}
    if not {"main", "gpu"} <= partitions:
        return f"cluster has partitions {sorted(partitions)}, not main and gpu (start it with .ci/start-slurm.sh)"
    if not any(s in ("idle", "mixed", "allocated") for s in states.values()):
        return f"no usable node (states: {states})"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        message = f"no SLURM cluster: {problem}"
        if os.environ.get("BIAPIPE_REQUIRE_SLURM") == "1":
            pytest.fail(f"{message} (BIAPIPE_REQUIRE_SLURM=1)", pytrace=False)
        pytest.skip(message)


def _squeue() -> list[tuple[str, str, str]]:
    """(job id, state, comment) of every job the controller still knows."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True, timeout=15
    ).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") >= 2]


def _cancel_first_running(comment_prefix: str, known: set[str], stop: threading.Event, cancelled: list[str]) -> None:
    """scancel the first new job whose comment starts with ``comment_prefix`` once it runs."""
    while not stop.is_set():
        for job_id, state, comment in _squeue():
            if job_id not in known and comment.startswith(comment_prefix) and state == "RUNNING":
                subprocess.run(["scancel", job_id], check=True, timeout=15)
                cancelled.append(job_id)
                return
        stop.wait(0.1)


def _show_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=15).stdout
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))


def _run_on_slurm(workdir: Path, cfgfile: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The workflow with the SLURM profiles; cancels the first running job of group `prepare`."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(cfgfile), *PROFILES]
    known = {job_id for job_id, _, _ in _squeue()}
    stop, cancelled = threading.Event(), []
    watcher = threading.Thread(target=_cancel_first_running, args=("rule_prepare", known, stop, cancelled), daemon=True)
    watcher.start()
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        for job_id, _ in SUBMITTED.findall(out):
            subprocess.run(["scancel", job_id], timeout=15)
        raise AssertionError(f"SLURM run did not finish within {RUN_TIMEOUT_S} s:\n{out[-6000:]}")
    finally:
        stop.set()
        watcher.join(timeout=20)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), cancelled


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """One local and one SLURM run of the same tiny experiment (same data, config and seed)."""
    base = tmp_path_factory.mktemp("slurm")
    make_demo_data(base / "data", 2, 3, 1, 2, 48, seed=5)
    cfgfile = write_config(base / "cfg.yaml", folder_config(base / "data"))
    local, remote = base / "local", base / "slurm"
    local.mkdir()
    remote.mkdir()
    snakemake(local, cfgfile)
    proc, cancelled = _run_on_slurm(remote, cfgfile)
    assert proc.returncode == 0, f"SLURM run failed ({proc.returncode}):\n{proc.stdout[-8000:]}"
    # SLURM job id -> what it ran (group_<name>_... or rule_<name>, from the plugin's log folder)
    jobs = {job_id: Path(log).relative_to(remote / ".snakemake" / "slurm_logs").parts[0] for job_id, log in SUBMITTED.findall(proc.stdout)}
    return {"local": local, "slurm": remote, "out": proc.stdout, "jobs": jobs, "cancelled": cancelled}


def _of(jobs: dict[str, str], prefix: str) -> list[str]:
    return sorted((j for j, name in jobs.items() if name.startswith(prefix)), key=int)


def test_slurm_metrics_equal_local_run(slurm_run):
    local = (slurm_run["local"] / "results" / "tiny" / "metrics.csv").read_bytes()
    remote = (slurm_run["slurm"] / "results" / "tiny" / "metrics.csv").read_bytes()
    assert remote == local
    assert (slurm_run["slurm"] / "results" / "tiny" / "summary.csv").is_file()


def test_cancelled_job_is_resubmitted_with_more_memory(slurm_run):
    assert slurm_run["cancelled"], "the watcher never saw a running job of group prepare to cancel"
    cancelled = slurm_run["cancelled"][0]
    first = _show_job(cancelled)
    assert first["JobState"] == "CANCELLED"
    attempts = _of(slurm_run["jobs"], "group_prepare")
    assert attempts[0] == cancelled and len(attempts) == 2, slurm_run["jobs"]
    retry = _show_job(attempts[1])
    assert retry["JobState"] == "COMPLETED"
    mem = [int(re.match(r"\d+", j["MinMemoryNode"]).group()) for j in (first, retry)]
    assert mem[1] == 2 * mem[0], f"mem_mb should double on the second attempt: {mem}"


def test_gpu_request_reaches_sbatch(slurm_run):
    jobs = slurm_run["jobs"]
    gpu_jobs = _of(jobs, "rule_train") + _of(jobs, "group_per_image")
    cpu_jobs = _of(jobs, "group_prepare")[1:] + _of(jobs, "rule_aggregate")
    assert len(gpu_jobs) == 2 and len(cpu_jobs) == 2, jobs
    for job_id in gpu_jobs:
        info = _show_job(job_id)
        assert info["Partition"] == "gpu", (jobs[job_id], info)
        assert re.fullmatch(r"gres[:/]gpu[:=]1", info.get("TresPerJob", "")), (jobs[job_id], info.get("TresPerJob"))
    for job_id in cpu_jobs:
        info = _show_job(job_id)
        assert info["Partition"] == "main", (jobs[job_id], info)
        assert "gpu" not in info.get("TresPerJob", ""), (jobs[job_id], info.get("TresPerJob"))


def test_group_job_runs_all_its_images_in_one_process_with_one_gpu(slurm_run):
    """Both test images' predict/postprocess/evaluate ran in one SLURM job (asking one GPU, see
    above), in one Snakemake process: torch imported and the model loaded once per group."""
    (group_id,) = _of(slurm_run["jobs"], "group_per_image")
    log_dir = slurm_run["slurm"] / ".snakemake" / "slurm_logs" / slurm_run["jobs"][group_id]
    log = (log_dir / f"{group_id}.log").read_text()
    assert len(re.findall(r"predict:image=test_00\d", log.split("Command:", 1)[1].splitlines()[0])) == 2
    assert log.count("Building DAG of jobs") == 1, "jobs of the group were started as separate Snakemake processes"
    assert "--force-use-threads" in log and log.count("localrule predict:") == 2


def test_a_group_job_slurm_refuses_shows_sbatch_reason(cluster, tmp_path):
    """With more CPUs per job than the node has, sbatch refuses the group job; its own reason
    reaches the console (Snakemake alone printed "message: None" for groups)."""
    make_demo_data(tmp_path / "data", 2, 2, 1, 1, 32, seed=5)
    cfgfile = write_config(tmp_path / "cfg.yaml", folder_config(tmp_path / "data"))
    greedy = tmp_path / "greedy"
    greedy.mkdir()
    (greedy / "config.yaml").write_text("cores: 8\nretries: 0\n")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(cfgfile), *PROFILES, "--profile", str(greedy)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"Error in group prepare: SLURM sbatch failed\. The error message was '.*processors", out), \
        out[-4000:]
