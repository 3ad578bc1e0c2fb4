"""Federations in containers against a real engine (Docker, or Podman's Docker API): the image builds
from the repo's Dockerfile, `cofe run --containers` and the multi-terminal `cofe start --container`
finish, a dying collaborator stops the rest, and nothing of a run is left on the engine."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from cofe_cli.federation import FederationLayout
from cofe_cli.launch.containers import LABEL_FEDERATION, container_name, federation_id
from federation_helpers import SITES, cofe, cofe_background, collaborator_args, free_port

pytestmark = pytest.mark.federation
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")


def leftovers(engine, fed: Path) -> dict[str, list[str]]:
    """What the engine still holds of this federation, by the label cofe puts on everything it creates."""
    label = {"label": f"{LABEL_FEDERATION}={federation_id(FederationLayout(fed))}"}
    return {
        "containers": [c.name for c in engine.containers.list(all=True, filters=label)],
        "networks": [n.name for n in engine.networks.list(filters=label)],
        "volumes": [v.name for v in engine.volumes.list(filters=label)],
    }


NOTHING_LEFT = {"containers": [], "networks": [], "volumes": []}


def stop_all(processes) -> None:
    """A failed test must not leave participants behind: SIGTERM is their Ctrl-C (containers removed)."""
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=60)
        except Exception:
            proc.kill()


def volume_count(engine) -> int:
    return len(engine.volumes.list())


def test_the_image_builds_from_the_repo_dockerfile_and_runs_cofe_as_non_root(container_engine, container_image):
    image = container_engine.images.get(container_image)
    assert image.attrs["Config"]["Entrypoint"] == ["cofe"]
    assert image.attrs["Config"]["User"] == "10001:10001"
    output = container_engine.containers.run(container_image, ["--version"], remove=True).decode()
    assert output.strip() == "cofe 0.1.0"
    who = container_engine.containers.run(container_image, entrypoint=["id", "-u"], remove=True).decode()
    assert who.strip() == "10001"


def test_run_containers_finishes_with_metrics_and_a_final_model_on_the_host(tmp_path, site_data, fast_config,
                                                                          container_engine, container_image):
    fed = tmp_path / "fed"
    volumes_before = volume_count(container_engine)
    result = cofe("run", "--dir", fed, "--containers", "--image", container_image, "--gandlf-config", fast_config,
                  *collaborator_args(site_data), "--rounds", 1, "--port", free_port(), "--timeout", 900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "in containers of cofe-test:latest" in result.stdout and "Federation summary" in result.stdout
    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for site in SITES:
        for task in TASKS:
            assert any(r["collaborator"] == site and r["round"] == "0" and r["task"] == task for r in rows), (site, task)
    assert (fed / "results" / "final_model.pt").stat().st_size > 0
    assert (fed / "workspaces" / "aggregator" / "save" / "last.pt").is_file()  # written inside, landed on the host
    for site in SITES:
        assert "site" in (fed / "workspaces" / site / "logs" / f"{site}.log").read_text(errors="replace")
    assert leftovers(container_engine, fed) == NOTHING_LEFT
    assert volume_count(container_engine) == volumes_before


def test_start_container_per_participant_finishes(tmp_path, site_data, fast_config, container_engine, container_image):
    fed = tmp_path / "fed"
    port = free_port()
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 1,
         "--port", port, "--aggregator-address", "aggregator", check=True)
    cofe("certify", "--dir", fed, check=True)
    aggregator = cofe_background("start", "aggregator", "--dir", fed, "--container", "--image", container_image,
                                 log=tmp_path / "aggregator.out")
    collaborators = [cofe_background("start", "collaborator", site, "--dir", fed, "--container", "--image", container_image,
                                     log=tmp_path / f"{site}.out") for site in SITES]
    try:
        deadline = time.monotonic() + 900
        for proc in [aggregator, *collaborators]:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        stop_all([aggregator, *collaborators])
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.out")}
    assert aggregator.returncode == 0, logs
    assert all(proc.returncode == 0 for proc in collaborators), logs
    assert "aggregator finished" in logs["aggregator.out"]  # the container's own output, shown in its terminal
    assert (fed / "workspaces" / "aggregator" / "save" / "last.pt").is_file()
    assert leftovers(container_engine, fed) == NOTHING_LEFT


def test_a_collaborator_dying_mid_run_stops_the_others(tmp_path, site_data, fast_config, container_engine, container_image):
    fed = tmp_path / "fed"
    run = cofe_background("run", "--dir", fed, "--containers", "--image", container_image, "--gandlf-config", fast_config,
                          *collaborator_args(site_data), "--rounds", 2, "--port", free_port(), "--timeout", 900,
                          log=tmp_path / "run.out")
    events = fed / "workspaces" / "aggregator" / "logs" / "events.jsonl"
    victim = container_name(FederationLayout(fed), "site_b")
    try:
        deadline = time.monotonic() + 600
        # Mid-run: the federation has started its first round and handed out tasks.
        while not (events.is_file() and '"event": "tasks"' in events.read_text()):
            assert run.poll() is None, (tmp_path / "run.out").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the federation never started a round"
            time.sleep(1)
        container_engine.containers.get(victim).kill()
        run.wait(timeout=120)
    finally:
        stop_all([run])
    output = (tmp_path / "run.out").read_text(errors="replace")
    assert run.returncode == 1, output[-4000:]
    assert "site_b exited with code 137" in output
    assert "last log lines of site_b" in output
    assert leftovers(container_engine, fed) == NOTHING_LEFT


def test_ctrl_c_stops_and_removes_every_container(tmp_path, site_data, fast_config, container_engine, container_image):
    import signal

    import subprocess
    import sys

    fed = tmp_path / "fed"
    args = ["run", "--dir", fed, "--containers", "--image", container_image, "--gandlf-config", fast_config,
            *collaborator_args(site_data), "--rounds", 2, "--port", free_port(), "--timeout", 900]
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps it
    # so; give `cofe run` the terminal's default, as a user at a prompt has it.
    with (tmp_path / "run.out").open("wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "cofe_cli", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while not leftovers(container_engine, fed)["containers"] or not (fed / "workspaces" / "aggregator" / "logs" / "events.jsonl").is_file():
            assert run.poll() is None, (tmp_path / "run.out").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the federation never started"
            time.sleep(1)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=120)
    finally:
        stop_all([run])
    output = (tmp_path / "run.out").read_text(errors="replace")
    assert run.returncode == 130, output[-4000:]
    assert "interrupted: every participant was stopped" in output
    assert leftovers(container_engine, fed) == NOTHING_LEFT


def test_status_lists_the_containers_of_a_run_and_stop_ends_it(tmp_path, site_data, fast_config, container_engine,
                                                               container_image):
    fed = tmp_path / "fed"
    run = cofe_background("run", "--dir", fed, "--containers", "--image", container_image, "--gandlf-config", fast_config,
                          *collaborator_args(site_data), "--rounds", 20, "--port", free_port(), "--timeout", 900,
                          log=tmp_path / "run.out")
    layout = FederationLayout(fed)
    try:
        deadline = time.monotonic() + 600
        while len([c for c in container_engine.containers.list(filters={"label": f"{LABEL_FEDERATION}={federation_id(layout)}"})
                   if c.status == "running"]) < 3:
            assert run.poll() is None, (tmp_path / "run.out").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the containers never ran"
            time.sleep(1)
        status = cofe("status", "--dir", fed, env={**os.environ, "COLUMNS": "250"}, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        for name in ("aggregator", *SITES):
            row = next(line for line in status.stdout.splitlines() if container_name(layout, name) in line)
            assert row.split("│")[1].strip() == name and "cofe run --containers" in row and "running" in row, row
        stopped = cofe("stop", "--dir", fed, timeout=180)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"Stopped cofe run --containers (pid {run.pid}" in stopped.stdout
        assert run.wait(timeout=10) == 130
    finally:
        stop_all([run])
    assert leftovers(container_engine, fed) == NOTHING_LEFT
    assert "Nothing is running" in cofe("status", "--dir", fed, timeout=60).stdout


def test_clear_errors_for_a_localhost_aggregator_and_a_missing_image(tmp_path, site_data, fast_config, container_engine):
    fed = tmp_path / "fed"
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 1,
         "--port", free_port(), check=True)  # the default address: localhost
    cofe("certify", "--dir", fed, check=True)
    refused = cofe("run", "--dir", fed, "--containers")
    assert refused.returncode == 2, refused.stderr
    assert "cannot name a container" in refused.stderr and "--aggregator-address aggregator" in refused.stderr
    # A published aggregator may keep localhost (processes on this host dial it); the image is then missing.
    missing = cofe("start", "aggregator", "--dir", fed, "--container", "--image", "cofe-absent:0")
    assert missing.returncode == 2, missing.stderr
    assert "the image cofe-absent:0 is not on the container engine" in missing.stderr
    assert "cofe image build --tag cofe-absent:0" in missing.stderr
    assert "Traceback" not in refused.stderr + missing.stderr
    assert leftovers(container_engine, fed) == NOTHING_LEFT
