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


def check_workers(workers: int | None, collaborators: int, *, containers: bool = False, slurm: bool = False) -> None:
    """`--workers` before anything is initialised or started (None: one process per collaborator)."""
    if workers is None:
        return
    if slurm:
        raise CofeError("--workers does not go with --slurm yet: every collaborator is a Slurm job of its own",
                        hint="leave --workers out, or run the shared workers on this machine (without --slurm)")
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
        """The hidden `cofe start worker` that runs `sites` in one process, run by this same Python."""
        return [sys.executable, "-m", "cofe_cli", "start", "worker", "--sites", ",".join(sites), "--dir", str(self.layout.root)]

    def _spawn_worker(self, key: str, sites: tuple[str, ...]) -> None:
        participants = [self.layout.participant(name) for name in sites]
        for participant in participants:
            participant.exit_file.unlink(missing_ok=True)  # an earlier run's
            self._worker_of[participant.name] = key
        # Every worker trains one site at a time, all workers at once on this machine's cores.
        threads = participants[0].thread_budget(sharing=len(self.assignment))
        self._spawn_process(key, self.worker_command(sites),
                            self.layout.root / WORKERS_DIR / f"{key}.log", participants[0].launch_env(threads))

    def states(self) -> dict[str, ParticipantState]:
        """Per site, as the supervisor expects: a site's own exit code once its worker wrote it; a worker that
        ended without writing it (killed, crashed) lost the site with the worker's code."""
        processes = super().states()
        states = {AGGREGATOR: processes[AGGREGATOR]}
        for site, key in self._worker_of.items():
            worker = processes[key]
            code = read_exit_code(self.layout.participant(site).exit_file)
            if code is None and worker.returncode is not None:
                code = worker.returncode or 1
            states[site] = ParticipantState(name=site, returncode=code, peak_rss=worker.peak_rss)
        return states
