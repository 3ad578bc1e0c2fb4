"""`--workers N`: a federation's collaborators in N shared worker processes on this machine instead of
one process each (the aggregator keeps its own). A simulation of many sites then loads torch, GaNDLF
and OpenFL N times instead of once a site, while every site keeps its own certificate, TLS channel,
data and log (engine/shared_worker.py). The supervisor sees sites, as ever: a worker that dies loses
every site it held, each of them then handled by the site-loss policy."""

from __future__ import annotations

import sys
from pathlib import Path

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.launch.processes import ProcessFederation
from cofe_cli.launch.supervisor import ParticipantState

WORKERS_DIR = "workers"  # in the federation's folder: each worker's own output, beside the sites' logs


def check_workers(workers: int | None, collaborators: int, *, containers: bool = False) -> None:
    """`--workers` before anything is initialised or started (None: one process per collaborator)."""
    if workers is None:
        return
    if containers:
        raise CofeError("--workers does not go with --containers: every participant gets a container of its own",
                        hint="leave --workers out, or run the collaborators as processes (without --containers)")
    if workers < 1:
        raise CofeError(f"--workers must be at least 1, got {workers}",
                        hint="e.g. --workers 2 (the collaborators share two processes), or leave it out for one process each")
    if workers > collaborators:
        raise CofeError(f"--workers {workers} is more than the federation's {collaborators} collaborator(s)",
                        hint=f"give at most --workers {collaborators}, or leave it out for one process each")


def assign_sites(collaborators: list[str] | tuple[str, ...], workers: int) -> list[tuple[str, ...]]:
    """Round-robin, in the plan's order: worker k holds sites k, k+N, k+2N, ...; sizes differ by one at most."""
    return [tuple(collaborators[k::workers]) for k in range(workers)]


def worker_command(layout: FederationLayout, sites: tuple[str, ...], *, python: str | None = None,
                   device: str | None = None) -> list[str]:
    """The hidden `cofe start worker` that runs `sites` in one process: by `python -m cofe_cli` when `python`
    is given (as Participant.start_command)."""
    args = [python, "-m", "cofe_cli"] if python else []
    args += ["start", "worker", "--sites", ",".join(sites), "--dir", str(layout.root)]
    return args + (["--device", device] if device else [])


def worker_log(layout: FederationLayout, key: str) -> Path:
    return layout.root / WORKERS_DIR / f"{key}.log"


def read_exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None  # not written yet (or being replaced)


class WorkerFederation(ProcessFederation):
    """The aggregator in its own process, the collaborators in `workers` shared worker processes."""

    def __init__(self, layout: FederationLayout, manifest: Manifest, *, workers: int, restart: bool = False):
        super().__init__(layout, manifest, restart=restart)
        self.assignment = assign_sites(list(manifest.collaborators), workers)
        self._worker_of: dict[str, str] = {}  # site -> the key of the worker process running it
        self._restarted = 0

    @property
    def collaborator_processes(self) -> int:
        return len(self.assignment)

    def start(self) -> None:
        self._spawn(AGGREGATOR)
        for index, sites in enumerate(self.assignment, 1):
            self._spawn_worker(f"worker-{index}", sites)

    def restart_participant(self, name: str) -> None:
        # In a worker of its own: the other sites of the worker it left may still be running.
        self._restarted += 1
        self._spawn_worker(f"worker-{name}-{self._restarted}", (name,))

    def worker_command(self, sites: tuple[str, ...]) -> list[str]:
        return worker_command(self.layout, sites, python=sys.executable)

    def _spawn_worker(self, key: str, sites: tuple[str, ...]) -> None:
        participants = [self.layout.participant(name) for name in sites]
        for participant in participants:
            participant.exit_file.unlink(missing_ok=True)  # an earlier run's
            self._worker_of[participant.name] = key
        # Every worker trains one site at a time, all workers at once on this machine's cores.
        threads = participants[0].thread_budget(sharing=len(self.assignment))
        self._spawn_process(key, self.worker_command(sites), worker_log(self.layout, key),
                            participants[0].launch_env(threads))

    def states(self) -> dict[str, ParticipantState]:
        return site_states(self.layout, self._worker_of, super().states())


def site_states(layout: FederationLayout, worker_of: dict[str, str],
                workers: dict[str, ParticipantState]) -> dict[str, ParticipantState]:
    """Per site, as the supervisor expects, from the states of the worker processes or jobs (and the
    aggregator's, kept): a site's own exit code once its worker wrote it; a worker that ended without
    writing it (killed, crashed, cancelled) lost the site with the worker's code."""
    states = {AGGREGATOR: workers[AGGREGATOR]}
    for site, key in worker_of.items():
        worker = workers[key]
        code = read_exit_code(layout.participant(site).exit_file)
        if code is None and worker.returncode is not None:
            code = worker.returncode or 1
        states[site] = ParticipantState(name=site, returncode=code, peak_rss=worker.peak_rss)
    return states
