"""The participant model: one owner of a participant's role, certificate name, workspace paths, start
command (the same for processes, containers and Slurm) and thread budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.launch.containers import participant_command, participant_mounts
from cofe_cli.launch.slurm import SlurmOptions, render_script
from cofe_cli.participant import AGGREGATOR, LOG_CAPTURED_ENV, is_aggregator


def manifest(address: str = "FL.Example.org") -> Manifest:
    return Manifest(name="fed", collaborators=("site_a", "site_b"), rounds=2, aggregator_address=address,
                    aggregator_port=50051, algorithm="fedavg", plan_sha384="0" * 96, versions={})


def test_the_layout_hands_out_the_aggregator_first_then_every_collaborator(tmp_path):
    layout = FederationLayout(tmp_path)
    participants = layout.participants(manifest())
    assert [p.name for p in participants] == ["aggregator", "site_a", "site_b"]
    assert [p.role for p in participants] == ["aggregator", "collaborator", "collaborator"]
    assert [p.is_aggregator for p in participants] == [True, False, False]
    assert all(p.root == layout.root and p.workspace == layout.workspace(p.name) for p in participants)
    assert layout.aggregator() == layout.participant(AGGREGATOR)
    assert is_aggregator("aggregator") and not is_aggregator("site_a")


def test_workspace_paths(tmp_path):
    site = FederationLayout(tmp_path).participant("site_a")
    workspace = tmp_path.resolve() / "workspaces" / "site_a"
    assert site.workspace == workspace
    assert site.plan_dir == workspace / "plan"
    assert site.cert_dir == workspace / "cert"
    assert site.chain == workspace / "cert" / "cert_chain.crt"
    assert site.logs_dir == workspace / "logs"
    assert site.log_file == workspace / "logs" / "site_a.log"
    assert site.events_file == workspace / "logs" / "events.jsonl"
    assert site.save_dir == workspace / "save"
    assert site.local_state_dir == workspace / "local_state"
    assert site.output_dirs() == [workspace / sub for sub in ("logs", "save", "local_state", ".tmp", ".home")]


def test_certificate_name_and_files_follow_the_role(tmp_path):
    layout = FederationLayout(tmp_path)
    aggregator, site = layout.aggregator(manifest()), layout.participant("site_a", manifest())
    # Clients dial the address, so the server certificate carries it; OpenFL looks for the files lowercased.
    assert aggregator.common_name == "FL.Example.org" and aggregator.certificate_kind == "server"
    assert aggregator.cert == aggregator.workspace / "cert" / "server" / "agg_fl.example.org.crt"
    assert aggregator.key == aggregator.workspace / "cert" / "server" / "agg_fl.example.org.key"
    assert site.common_name == "site_a" and site.certificate_kind == "client"
    assert site.cert == site.workspace / "cert" / "client" / "col_site_a.crt"
    assert site.key == site.workspace / "cert" / "client" / "col_site_a.key"
    # A collaborator's names need no manifest; the aggregator's do.
    assert layout.participant("site_a").cert == site.cert
    with pytest.raises(ValueError):
        _ = layout.aggregator().common_name


def test_only_the_aggregator_has_state_to_clear_on_restart(tmp_path):
    layout = FederationLayout(tmp_path)
    workspace = layout.workspace(AGGREGATOR)
    state = layout.aggregator().restart_state()
    assert workspace / "local_state" in state and workspace / "save" / "best.pbuf" in state
    assert workspace / "logs" / "events.jsonl" in state
    assert workspace / "save" / "init.pbuf" not in state  # round 0 starts from it again
    assert layout.participant("site_a").restart_state() == []


def test_start_command_on_a_host_and_in_a_container(tmp_path):
    layout = FederationLayout(tmp_path)
    root = str(layout.root)
    aggregator, site = layout.aggregator(), layout.participant("site_a")
    assert aggregator.start_command(python="/py", restart=True) == \
        ["/py", "-m", "cofe_cli", "start", "aggregator", "--dir", root, "--restart"]
    assert site.start_command(python="/py", restart=True, device="cuda") == \
        ["/py", "-m", "cofe_cli", "start", "collaborator", "site_a", "--dir", root, "--device", "cuda"]
    # After an image's `cofe` entrypoint: the same arguments without the interpreter.
    assert aggregator.start_command() == ["start", "aggregator", "--dir", root]
    assert site.start_command(device="cuda:1") == ["start", "collaborator", "site_a", "--dir", root, "--device", "cuda:1"]


def test_every_launcher_starts_the_participants_own_command(tmp_path):
    from cofe_cli.launch.processes import ProcessFederation

    layout = FederationLayout(tmp_path)
    site = layout.participant("site_a")
    processes = ProcessFederation(layout, manifest(), restart=True)
    assert processes.command("site_a") == site.start_command(python=processes_python())
    assert processes.command(AGGREGATOR)[-1] == "--restart"
    assert participant_command(layout, "site_a", device="cuda") == site.start_command(device="cuda")
    script = render_script(layout, "site_a", SlurmOptions(gpus_per_site=1), python="/opt/py")
    assert script.splitlines()[-1] == "exec " + " ".join(site.start_command(python="/opt/py", device="cuda"))
    assert f"#SBATCH --output={site.log_file}" in script and f"#SBATCH --chdir={site.workspace}" in script
    assert processes.log_path("site_a") == site.log_file


def processes_python() -> str:
    import sys

    return sys.executable


def test_container_mounts_come_from_the_participant(tmp_path):
    layout = FederationLayout(tmp_path)
    site = layout.participant("site_a")
    read_only = {m.target for m in participant_mounts(layout, "site_a") if m.read_only}
    assert {site.plan_dir, site.cert_dir, layout.plans} <= read_only
    assert site.workspace not in read_only


def test_thread_budget(tmp_path):
    layout = FederationLayout(tmp_path)
    aggregator, site = layout.aggregator(), layout.participant("site_a")
    assert aggregator.thread_budget(sharing=4, cpus=16) == 1  # it only averages tensors
    assert site.thread_budget(sharing=4, cpus=16) == 4
    assert site.thread_budget(sharing=8, cpus=4) == 1  # never zero
    assert site.thread_budget(cpus=3) == 3  # a Slurm job alone on the CPUs it asked for
    assert site.thread_budget(sharing=2) == max(1, (os.cpu_count() or 1) // 2)
    assert "export OMP_NUM_THREADS=3" in render_script(layout, "site_a", SlurmOptions(cpus_per_site=3), python="/py")
    assert "export OMP_NUM_THREADS=1" in render_script(layout, AGGREGATOR, SlurmOptions(cpus_per_site=3), python="/py")


def test_launch_env_tells_the_engine_its_output_is_captured(tmp_path):
    env = FederationLayout(tmp_path).participant("site_a").launch_env(3)
    assert env == {LOG_CAPTURED_ENV: "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "3"}
    assert f"export {LOG_CAPTURED_ENV}=1" in render_script(FederationLayout(tmp_path), "site_a", SlurmOptions(), python="/py")


def test_the_engine_reads_the_same_name_for_a_captured_log():
    from cofe_cli.engine import participant as engine

    assert engine.LOG_CAPTURED_ENV == LOG_CAPTURED_ENV == "COFE_LOG_CAPTURED"
    assert Path(engine.__file__).name == "participant.py"
