"""Site loss: a collaborator killed with SIGKILL in the middle of a federation (issue 11).

With --min-collaborators K the others go on and the federation finishes; below K it stops and names
the lost site. Real processes, real `kill -9`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from cofe_cli.demo.synthetic import make_demo_federation_data
from federation_helpers import cofe, cofe_background, cofe_piped, collaborator_args, free_port, processes_using, wait_for_port
import test_slurm

pytestmark = pytest.mark.federation
THREE = ("site_a", "site_b", "site_c")
slurm_cluster = test_slurm.slurm_cluster  # the fixture, here too
# Long enough for a round of the tiny test model on a shared CPU; a lost site costs each round this.
ROUND_TIMEOUT = "45s"


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory) -> dict[str, Path]:
    return make_demo_federation_data(tmp_path_factory.mktemp("data3"), list(THREE), n_train=3, n_valid=2)


def _events(fed: Path) -> list[dict]:
    path = fed / "workspaces" / "aggregator" / "logs" / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for_event(fed: Path, match, timeout: float = 400, alive=()) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in _events(fed):
            if match(event):
                return event
        for proc in alive:
            assert proc.poll() is None, f"{proc.args} exited early with {proc.returncode}"
        time.sleep(0.5)
    raise AssertionError(f"no such event after {timeout} s: {_events(fed)[-5:]}")


def _collaborator_process(fed: Path, name: str) -> psutil.Process:
    for proc in processes_using(fed):
        cmdline = proc.cmdline()
        if "collaborator" in cmdline and name in cmdline:
            return proc
    raise AssertionError(f"no process of {name}")


def _kill_when_training(fed: Path, name: str, round_number: int, alive=()) -> None:
    """SIGKILL `name` once it got its tasks of `round_number` (0-based): in the middle of that round."""
    _wait_for_event(fed, lambda e: e["event"] == "tasks" and e["collaborator"] == name and e["round"] == round_number,
                    alive=alive)
    os.kill(_collaborator_process(fed, name).pid, signal.SIGKILL)


def _took_part(fed: Path) -> dict[int, list[str]]:
    return {e["round"]: e["collaborators"] for e in _events(fed) if e["event"] == "round_end"}


def test_run_goes_on_without_a_killed_site(tmp_path, three_sites, fast_config):
    fed = tmp_path / "fed"
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(three_sites), "--rounds", 3,
         "--port", free_port(), "--min-collaborators", 2, "--round-timeout", ROUND_TIMEOUT, check=True)
    with cofe_piped("run", "--dir", fed, "--timeout", 900) as run:
        _kill_when_training(fed, "site_c", 1, alive=[run])
        out, _ = run.communicate(timeout=900)
    assert run.returncode == 0, out
    assert "site_c lost in round 2" in out, out
    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    round_3 = {r["collaborator"] for r in rows if r["round"] == "2" and r["task"] == "aggregated_model_validation"
               and r["collaborator"] != "aggregator"}
    assert round_3 == {"site_a", "site_b"}
    took_part = {(r["round"], r["collaborator"]): r["value"] for r in rows if r["metric"] == "took_part"}
    assert took_part[("2", "site_c")] == "0" and took_part[("2", "site_a")] == took_part[("2", "site_b")] == "1"
    summary = json.loads((fed / "results" / "summary.json").read_text())
    assert summary["took_part"]["2"] == ["site_a", "site_b"] and summary["lost"] == {"site_c": 1}
    assert processes_using(fed) == []


def test_start_commands_go_on_and_a_restarted_site_rejoins(tmp_path, three_sites, fast_config):
    fed = tmp_path / "fed"
    port = free_port()
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(three_sites), "--rounds", 4,
         "--port", port, "--min-collaborators", 2, "--round-timeout", ROUND_TIMEOUT, check=True)
    cofe("certify", "--dir", fed, check=True)
    aggregator = cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / "aggregator.out")
    wait_for_port(port)
    sites = {name: cofe_background("start", "collaborator", name, "--dir", fed, log=tmp_path / f"{name}.out")
             for name in THREE}
    try:
        _kill_when_training(fed, "site_c", 1, alive=[aggregator])
        assert sites["site_c"].wait(timeout=30) == -signal.SIGKILL
        # Restarted at once: back before round 2 closes (measured: it then still reports round 2) or later
        # (OpenFL drops what it reports after the round closed), it takes part again from then on.
        sites["site_c"] = cofe_background("start", "collaborator", "site_c", "--dir", fed, log=tmp_path / "site_c.again.out")
        assert aggregator.wait(timeout=600) == 0, (tmp_path / "aggregator.out").read_text()[-3000:]
        for name, proc in sites.items():
            assert proc.wait(timeout=120) == 0, (name, (tmp_path / f"{name}.out").read_text()[-2000:])
    finally:
        for proc in (aggregator, *sites.values()):
            proc.kill()
    took_part = _took_part(fed)
    assert len(took_part) == 4 and took_part[3] == list(THREE), took_part
    assert processes_using(fed) == []


def test_below_the_minimum_the_aggregator_stops_naming_the_lost_site(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    port = free_port()
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 3,
         "--port", port, "--min-collaborators", 2, "--round-timeout", "30s", check=True)
    cofe("certify", "--dir", fed, check=True)
    aggregator = cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / "aggregator.out")
    wait_for_port(port)
    sites = {name: cofe_background("start", "collaborator", name, "--dir", fed, log=tmp_path / f"{name}.out")
             for name in site_data}
    try:
        _kill_when_training(fed, "site_b", 1, alive=[aggregator])
        started = time.monotonic()
        assert aggregator.wait(timeout=300) == 1
        waited = time.monotonic() - started
    finally:
        for proc in (aggregator, *sites.values()):
            proc.kill()
    output = (tmp_path / "aggregator.out").read_text()
    assert "the federation stopped: round 2: 1 of the 2 site(s) it needs reported" in output, output[-3000:]
    assert "lost: site_b (last heard from" in output
    assert "Traceback" not in output
    assert waited < 2 * 30 + 30, waited  # two round timeouts after the round opened, and the server's 5 s poll
    assert any(e["event"] == "sites_lost" and e["missing"] == ["site_b"] for e in _events(fed))


def _run_three_sites_and_lose_site_c(tmp_path, three_sites, fast_config, lose, *run_args,
                                     init_args=()) -> tuple[Path, str]:
    """`cofe run RUN_ARGS` of 3 sites, --min-collaborators 2, 2 rounds; `lose(fed)` once site_c trains round 2."""
    fed = tmp_path / "fed"
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(three_sites), "--rounds", 2,
         "--port", free_port(), "--min-collaborators", 2, "--round-timeout", ROUND_TIMEOUT, *init_args, check=True,
         timeout=600)
    with cofe_piped("run", "--dir", fed, "--timeout", 1200, *run_args) as run:
        _wait_for_event(fed, lambda e: e["event"] == "tasks" and e["collaborator"] == "site_c" and e["round"] == 1,
                        timeout=900, alive=[run])
        lose(fed)
        out, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, out[-6000:]
    assert "site_c lost in round 2" in out, out[-6000:]
    assert _took_part(fed)[1] == ["site_a", "site_b"]
    return fed, out


def test_containers_go_on_without_a_killed_container(tmp_path, three_sites, fast_config, container_engine, container_image):
    from cofe_cli.federation import FederationLayout
    from cofe_cli.launch.containers import container_name
    from test_containers import NOTHING_LEFT, leftovers

    def kill(fed):
        container_engine.containers.get(container_name(FederationLayout(fed), "site_c")).kill()

    # Collaborators in containers reach the aggregator by its name on the federation's network.
    fed, _ = _run_three_sites_and_lose_site_c(tmp_path, three_sites, fast_config, kill, "--containers", "--image",
                                              container_image, init_args=("--aggregator-address", "aggregator"))
    assert leftovers(container_engine, fed) == NOTHING_LEFT


def test_slurm_goes_on_without_a_cancelled_job(tmp_path, three_sites, fast_config, slurm_cluster):
    from test_slurm import _in_queue, _job_ids

    def cancel(fed):
        subprocess.run(["scancel", _job_ids(fed)["site_c"]], check=True, timeout=30)

    fed, _ = _run_three_sites_and_lose_site_c(
        tmp_path, three_sites, fast_config, cancel, "--slurm", "--cpus-per-site", "1", "--time", "00:20:00",
        *(["--partition", slurm_cluster] if slurm_cluster else []))
    assert _in_queue(_job_ids(fed).values()) == []
