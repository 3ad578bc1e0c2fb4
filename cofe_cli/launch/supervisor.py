"""Watches a running federation, whatever launched it: live progress, failure handling, the report.

A launcher (processes today, containers later) only has to start participants, report their exit
codes and memory, show log tails and stop them; everything a user sees is decided here.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.live import Live

from cofe_cli.errors import FederationFailed
from cofe_cli.events import EventTail
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.launch.progress import FederationProgress


@dataclass(frozen=True)
class ParticipantState:
    name: str
    returncode: int | None  # None while running
    peak_rss: int


class Launcher(Protocol):
    def participants(self) -> list[str]: ...
    def start(self) -> None: ...
    def states(self) -> dict[str, ParticipantState]: ...
    def log_tail(self, name: str, lines: int = 20) -> list[str]: ...
    def log_path(self, name: str) -> Path: ...
    def stop(self, grace: float = 10.0) -> None: ...


def tail_lines(path: Path, lines: int) -> list[str]:
    try:
        with Path(path).open("r", encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except FileNotFoundError:
        return []


# Measured here: a GaNDLF collaborator peaks at ~2.0 GiB with tiny models, the aggregator at ~1.8 GiB
# while it exports the final models; bigger models need more (OpenFL's notes: ~3.5 GiB each).
COLLABORATOR_GIB = 2.1
AGGREGATOR_GIB = 1.8


def warn_if_memory_short(collaborators: int, console: Console) -> None:
    import psutil

    needed = collaborators * COLLABORATOR_GIB + AGGREGATOR_GIB
    available = psutil.virtual_memory().available / 2**30
    if needed > available:
        console.print(f"[yellow]warning:[/] {collaborators} collaborators need about {needed:.0f} GiB here, "
                      f"but only {available:.0f} GiB is free; processes may be killed for memory "
                      "(hint: simulate fewer sites per machine, or use a smaller model)")


def error_excerpt(lines: list[str], keep: int = 25) -> list[str]:
    """The part of a log a person needs: from the last traceback on, else the last lines.
    (Warnings printed after a crash would otherwise push the traceback out of view.)"""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        excerpt = lines[starts[-1]:]
        return excerpt if len(excerpt) <= keep else excerpt[:5] + ["..."] + excerpt[-(keep - 6):]
    return lines[-keep:]


def supervise(launcher: Launcher, layout: FederationLayout, manifest: Manifest, *, console: Console,
              timeout: float | None = None, poll_interval: float = 0.5) -> FederationProgress:
    """Run until every participant exited 0; on any failure, timeout or Ctrl-C stop them all."""
    progress = FederationProgress(manifest, started=time.time())
    events = EventTail(layout.workspace(AGGREGATOR) / "logs" / "events.jsonl")
    deadline = time.monotonic() + timeout if timeout else None
    live = Live(progress, console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
    warn_if_memory_short(len(manifest.collaborators), console)
    launcher.start()
    try:
        if live:
            live.start()
        while True:
            for event in events.new_events():
                line = progress.apply(event)
                if line and not live:
                    console.print(line)
            states = launcher.states()
            progress.update_states(states)
            failed = [s for s in states.values() if s.returncode not in (None, 0)]
            if failed:
                _fail(launcher, failed[0].name, f"{failed[0].name} exited with code {failed[0].returncode}", progress)
            if all(s.returncode == 0 for s in states.values()):
                break
            if deadline and time.monotonic() > deadline:
                _fail(launcher, AGGREGATOR, f"the federation did not finish within {timeout:.0f} s", progress)
            time.sleep(poll_interval)
        for event in events.new_events():
            progress.apply(event)
        progress.update_states(launcher.states())
        progress.finished = True
        if live:
            live.refresh()
        return progress
    except KeyboardInterrupt:
        launcher.stop()
        raise FederationFailed("interrupted: every participant was stopped",
                               hint="run it again; the aggregator resumes the unfinished round", exit_code=130) from None
    finally:
        if live:
            live.stop()
        launcher.stop()


def _fail(launcher: Launcher, name: str, reason: str, progress: FederationProgress) -> None:
    launcher.stop()
    progress.update_states(launcher.states())
    raise FederationFailed(reason, hint=f"full log: {launcher.log_path(name)}", participant=name,
                           log_tail=error_excerpt(launcher.log_tail(name, 400)))
