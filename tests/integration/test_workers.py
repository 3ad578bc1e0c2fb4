"""`cofe run --workers N`: the collaborators in N shared worker processes (issue 13), each site still with
its own certificate, mutual-TLS channel, data and log. Real processes, real `kill -9`, a real CRL."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest

from cofe_cli.demo.synthetic import make_demo_federation_data
from federation_helpers import cofe, cofe_piped, collaborator_args, free_port, processes_using
from test_run import TASKS
from test_site_loss import ROUND_TIMEOUT, _took_part, _wait_for_event
import test_slurm

pytestmark = pytest.mark.federation
slurm_cluster = test_slurm.slurm_cluster  # the fixture, here too


def _metrics(fed) -> list[dict]:
    with (fed / "results" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_five_sites_in_two_workers_finish_with_metrics_for_every_site(tmp_path, fast_config):
    sites = [f"site_{letter}" for letter in "abcde"]
    data = make_demo_federation_data(tmp_path / "data", sites, n_train=2, n_valid=1)
    fed = tmp_path / "fed"
    result = cofe("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(data), "--rounds", 2,
                  "--port", free_port(), "--workers", 2, "--timeout", 1200, timeout=1300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "in 2 shared worker process(es)" in " ".join(result.stdout.split())  # rich wraps lines
    rows = _metrics(fed)
    for site in sites:
        for round_number in ("0", "1"):
            for task in TASKS:
                assert any(r["collaborator"] == site and r["round"] == round_number and r["task"] == task for r in rows), \
                    (site, round_number, task)
    assert _took_part(fed) == {0: sites, 1: sites}
    # Two workers (round-robin), each with its own output; every site logged its own rounds in its own workspace.
    assert sorted(path.name for path in (fed / "workers").iterdir()) == ["worker-1.log", "worker-2.log"]
    for site in sites:
        log = (fed / "workspaces" / site / "logs" / f"{site}.log").read_text()
        assert "Round: 1 Received Tasks" in log and f"{site} finished" in log, log[-2000:]
        assert (fed / "workspaces" / site / "logs" / "exit_code").read_text().strip() == "0"
    assert processes_using(fed) == []


def test_a_revoked_site_is_refused_and_a_killed_worker_loses_all_its_sites(tmp_path, fast_config):
    """4 sites in 2 workers (round-robin: site_a+site_c, site_b+site_d), --min-collaborators 1. site_d's
    certificate is revoked: the aggregator refuses it, its worker goes on with site_b. The worker of site_a
    and site_c is killed mid-round: both are lost; site_b finishes the federation."""
    sites = ["site_a", "site_b", "site_c", "site_d"]
    data = make_demo_federation_data(tmp_path / "data", sites, n_train=2, n_valid=1)
    fed = tmp_path / "fed"
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(data), "--rounds", 1,
         "--port", free_port(), "--min-collaborators", 1, "--round-timeout", ROUND_TIMEOUT, check=True)
    cofe("certify", "--dir", fed, check=True)
    cofe("certify", "revoke", "site_d", "--dir", fed, check=True)
    with cofe_piped("run", "--dir", fed, "--workers", 2, "--timeout", 900) as run:
        # Both sites of worker-1 got their round's tasks: one trains, the other waits for its turn.
        for name in ("site_a", "site_c"):
            _wait_for_event(fed, lambda e, name=name: e["event"] == "tasks" and e["collaborator"] == name, alive=[run])
        worker_1 = [p for p in processes_using(fed) if "worker" in p.cmdline() and "site_a,site_c" in p.cmdline()]
        assert len(worker_1) == 1, [p.cmdline() for p in processes_using(fed)]
        os.kill(worker_1[0].pid, signal.SIGKILL)
        out, _ = run.communicate(timeout=900)
    assert run.returncode == 0, out[-6000:]
    assert "Traceback" not in out
    for name in ("site_a", "site_c"):
        assert f"{name} lost in round 1 (exit code -9)" in out, out[-6000:]
    assert "site_d lost in round 1" in out, out[-6000:]
    refused = (fed / "workspaces" / "site_d" / "logs" / "site_d.log").read_text()
    assert "the aggregator refused site_d: its certificate is revoked" in refused, refused[-2000:]
    assert _took_part(fed) == {0: ["site_b"]}
    summary = json.loads((fed / "results" / "summary.json").read_text())
    assert summary["lost"] == {"site_a": 0, "site_c": 0, "site_d": 0}  # the round each was lost in
    assert processes_using(fed) == []


def test_slurm_runs_each_worker_as_one_job(tmp_path, fast_config, slurm_cluster):
    """`--slurm --workers 2`: 3 sites in 2 jobs besides the aggregator's, each site with its own log and metrics."""
    from test_slurm import _in_queue, _job_ids

    sites = ["site_a", "site_b", "site_c"]
    data = make_demo_federation_data(tmp_path / "data", sites, n_train=2, n_valid=1)
    fed = tmp_path / "fed"
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(data), "--rounds", 1,
         "--port", free_port(), check=True, timeout=600)
    result = cofe("run", "--dir", fed, "--slurm", "--workers", 2, "--cpus-per-site", 1, "--time", "00:20:00",
                  "--timeout", 900, *(["--partition", slurm_cluster] if slurm_cluster else []), timeout=1000)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert _took_part(fed) == {0: sites}
    jobs = _job_ids(fed)
    assert set(jobs) == {"aggregator", "worker-1", "worker-2"}
    assert "--sites site_a,site_c" in (fed / "slurm" / "worker-1.sbatch").read_text()
    assert "[slurm] job" in (fed / "workers" / "worker-1.log").read_text()
    for site in sites:
        assert "Round: 0 Received Tasks" in (fed / "workspaces" / site / "logs" / f"{site}.log").read_text()
    assert _in_queue(jobs.values()) == []
