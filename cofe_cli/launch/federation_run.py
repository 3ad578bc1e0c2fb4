"""A whole federation trained from this machine, whatever launches its participants (processes,
containers or Slurm jobs, chosen in `factory.py`): what `cofe run` and `cofe demo` share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from cofe_cli.errors import CofeError
from cofe_cli.events import read_events
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.init_pipeline import InitRequest, Initialised, initialise
from cofe_cli.launch.factory import ContainerOptions, make_launcher
from cofe_cli.locks import federation_locked
from cofe_cli.pki.local_issuing import certify_locally
from cofe_cli.pki.workspace_certs import participant_cert_paths
from cofe_cli.plan.workspaces import clear_aggregator_state, prepare_collaborator_data

if TYPE_CHECKING:  # not imported for `cofe --help`
    from cofe_cli.launch.progress import FederationProgress


@dataclass
class Prepared:
    """A federation ready to run here, and what it took."""

    manifest: Manifest
    initialised: Initialised | None  # made now from the request; None: it was there already
    kept_existing: bool  # a request was given, but the federation already there is used
    certified: bool  # certificates were issued now from the federation's own CA


def prepare(layout: FederationLayout, request: InitRequest | None) -> Prepared:
    """Init and certify when they have not happened yet, so one command takes a user all the way."""
    initialised = None
    if not layout.is_initialised():
        if request is None:
            raise CofeError(f"no federation in {layout.root}",
                            hint="run `cofe init` first, or give `cofe run` --gandlf-config and --collaborator too")
        initialised = initialise(layout, request)
    manifest = layout.load_manifest()
    certified = not all(participant_cert_paths(layout, manifest, p).present() for p in manifest.participant_names())
    if certified:
        certify_locally(layout, manifest)
    return Prepared(manifest, initialised, initialised is None and request is not None, certified)


@dataclass(frozen=True)
class FinishedRun:
    progress: FederationProgress
    results: Path
    seconds: float


def run_federation(layout: FederationLayout, manifest: Manifest, *, console: Console, restart: bool = False,
                   timeout: float | None = None, containers: ContainerOptions | None = None, slurm=None,
                   restarts: int = 0, workers: int | None = None) -> FinishedRun:
    """Launch every participant, follow the federation on `console` until it ends, and write its results."""
    # Held until the report is written; the participants' `cofe start` know that through launched_env().
    with federation_locked(layout):
        return _run_federation(layout, manifest, console=console, restart=restart, timeout=timeout,
                               containers=containers, slurm=slurm, restarts=restarts, workers=workers)


def _run_federation(layout: FederationLayout, manifest: Manifest, *, console: Console, restart: bool,
                    timeout: float | None, containers: ContainerOptions | None, slurm, restarts: int,
                    workers: int | None) -> FinishedRun:
    from cofe_cli.launch.report import write_results
    from cofe_cli.launch.supervisor import supervise

    events = layout.aggregator().events_file
    if not restart and any(e.get("event") == "finished" for e in read_events(events)):
        raise CofeError(f"this federation already finished all {manifest.rounds} rounds (results in {layout.results})",
                        hint="pass --restart to train again from round 0")
    if restart:
        clear_aggregator_state(layout)
    for name in manifest.collaborators:
        prepare_collaborator_data(layout, name, None)
    launcher = make_launcher(layout, manifest, containers=containers, slurm=slurm, restart=restart, workers=workers,
                             say=console.print)
    started = time.monotonic()
    progress = supervise(launcher, layout, manifest, console=console, timeout=timeout, restarts=restarts)
    results = write_results(layout, progress)
    return FinishedRun(progress, results, time.monotonic() - started)
