"""`cofe status` and `cofe stop` for every launcher, through the real CLI, with real processes holding
the federation's locks as `cofe run` and `cofe start` do (cofe_cli/locks.py) and fake Slurm tools for
jobs a killed `cofe run --slurm` left behind. Real federations: tests/integration/test_run.py (processes),
test_containers.py and test_slurm.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from cli_assertions import ok, refused, run_cofe
from unit_federation import gandlf_config, write_federation

from cofe_cli.federation import AGGREGATOR
from cofe_cli.launch.slurm import write_jobs
from cofe_cli.launch.status import participants_of
from cofe_cli.plan.workspaces import CollaboratorData

SITES = ("site_a", "site_b")


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    root = tmp_path / "fed"
    write_federation(root, config=gandlf_config(), address="localhost",
                     collaborators=[CollaboratorData(site, None) for site in SITES])
    return root


class Command:
    """A process standing for a cofe command (`argv`) that holds a lock of `fed` while it runs `body`."""

    def __init__(self, fed: Path, argv: list[str], hold: str, body: str = ""):
        script = textwrap.dedent(f"""
            import signal, subprocess, sys, time
            from cofe_cli.federation import FederationLayout
            from cofe_cli.locks import federation_locked, participant_locked
            sys.argv = {["cofe", *argv]!r}
            layout = FederationLayout({str(fed)!r})
            with {hold}:
        """) + textwrap.indent(textwrap.dedent(body) + '\nprint("held", flush=True)\ntime.sleep(120)\n', "    ")
        self.process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        self.said = []  # what `body` printed
        while (line := self.process.stdout.readline().strip()) != "held":
            assert line, "the command ended before it held the lock"
            self.said.append(line)
        self.pid = self.process.pid

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def commands():
    started: list[Command] = []

    def start(*args, **kwargs) -> Command:
        started.append(Command(*args, **kwargs))
        return started[-1]

    yield start
    for command in started:
        command.end()


# `cofe run` as the processes launcher is to `cofe stop`: participants as child processes whose command
# line is `python -m cofe_cli start ...`, stopped (and waited for) on SIGTERM before it exits 130.
_RUN_WITH_PARTICIPANTS = """
    participants = []
    for args in (["aggregator"], ["collaborator", "site_a"], ["collaborator", "site_b"]):
        participants.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "cofe_cli",
                                              "start", *args, "--dir", str(layout.root)]))
    def interrupted(signum, frame):
        for participant in participants:
            participant.terminate()
        for participant in participants:
            participant.wait()
        sys.exit(130)
    signal.signal(signal.SIGTERM, interrupted)
    print(" ".join(str(p.pid) for p in participants), flush=True)
"""


def _table_rows(stdout: str) -> dict[str, str]:
    """Participant -> its row of `cofe status`'s table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.replace("┃", "│").split("│") if cell.strip()]
        if cells and cells[0] in (AGGREGATOR, *SITES):
            rows[cells[0]] = line
    return rows


def test_nothing_running_is_said_and_is_no_error(fed: Path) -> None:
    status = ok(run_cofe("status", "--dir", fed, cwd=fed.parent))
    assert f"Nothing is running for the federation in {fed}." in status.stdout
    stopped = ok(run_cofe("stop", "--dir", fed, cwd=fed.parent))
    assert f"Nothing is running for the federation in {fed}: nothing to stop." in stopped.stdout


def test_status_lists_the_participants_of_cofe_run_and_stop_ends_them(fed: Path, commands) -> None:
    run = commands(fed, ["run", "--dir", str(fed)], "federation_locked(layout)", _RUN_WITH_PARTICIPANTS)
    pids = [int(pid) for pid in run.said[0].split()]
    status = ok(run_cofe("status", "--dir", fed, cwd=fed.parent))
    assert f"cofe run runs the federation in {fed}: pid {run.pid} (`cofe run --dir {fed}`, since " in status.stdout
    rows = _table_rows(status.stdout)
    assert set(rows) == {AGGREGATOR, *SITES}, status.stdout
    for name, pid in zip((AGGREGATOR, *SITES), pids):
        assert f"pid {pid}" in rows[name] and "running" in rows[name] and "cofe run" in rows[name], status.stdout
        assert socket.gethostname() in rows[name]
    assert "Nothing is running" not in status.stdout

    stopped = ok(run_cofe("stop", "--dir", fed, cwd=fed.parent))
    assert f"Stopped cofe run (pid {run.pid}, since " in stopped.stdout
    assert f"Nothing of the federation in {fed} is running any more." in stopped.stdout
    assert run.process.wait(timeout=10) == 130, "cofe run got a SIGTERM (a Ctrl-C), not a SIGKILL"
    assert not [pid for pid in pids if psutil.pid_exists(pid)], "no participant outlives the run"
    assert "Nothing is running" in ok(run_cofe("status", "--dir", fed, cwd=fed.parent)).stdout


def test_a_participant_started_by_hand_is_listed_and_stopped(fed: Path, commands) -> None:
    start = commands(fed, ["start", "collaborator", "site_a", "--dir", str(fed)], "participant_locked(layout, 'site_a')")
    status = ok(run_cofe("status", "--dir", fed, cwd=fed.parent))
    rows = _table_rows(status.stdout)
    assert list(rows) == ["site_a"] and "cofe start" in rows["site_a"] and f"pid {start.pid}" in rows["site_a"], status.stdout
    stopped = ok(run_cofe("stop", "--dir", fed, cwd=fed.parent))
    assert f"Stopped cofe start (pid {start.pid}" in stopped.stdout
    assert start.process.wait(timeout=10) == -signal.SIGTERM


def test_a_holder_on_another_host_is_shown_and_not_signalled(fed: Path, commands) -> None:
    # A `cofe run` on another machine that shares the federation directory: its lock record names that host.
    record = json.dumps({"pid": os.getpid(), "command": f"cofe run --dir {fed}", "since": "2026-01-01 10:00:00 UTC",
                         "host": "node-elsewhere"})
    remote = commands(fed, ["run"], "open(layout.root / '.cofe.lock', 'w') as lock",
                      f"import fcntl\nfcntl.flock(lock, fcntl.LOCK_EX)\nlock.write({record!r})\nlock.flush()")
    status = ok(run_cofe("status", "--dir", fed, cwd=fed.parent))
    assert f"pid {os.getpid()} on node-elsewhere (`cofe run --dir {fed}`" in status.stdout
    stopped = run_cofe("stop", "--dir", fed, cwd=fed.parent)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "cofe run (pid {}) runs on node-elsewhere, where this host cannot signal it".format(os.getpid()) in stopped.stderr
    assert f"hint: run `cofe stop --dir {fed}` on node-elsewhere" in stopped.stderr
    assert remote.process.poll() is None


def test_a_command_that_only_writes_is_left_to_finish(fed: Path, commands) -> None:
    certify = commands(fed, ["certify", "--dir", str(fed)], "federation_locked(layout)")
    status = ok(run_cofe("status", "--dir", fed, cwd=fed.parent))
    assert f"cofe certify writes to the federation in {fed}: pid {certify.pid}" in status.stdout
    stopped = run_cofe("stop", "--dir", fed, cwd=fed.parent)
    assert stopped.returncode == 1 and "is no running federation: left to finish" in stopped.stderr, stopped.stderr
    assert certify.process.poll() is None


def _fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_jobs_left_behind_by_a_killed_run_are_listed_and_cancelled(fed: Path, tmp_path: Path, monkeypatch) -> None:
    """`kill -9` of `cofe run --slurm`: no lock is held any more, but its jobs still run."""
    from cofe_cli.federation import FederationLayout

    write_jobs(FederationLayout(fed), {AGGREGATOR: "41", "site_a": "42", "site_b": "43"})
    tools = tmp_path / "bin"
    tools.mkdir()
    cancelled = tmp_path / "cancelled"
    # Running until scancel, then cancelled; squeue knows the jobs either way.
    _fake_tool(tools, "squeue", f'if [ -e {cancelled} ]; then s=CANCELLED; else s=RUNNING; fi\n'
                                'for j in 41 42 43; do echo "$j|$s|node1|None|2026-01-01T10:00:00"; done')
    _fake_tool(tools, "scontrol", f'[ -e {cancelled} ] && echo "JobId=$4 JobState=CANCELLED Reason=None ExitCode=0:15 NodeList=node1"')
    _fake_tool(tools, "scancel", f'echo "$@" >> {cancelled}')
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    status = ok(run_cofe("status", "--dir", fed, cwd=fed.parent))
    rows = _table_rows(status.stdout)
    assert set(rows) == {AGGREGATOR, *SITES}, status.stdout
    assert "job 42" in rows["site_a"] and "RUNNING" in rows["site_a"] and "node1" in rows["site_a"]
    assert "its launcher is gone" in rows["site_a"] and "2026-01-01 10:00:00" in rows["site_a"]
    stopped = ok(run_cofe("stop", "--dir", fed, cwd=fed.parent))
    assert "Cancelled Slurm job(s) 41, 42, 43." in stopped.stdout
    assert cancelled.read_text().split() == ["41", "42", "43"]
    after = ok(run_cofe("status", "--dir", fed, cwd=fed.parent)).stdout
    assert "CANCELLED (exit code 0, signal 15)" in after and "Nothing is running" in after


def test_participants_of_reads_a_cofe_start_command_line() -> None:
    assert participants_of(["python", "-m", "cofe_cli", "start", "aggregator", "--dir", "/f"]) == [AGGREGATOR]
    assert participants_of(["cofe", "start", "collaborator", "site_a", "--dir", "/f"]) == ["site_a"]
    assert participants_of(["cofe", "run", "--dir", "/start"]) == []
    # A shared worker of `cofe run --workers` runs several sites.
    assert participants_of(["python", "-m", "cofe_cli", "start", "worker", "--sites", "site_a,site_c", "--dir", "/f"]) == \
        ["site_a", "site_c"]


def test_a_run_still_initialising_its_federation_is_shown(tmp_path: Path, commands) -> None:
    """`cofe run --gandlf-config ...` holds the directory before federation.yaml exists."""
    fed = tmp_path / "new"
    refused(run_cofe("status", "--dir", fed, cwd=tmp_path), "no federation in")
    run = commands(fed, ["run", "--dir", str(fed), "--gandlf-config", "g.yaml"], "federation_locked(layout)")
    status = ok(run_cofe("status", "--dir", fed, cwd=tmp_path))
    assert f"cofe run runs the federation in {fed}: pid {run.pid}" in status.stdout
    assert "Nothing is running" not in status.stdout
