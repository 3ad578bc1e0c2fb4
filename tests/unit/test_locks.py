"""One command at a time writes to a federation: the locks of cofe_cli/locks.py, through the real CLI.

A helper process holds a lock as `cofe run` or `cofe start` would; every command that writes to the
same directory is then refused in one line naming it (pid, command, since when), and a holder that
died blocks nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from cli_assertions import ok, refused, run_cofe
from unit_federation import gandlf_config, write_federation

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout
from cofe_cli.locks import LOCK_FILE, federation_locked, participant_locked
from cofe_cli.plan.workspaces import CollaboratorData


@pytest.fixture(scope="module")
def certified(tmp_path_factory) -> Path:
    """A torch-free federation with its certificates (so that `cofe start` gets as far as its lock)."""
    root = tmp_path_factory.mktemp("certified") / "fed"
    write_federation(root, config=gandlf_config(), address="localhost",
                     collaborators=[CollaboratorData("site_a", None), CollaboratorData("site_b", None)])
    ok(run_cofe("certify", "--dir", root, cwd=root.parent))
    return root


@pytest.fixture
def fed(certified: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "fed"
    subprocess.run(["cp", "-a", str(certified), str(copy)], check=True)
    return copy


class Holder:
    """A process that holds a lock of `fed` the way `command` does, until stopped."""

    def __init__(self, fed: Path, command: list[str], hold: str):
        script = textwrap.dedent(f"""
            import sys, time
            from cofe_cli.federation import FederationLayout
            from cofe_cli.locks import federation_locked, participant_locked
            sys.argv = {["cofe", *command]!r}
            layout = FederationLayout({str(fed)!r})
            with {hold}:
                print("held", flush=True)
                time.sleep(120)
        """)
        self.process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        assert self.process.stdout.readline().strip() == "held"
        self.pid = self.process.pid

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def holders():
    started: list[Holder] = []

    def hold(fed: Path, command: list[str], hold: str) -> Holder:
        started.append(Holder(fed, command, hold))
        return started[-1]

    yield hold
    for holder in started:
        if holder.process.poll() is None:
            holder.kill()


def _init_force_args(fed: Path) -> list[str]:
    config = fed.parent / "gandlf.yaml"
    config.write_text(yaml.safe_dump(gandlf_config()))
    return ["init", "--force", "--dir", fed, "--gandlf-config", config, "--collaborator", "site_a"]


def test_a_running_federation_refuses_every_command_that_writes_to_it(fed: Path, holders) -> None:
    holder = holders(fed, ["run", "--dir", str(fed)], "federation_locked(layout)")
    attempts = {
        "run": ["run", "--dir", fed],
        "init --force": _init_force_args(fed),
        "certify": ["certify", "--dir", fed],
        "start aggregator": ["start", "aggregator", "--dir", fed],
        "start collaborator": ["start", "collaborator", "site_a", "--dir", fed, "--data", fed],
    }
    for name, args in attempts.items():
        result = run_cofe(*args, cwd=fed.parent)
        refused(result, f"is in use by pid {holder.pid} (`cofe run --dir {fed}`, since ")
        assert "Traceback" not in result.stderr, name
    assert (fed / LOCK_FILE).is_file() and json.loads((fed / LOCK_FILE).read_text())["pid"] == holder.pid


def test_a_running_participant_refuses_a_run_but_not_its_neighbours(fed: Path, holders) -> None:
    holder = holders(fed, ["start", "aggregator", "--dir", str(fed)], "participant_locked(layout, 'aggregator')")
    for args in (["run", "--dir", fed], ["start", "aggregator", "--dir", fed], _init_force_args(fed)):
        result = run_cofe(*args, cwd=fed.parent)
        refused(result, f"aggregator's workspace {fed / 'workspaces' / AGGREGATOR} is in use by pid {holder.pid} "
                        f"(`cofe start aggregator --dir {fed}`")
    # Another participant of the same federation, in another terminal, goes on (to its own next check).
    refused(run_cofe("start", "collaborator", "site_a", "--dir", fed, cwd=fed.parent), "site_a has no data folder yet")
    # So does revoking a certificate, which is meant to happen while the aggregator serves.
    refused(run_cofe("certify", "revoke", "site_z", "--dir", fed, cwd=fed.parent), "site_z")


def test_a_holder_that_died_blocks_nothing(fed: Path, holders) -> None:
    holder = holders(fed, ["run", "--dir", str(fed)], "federation_locked(layout)")
    holder.kill()
    assert json.loads((fed / LOCK_FILE).read_text())["pid"] == holder.pid  # its record is still there
    ok(run_cofe("certify", "--dir", fed, cwd=fed.parent))
    assert not (fed / LOCK_FILE).exists(), "a released lock leaves no file behind"
    assert not list((fed / "workspaces").glob(f"*/{LOCK_FILE}"))


def test_one_process_takes_its_own_locks_again(fed: Path, holders) -> None:
    """`cofe run` holds the federation and then runs init and certify, which take it too."""
    layout = FederationLayout(fed)
    with federation_locked(layout):
        with federation_locked(layout), participant_locked(layout, "site_a"):
            pass
        refused(run_cofe("certify", "--dir", fed, cwd=fed.parent), f"is in use by pid {os.getpid()}")
    holder = holders(fed, ["start", "collaborator", "site_a"], "participant_locked(layout, 'site_a')")
    with pytest.raises(CofeError, match=f"site_a's workspace .* is in use by pid {holder.pid}"):
        with federation_locked(layout):
            pass
    assert not (fed / LOCK_FILE).exists(), "a refused attempt leaves the federation's lock free"


@pytest.mark.parametrize("timeout", ["-5", "0"])
def test_run_refuses_a_timeout_that_is_not_positive(fed: Path, timeout: str) -> None:
    result = run_cofe("run", "--dir", fed, "--timeout", timeout, cwd=fed.parent)
    refused(result, f"--timeout must be a positive number of seconds, got {timeout}")
    assert not (fed / "workspaces" / AGGREGATOR / "logs" / f"{AGGREGATOR}.log").exists(), "nothing was started"


def test_run_without_a_federation_leaves_no_folder_behind(tmp_path: Path) -> None:
    """The lock file used to make --dir before `cofe run` found that it held no federation."""
    missing = tmp_path / "no-such-federation"
    refused(run_cofe("run", "--dir", missing, cwd=tmp_path), "no federation in")
    assert not missing.exists()
