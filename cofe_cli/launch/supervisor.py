"""Watches a running federation, whatever launched it: live progress, failure handling, the report.

A launcher (processes today, containers later) only has to start participants, report their exit
codes and memory, show log tails and stop them; everything a user sees is decided here.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.live import Live

from cofe_cli.errors import FederationFailed
from cofe_cli.events import EventTail
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.launch.progress import FederationProgress
from cofe_cli.launch.report import load_plotting_ahead
from cofe_cli.participant import is_aggregator


@dataclass(frozen=True)
class ParticipantState:
    name: str
    returncode: int | None  # None while running
    peak_rss: int


class Launcher(Protocol):
    def participants(self) -> list[str]: ...
    def start(self) -> None: ...
    def states(self) -> dict[str, ParticipantState]: ...
    def log_tail(self, name: str, lines: int = 20, since: int = 0) -> list[str]: ...
    def log_path(self, name: str) -> Path: ...
    def stop(self, grace: float = 10.0) -> None: ...
    def restart_participant(self, name: str) -> None: ...  # start a collaborator that exited once more


def tail_lines(path: Path, lines: int, since: int = 0) -> list[str]:
    """The last `lines` lines of a log, of what was written from byte `since` on (logs are appended to)."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(since)
            return [line.decode("utf-8", errors="replace").rstrip("\n") for line in deque(handle, maxlen=lines)]
    except FileNotFoundError:
        return []


def file_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0


# Measured here: a GaNDLF collaborator peaks at ~2.0 GiB with tiny models, the aggregator at ~1.8 GiB
# while it exports the final models; bigger models need more (OpenFL's notes: ~3.5 GiB each).
COLLABORATOR_GIB = 2.1
AGGREGATOR_GIB = 1.8


def warn_if_memory_short(collaborator_processes: int, console: Console) -> None:
    import psutil

    needed = collaborator_processes * COLLABORATOR_GIB + AGGREGATOR_GIB
    available = psutil.virtual_memory().available / 2**30
    if needed > available:
        console.print(f"[yellow]warning:[/] {collaborator_processes} collaborator processes need about {needed:.0f} GiB here, "
                      f"but only {available:.0f} GiB is free; processes may be killed for memory "
                      "(hint: simulate fewer sites per machine, share processes with --workers, or use a smaller model)")


def error_excerpt(lines: list[str], keep: int = 25) -> list[str]:
    """The part of a log a person needs: from the last traceback on, else the last lines.
    (Warnings printed after a crash would otherwise push the traceback out of view.)"""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        excerpt = lines[starts[-1]:]
        return excerpt if len(excerpt) <= keep else excerpt[:5] + ["..."] + excerpt[-(keep - 6):]
    return lines[-keep:]


@dataclass
class SiteLoss:
    """What a collaborator's death means: restart it (`--restarts`), go on without it (at least `needed`
    collaborators still run: the plan's --min-collaborators), or stop the federation."""

    collaborators: tuple[str, ...]
    needed: int
    restarts: int = 0
    restarted: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)  # name -> exit code

    def on_exit(self, name: str, returncode: int) -> str:
        """"restart", "lost" or "stop" for a collaborator that exited with `returncode` (not 0)."""
        if self.restarted.get(name, 0) < self.restarts:
            self.restarted[name] = self.restarted.get(name, 0) + 1
            return "restart"
        self.lost[name] = returncode
        return "lost" if self.left() >= self.needed else "stop"

    def left(self) -> int:
        return len(self.collaborators) - len(self.lost)

    def running(self, name: str) -> bool:
        return name not in self.lost


# Once the aggregator has finished every round and exited 0, its collaborators only have to notice
# and leave, which takes them a few seconds. One that is still running a minute later waits for an
# aggregator that is gone (it may even have dialled another process on the port) and would hold the
# run forever without a --timeout: it is stopped, and the run ends with the aggregator's results.
COLLABORATOR_GRACE_SECONDS = 60.0


def supervise(launcher: Launcher, layout: FederationLayout, manifest: Manifest, *, console: Console,
              timeout: float | None = None, poll_interval: float = 0.5, restarts: int = 0) -> FederationProgress:
    """Run until every participant exited 0; on any failure, timeout or Ctrl-C stop them all. A collaborator
    that dies is restarted (at most `restarts` times) or left behind while the plan's minimum still runs."""
    progress = FederationProgress(manifest, started=time.time())
    site_loss = SiteLoss(manifest.collaborators, manifest.required_collaborators, restarts)
    events = EventTail(layout.aggregator().events_file)
    # What earlier attempts of a resumed federation logged counts in its results but is not news:
    # only what this run's participants log is shown as it happens.
    progress.add_history(events.new_events())
    log_start = {name: file_size(launcher.log_path(name)) for name in launcher.participants()}
    deadline = time.monotonic() + timeout if timeout else None
    aggregator_done_at = None
    plotting_loaded = False  # the report's, once every round has ended
    live = Live(progress, console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
    # Shared workers (`--workers`) hold several collaborators in one process each.
    warn_if_memory_short(getattr(launcher, "collaborator_processes", len(manifest.collaborators)), console)
    launcher.start()
    try:
        if live:
            live.start()
        while True:
            # States first, then the events: whatever a participant logged before it was seen dead is applied
            # before its death is reported (its loss then names the round it was in).
            states = launcher.states()
            for event in events.new_events():
                line = progress.apply(event)
                if line and not live:
                    console.print(line)
            progress.update_states(states)
            if not plotting_loaded and progress.round >= progress.rounds:
                load_plotting_ahead()
                plotting_loaded = True
            aggregator = states.get(AGGREGATOR)
            if aggregator is not None and aggregator.returncode not in (None, 0):
                _fail(launcher, AGGREGATOR, f"{AGGREGATOR} exited with code {aggregator.returncode}", progress, log_start)
            for state in list(states.values()):
                if is_aggregator(state.name) or state.returncode in (None, 0) or not site_loss.running(state.name):
                    continue
                line = _lost_collaborator(launcher, site_loss, state, progress, log_start)
                if line is None:
                    _fail(launcher, state.name, f"{state.name} exited with code {state.returncode}"
                          + _below_minimum(site_loss), progress, log_start)
                (live.console if live else console).print(line, soft_wrap=True)
            states = {name: state for name, state in states.items() if site_loss.running(name)}
            if all(s.returncode == 0 for s in states.values()):
                break
            if getattr(states.get(AGGREGATOR), "returncode", None) == 0:
                aggregator_done_at = aggregator_done_at or time.monotonic()
                if time.monotonic() - aggregator_done_at > COLLABORATOR_GRACE_SECONDS:
                    stragglers = sorted(s.name for s in states.values() if s.returncode is None)
                    console.print(f"[yellow]warning:[/] {', '.join(stragglers)} still running "
                                  f"{COLLABORATOR_GRACE_SECONDS:.0f} s after the aggregator finished all rounds: stopped")
                    launcher.stop()
                    break
            if deadline and time.monotonic() > deadline:
                _fail(launcher, AGGREGATOR, f"the federation did not finish within {timeout:.0f} s", progress, log_start)
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


def _lost_collaborator(launcher: Launcher, site_loss: SiteLoss, state: ParticipantState, progress: FederationProgress,
                       log_start: dict[str, int]) -> str | None:
    """Restart a collaborator that died, or go on without it: the line that says which; None: too few are left."""
    where = f"log: {launcher.log_path(state.name)}"
    decision = site_loss.on_exit(state.name, state.returncode)
    if decision == "restart":
        log_start[state.name] = file_size(launcher.log_path(state.name))
        launcher.restart_participant(state.name)
        used = site_loss.restarted[state.name]
        return (f"[yellow]{state.name} exited with code {state.returncode} in round {progress.round + 1}: "
                f"restarted ({used} of {site_loss.restarts})[/] ({where})")
    progress.site_lost(state.name)
    if decision == "stop":
        return None
    return (f"[yellow]{state.name} lost in round {progress.round + 1} (exit code {state.returncode}); "
            f"{site_loss.left()} of {len(site_loss.collaborators)} collaborators left, {site_loss.needed} needed: "
            f"the others go on[/] ({where})")


def _below_minimum(site_loss: SiteLoss) -> str:
    if len(site_loss.lost) == 1 and site_loss.needed == len(site_loss.collaborators):
        return ""  # every site is needed (the default): nothing to add
    return (f"; lost: {', '.join(sorted(site_loss.lost))}, {site_loss.left()} left, "
            f"{site_loss.needed} needed (the plan's --min-collaborators)")


def _fail(launcher: Launcher, name: str, reason: str, progress: FederationProgress, log_start: dict[str, int]) -> None:
    launcher.stop()
    progress.update_states(launcher.states())
    raise FederationFailed(reason, hint=f"full log: {launcher.log_path(name)}", participant=name,
                           log_tail=error_excerpt(launcher.log_tail(name, 400, since=log_start.get(name, 0))))
