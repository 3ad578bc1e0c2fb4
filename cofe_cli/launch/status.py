"""What runs for a federation, whichever way it was launched, and how to stop it (`cofe status`, `cofe stop`).

Where cofe finds it:
- FED/.cofe.lock names the command that holds the federation (locks.py): `cofe run`, `cofe demo` or
  `cofe evaluate` hold it for as long as their participants run; the participants of a run without
  --containers or --slurm are its child processes (`python -m cofe_cli start ...`).
- FED/workspaces/NAME/.cofe.lock names a `cofe start` run by hand (with or without --container).
- The container engine: containers labelled with the federation's id (launch/containers.py), also
  those a killed `cofe run --containers` left running.
- FED/slurm/jobs.json: the jobs of the last `cofe run --slurm` (launch/slurm.py), also after it ended.

Stopping sends SIGTERM to the commands that hold the locks, which each stop what they launched
(processes, containers, Slurm jobs) as on a Ctrl-C; what is still running once they are gone (a
container or job whose `cofe run` was killed) is stopped directly.
"""

from __future__ import annotations

import calendar
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout
from cofe_cli.locks import TIME_FORMAT, Holder, holder_of
from cofe_cli.participant import is_aggregator

# The commands whose holding a lock means participants run; any other (init, certify, import) only
# rewrites files for a moment and is left to finish.
LAUNCHING_COMMANDS = ("run", "demo", "evaluate", "start")
STOP_WAIT = 120.0  # s: `cofe run --slurm` waits up to 60 s for Slurm to end its jobs, containers up to 10 s each
CONTAINER_STOP_GRACE = 10  # s between SIGTERM and SIGKILL for a container whose launcher is gone
ENGINE_TIMEOUT = 5  # s: a status must not hang on an engine that does not answer
LEFT_BEHIND = "none (its launcher is gone)"


class StillRunning(CofeError):
    """`cofe stop` could not stop everything: exit code 1, not 2 (the input was fine)."""

    exit_code = 1


@dataclass(frozen=True)
class Entry:
    """One participant's process, container or job."""

    participant: str
    launcher: str  # the command that started it: `cofe run`, `cofe start --container`, ... or LEFT_BEHIND
    kind: str  # pid, container or job
    ident: str  # the pid, the container's name, the job id
    state: str
    where: str  # host, container engine or Slurm node
    since: str
    active: bool  # running or about to (queued, starting): `cofe stop` stops it

    @property
    def handle(self) -> str:
        return f"{self.kind} {self.ident}"


@dataclass
class Snapshot:
    layout: FederationLayout
    holder: Holder | None = None  # of the federation's lock
    hand_started: dict[str, Holder] = field(default_factory=dict)  # participant -> its own `cofe start`
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be looked at, and why

    @property
    def running(self) -> bool:
        return self.holder is not None or bool(self.hand_started) or any(e.active for e in self.entries)


def command_of(holder: Holder) -> str:
    """`cofe run`, `cofe run --containers`, `cofe run --slurm`, `cofe start`, `cofe start --container`, ..."""
    argv = holder.argv
    if not holder.pid or len(argv) < 2:
        return "a cofe command"
    flag = next((f for f in ("--slurm", "--containers", "--container") if f in argv), None)
    return f"cofe {argv[1]}" + (f" {flag}" if flag else "")


def launches_participants(holder: Holder) -> bool:
    argv = holder.argv
    return len(argv) > 1 and argv[1] in LAUNCHING_COMMANDS


def participants_of(cmdline: list[str]) -> list[str]:
    """The participants a `cofe start` command line runs: `... start aggregator ...`, `... start collaborator NAME ...`,
    or the sites of a shared worker (`... start worker --sites A,B ...`, what `cofe run --workers` launches)."""
    for i, word in enumerate(cmdline[:-1]):
        if word == "start":
            if is_aggregator(cmdline[i + 1]):
                return [AGGREGATOR]
            if cmdline[i + 1] == "collaborator" and i + 2 < len(cmdline):
                return [cmdline[i + 2]]
            if cmdline[i + 1] == "worker" and "--sites" in cmdline[i + 2:-1]:
                return [name for name in cmdline[cmdline.index("--sites", i) + 1].split(",") if name]
    return []


def _local_time(epoch: float) -> str:
    return time.strftime(TIME_FORMAT, time.localtime(epoch))


def snapshot(layout: FederationLayout) -> Snapshot:
    found = Snapshot(layout, holder=holder_of(layout.root))
    try:
        participants = (AGGREGATOR, *layout.load_manifest().collaborators)
    except CofeError:
        if found.holder is None:
            raise  # DIR is no federation, and nothing is making one
        participants = ()  # a `cofe run --gandlf-config` initialising it
    for name in participants:
        holder = holder_of(layout.workspace(name))
        # `cofe run` holds every workspace too: only a different holder is a `cofe start` of its own.
        if holder is not None and (found.holder is None or (holder.pid, holder.host) != (found.holder.pid, found.holder.host)):
            found.hand_started[name] = holder
    if found.holder is not None and found.holder.is_here and launches_participants(found.holder):
        found.entries += _child_processes(found.holder)
    found.entries += [Entry(name, command_of(h), "pid", str(h.pid), "running", h.host, h.since, True)
                      for name, h in found.hand_started.items()]
    found.entries += _containers(found)
    found.entries += _slurm_jobs(found)
    return found


def _child_processes(holder: Holder) -> list[Entry]:
    """The `cofe start` processes a `cofe run` on this host launched."""
    entries = []
    try:
        children = psutil.Process(holder.pid).children()
    except psutil.Error:
        return []
    for child in children:
        try:
            names = participants_of(child.cmdline())
            status = child.status()
            started = child.create_time()
        except psutil.Error:
            continue  # ended meanwhile
        alive = status != psutil.STATUS_ZOMBIE
        entries += [Entry(name, command_of(holder), "pid", str(child.pid), "running" if alive else "exited",
                          holder.host, _local_time(started), alive) for name in names]
    return entries


def _engine_containers(layout: FederationLayout, notes: list[str] | None) -> list:
    """The federation's containers on the engine DOCKER_HOST names; [] when no engine answers (noted if asked)."""
    from cofe_cli.launch.containers import LABEL_FEDERATION, LABEL_ROOT, federation_id
    from cofe_cli.launch.docker_engine import engine_address

    try:
        import docker
    except ImportError:
        return []
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT)
        found = client.containers.list(all=True, filters={"label": f"{LABEL_FEDERATION}={federation_id(layout)}"})
    except docker.errors.DockerException as exc:
        if notes is not None:
            notes.append(f"no container engine answers at {engine_address()} ({str(exc).split('(', 1)[0].strip()})")
        return []
    return [c for c in found if c.labels.get(LABEL_ROOT) == str(layout.root)]


def _containers(found: Snapshot) -> list[Entry]:
    from cofe_cli.launch.containers import LABEL_PARTICIPANT
    from cofe_cli.launch.docker_engine import engine_address

    # Only a command that launches containers makes a missing engine worth a note.
    uses_engine = any("--container" in h.argv or "--containers" in h.argv
                      for h in [found.holder, *found.hand_started.values()] if h)
    entries = []
    for container in _engine_containers(found.layout, found.notes if uses_engine else None):
        name = container.labels.get(LABEL_PARTICIPANT, "?")
        state = container.attrs.get("State") or {}
        hand = found.hand_started.get(name)
        if hand is not None and "--container" in hand.argv:
            launcher = command_of(hand)
        elif found.holder is not None and "--containers" in found.holder.argv:
            launcher = command_of(found.holder)
        else:
            launcher = LEFT_BEHIND
        status = container.status
        if status in ("exited", "dead"):
            status = f"exited (code {state.get('ExitCode', '?')})"
        started = str(state.get("StartedAt") or "")
        since = ""
        if started[:4].isdigit() and not started.startswith("0001"):
            since = _local_time(calendar.timegm(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S")))  # UTC
        entries.append(Entry(name, launcher, "container", container.name, status, f"engine {engine_address()}", since,
                             container.status in ("created", "running", "restarting", "paused")))
    return entries


def _slurm_jobs(found: Snapshot) -> list[Entry]:
    """The jobs of the last `cofe run --slurm`, ended ones too (how they ended is worth seeing)."""
    from cofe_cli.launch.slurm import query_jobs, recorded_job_ids

    jobs = recorded_job_ids(found.layout)
    if not jobs:
        return []
    try:
        infos = query_jobs(list(jobs.values()))
    except CofeError as exc:
        found.notes.append(f"the Slurm jobs {', '.join(jobs.values())} could not be looked at: {exc.message}")
        return []
    launched_by = found.holder is not None and "--slurm" in found.holder.argv
    entries = []
    for name, job in jobs.items():
        info = infos.get(job)
        if info is None or info.state == "UNKNOWN":
            entries.append(Entry(name, "cofe run --slurm", "job", job, "gone (Slurm forgot it: it ended over ~5 min ago)",
                                 "-", "", False))
            continue
        if info.state == "PENDING":
            state = f"PENDING ({info.reason})" if info.reason not in ("", "None") else "PENDING"
        elif info.active:
            state = info.state
        else:
            state = f"{info.state} (exit code {info.exit_code}" + (f", signal {info.signal})" if info.signal else ")")
        since = info.start.replace("T", " ") if info.start and info.state != "PENDING" else ""
        launcher = "cofe run --slurm" if launched_by or not info.active else LEFT_BEHIND
        entries.append(Entry(name, launcher, "job", job, state, info.node or "-", since, info.active))
    return entries


# --- stopping -------------------------------------------------------------------------------------

def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended, only not yet reaped by its parent
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def stop(layout: FederationLayout, *, say: Callable[[str], None], wait: float = STOP_WAIT) -> Snapshot:
    """Stop everything of the federation that runs (see the module's docstring). Returns what was found before;
    raises StillRunning when something runs on after `wait` seconds or on another host."""
    before = snapshot(layout)
    holders = [h for h in [before.holder, *before.hand_started.values()] if h is not None]
    left: list[str] = []
    signalled: list[Holder] = []
    for holder in dict.fromkeys(holders):  # a holder of several workspaces once
        if not launches_participants(holder):
            left.append(f"{holder.describe()} is no running federation: left to finish")
        elif not holder.is_here:
            left.append(f"{command_of(holder)} (pid {holder.pid}) runs on {holder.host}, where this host cannot signal it")
        elif not holder.pid:
            left.append("a cofe command that left no record of itself holds a lock")
        else:
            try:
                os.kill(holder.pid, signal.SIGTERM)  # a Ctrl-C: it stops what it launched and ends
                signalled.append(holder)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    while any(not _gone(h.pid) for h in signalled) and time.monotonic() < deadline:
        time.sleep(0.2)
    for holder in signalled:
        if _gone(holder.pid):
            say(f"Stopped {command_of(holder)} (pid {holder.pid}, since {holder.since}).")
        else:
            left.append(f"{command_of(holder)} (pid {holder.pid}) still runs {wait:.0f} s after SIGTERM")
    _stop_left_behind(layout, say)
    after = snapshot(layout)
    still = [f"{e.participant} ({e.handle})" for e in after.entries if e.active]
    if left or still:
        detail = "; ".join(left + ([f"still running: {', '.join(still)}"] if still else []))
        remote = sorted({h.host for h in holders if not h.is_here})
        raise StillRunning(f"not everything of the federation in {layout.root} stopped: {detail}",
                           hint=f"run `cofe stop --dir {layout.root}` on {', '.join(remote)}" if remote else
                           f"`cofe status --dir {layout.root}` shows what runs; run `cofe stop` again, or end it by its pid")
    return before


def _stop_left_behind(layout: FederationLayout, say: Callable[[str], None]) -> None:
    """Containers and Slurm jobs still running once their launchers are gone (a `kill -9` of `cofe run`)."""
    from cofe_cli.launch.slurm import stop_jobs

    entries = [e for e in snapshot(layout).entries if e.active]
    names = [e.ident for e in entries if e.kind == "container"]
    for container in _engine_containers(layout, None):
        if container.name in names:
            container.stop(timeout=CONTAINER_STOP_GRACE)
            say(f"Stopped container {container.name} (kept for `docker logs {container.name}`; "
                "the next run removes it).")
    jobs = [e.ident for e in entries if e.kind == "job"]
    if jobs:
        stop_jobs(jobs)
        say(f"Cancelled Slurm job(s) {', '.join(jobs)}.")
