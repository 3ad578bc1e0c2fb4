"""Every participant of a federation as its own OS process on this machine (`cofe run`)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.locks import launched_env
from cofe_cli.launch.supervisor import ParticipantState, tail_lines

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If `cofe run` itself is killed (even with SIGKILL), the kernel stops the participants: no orphans.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class _Process:
    name: str
    log: Path
    popen: subprocess.Popen
    peak_rss: int = 0


class ProcessFederation:
    """Launches `cofe start ...` once per participant; each writes its output to its workspace's log."""

    def __init__(self, layout: FederationLayout, manifest: Manifest, *, restart: bool = False):
        self.layout = layout
        self.manifest = manifest
        self.restart = restart
        self._processes: dict[str, _Process] = {}

    def participants(self) -> list[str]:
        return list(self.manifest.participant_names())

    def start(self) -> None:
        for name in self.participants():
            self._spawn(name)

    def command(self, name: str) -> list[str]:
        """The participant's `cofe start`, run by this same Python."""
        return self.layout.participant(name).start_command(python=sys.executable, restart=self.restart)

    def restart_participant(self, name: str) -> None:
        self._spawn(name)  # its log is appended to

    def _spawn(self, name: str) -> None:
        participant = self.layout.participant(name)
        # Every collaborator trains at the same time on this machine's cores.
        self._spawn_process(name, self.command(name), participant.log_file,
                            participant.launch_env(participant.thread_budget(sharing=len(self.manifest.collaborators))))

    def _spawn_process(self, key: str, args: list[str], log: Path, launch_env: dict[str, str]) -> None:
        """Start `args` as the process `key`, its output appended to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **launched_env(), **launch_env}
        with log.open("ab") as out:
            popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self._processes[key] = _Process(key, log, popen)

    def states(self) -> dict[str, ParticipantState]:
        states = {}
        for name, proc in self._processes.items():
            proc.peak_rss = max(proc.peak_rss, _tree_rss(proc.popen.pid))
            states[name] = ParticipantState(name=name, returncode=proc.popen.poll(), peak_rss=proc.peak_rss)
        return states

    def log_tail(self, name: str, lines: int = 20, since: int = 0) -> list[str]:
        return tail_lines(self.log_path(name), lines, since)

    def log_path(self, name: str) -> Path:
        return self.layout.participant(name).log_file

    def stop(self, grace: float = 10.0) -> None:
        running = [p for p in self._processes.values() if p.popen.poll() is None]
        for proc in running:
            _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        for proc in self._processes.values():  # reap any straggler in the participants' groups
            _signal_group(proc.popen.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0
