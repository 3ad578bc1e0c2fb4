"""`cofe run --slurm`, `cofe status`, `cofe stop` on a real Slurm cluster: `.ci/run` starts one of
several nodes on this machine (scripts/start-slurm-cluster.sh). Without a reachable cluster these
tests skip on a laptop and fail in CI (CI=true), where a skipped test would hide a broken setup."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from federation_helpers import SITES, cofe, cofe_background, collaborator_args, free_port

pytestmark = pytest.mark.federation


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    problem = None
    if shutil.which("sinfo") is None:
        problem = "sinfo is not on PATH"
    else:
        try:
            result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
            if result.returncode != 0:
                problem = result.stderr.strip()
        except subprocess.TimeoutExpired:
            problem = "sinfo did not answer within 15 s"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests, but: {problem}")
        pytest.skip(f"no Slurm cluster: {problem} (`eval \"$(scripts/start-slurm-cluster.sh)\"` starts one)")
    return os.environ.get("COFE_SLURM_PARTITION", "")


def _init(fed: Path, site_data, fast_config) -> None:
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 2,
         "--port", free_port(), check=True, timeout=600)


def _job_ids(fed: Path) -> dict[str, str]:
    data = json.loads((fed / "slurm" / "jobs.json").read_text())
    return {name: entry["job_id"] for name, entry in data["jobs"].items()}


def _in_queue(job_ids) -> list[str]:
    """Jobs of ours that Slurm still has queued, running or finishing."""
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "PD,CF,R,CG,S"], capture_output=True, text=True, timeout=15).stdout
    return sorted(set(out.split()) & set(job_ids))


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def test_slurm_federation_finishes_with_metrics(tmp_path, site_data, fast_config, slurm_cluster):
    fed = tmp_path / "fed"
    _init(fed, site_data, fast_config)
    started = time.monotonic()
    result = cofe("run", "--dir", fed, "--slurm", "--cpus-per-site", 1, "--time", "00:20:00", "--timeout", 900,
                  *(["--partition", slurm_cluster] if slurm_cluster else []), timeout=1000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Federation summary" in result.stdout
    print(f"\nSlurm federation (2 collaborators, 2 rounds) in {time.monotonic() - started:.0f} s")

    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for site in SITES:
        for round_number in (0, 1):
            assert any(r["collaborator"] == site and r["round"] == str(round_number) for r in rows), (site, round_number)
    assert (fed / "results" / "final_model.pt").stat().st_size > 0

    jobs = _job_ids(fed)
    assert set(jobs) == {"aggregator", *SITES}
    for name in jobs:
        script = (fed / "slurm" / f"{name}.sbatch").read_text()
        assert "COFE_LOG_CAPTURED=1" in script and "OMP_NUM_THREADS=1" in script
        assert f"--output={fed.resolve() / 'workspaces' / name / 'logs' / (name + '.log')}" in script
    assert "[slurm] job" in (fed / "workspaces" / "site_a" / "logs" / "site_a.log").read_text()
    assert _in_queue(jobs.values()) == []

    status = cofe("status", "--dir", fed)
    assert status.returncode == 0, status.stdout + status.stderr
    for name, job in jobs.items():
        assert name in status.stdout and job in status.stdout
    assert "COMPLETED" in status.stdout


def _start_and_wait_for_collaborators(fed: Path, log: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    run = cofe_background("run", "--dir", fed, "--slurm", "--timeout", 900, log=log)

    def collaborators_running():
        jobs = (fed / "slurm" / "jobs.json")
        if not jobs.is_file():
            return None
        ids = _job_ids(fed)
        if set(ids) != {"aggregator", *SITES}:
            return None
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True, timeout=15).stdout
        return ids if set(ids.values()) <= set(out.split()) else None

    try:
        ids = _wait_for(collaborators_running, 300, "every job running")
    except AssertionError:
        run.kill()
        raise AssertionError(log.read_text()[-3000:]) from None
    return run, ids


def test_cofe_stop_cancels_every_job(tmp_path, site_data, fast_config, slurm_cluster):
    fed = tmp_path / "fed"
    _init(fed, site_data, fast_config)
    run, ids = _start_and_wait_for_collaborators(fed, tmp_path / "run.log")
    try:
        stopped = cofe("stop", "--dir", fed, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert _in_queue(ids.values()) == []
        run.wait(timeout=120)
        assert run.returncode != 0
        assert _in_queue(ids.values()) == []
    finally:
        if run.poll() is None:
            run.kill()
        subprocess.run(["scancel", *ids.values()], timeout=15)


def test_cancelled_collaborator_ends_the_federation(tmp_path, site_data, fast_config, slurm_cluster):
    fed = tmp_path / "fed"
    _init(fed, site_data, fast_config)
    log = tmp_path / "run.log"
    run, ids = _start_and_wait_for_collaborators(fed, log)
    try:
        subprocess.run(["scancel", ids["site_b"]], check=True, timeout=15)
        run.wait(timeout=180)
        output = log.read_text()
        assert run.returncode == 1, output[-3000:]
        assert "site_b exited with code" in output, output[-3000:]
        assert "last log lines of site_b" in output and f"job {ids['site_b']} of site_b: CANCELLED" in output
        assert _in_queue(ids.values()) == []
    finally:
        if run.poll() is None:
            run.kill()
        subprocess.run(["scancel", *ids.values()], timeout=15)


def test_impossible_request_is_a_clear_error(tmp_path, site_data, fast_config, slurm_cluster):
    fed = tmp_path / "fed"
    _init(fed, site_data, fast_config)
    started = time.monotonic()
    result = cofe("run", "--dir", fed, "--slurm", "--mem-per-site", "100000G", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Slurm refused the job" in result.stderr and "Requested node configuration is not available" in result.stderr
    assert time.monotonic() - started < 60
    assert not (fed / "slurm" / "jobs.json").exists()

    missing = cofe("run", "--dir", fed, "--slurm", "--partition", "no-such-partition", timeout=120)
    assert missing.returncode == 2 and "no partition 'no-such-partition'" in missing.stderr, missing.stderr


def test_federated_evaluation_through_slurm(tmp_path, site_data, fast_config, slurm_cluster):
    """`cofe evaluate --slurm`: the evaluation round's participants are jobs too, as for `cofe run --slurm`."""
    fed = tmp_path / "fed"
    cofe("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 1,
         "--port", free_port(), "--timeout", 900, check=True, timeout=1000)
    result = cofe("evaluate", "--dir", fed, "--slurm", "--time", "00:10:00", "--timeout", 600,
                  *(["--partition", slurm_cluster] if slurm_cluster else []), timeout=700)
    assert result.returncode == 0, result.stdout + result.stderr
    with (fed / "results" / "evaluation.csv").open() as handle:
        sites = {row["site"] for row in csv.DictReader(handle)}
    assert sites == {*SITES, "weighted mean"}
    jobs = _job_ids(fed / "evaluation")
    assert set(jobs) == {"aggregator", *SITES}
    assert _in_queue(jobs.values()) == []
