"""The one place that decides how a federation's participants are launched: processes (the default),
containers (`--containers`) or Slurm jobs (`--slurm`). `cofe run`, `cofe demo` and `cofe evaluate` all
come here, so the three launchers behave the same whichever command starts them."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Callable

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest


@dataclass(frozen=True)
class ContainerOptions:
    """`--containers`: every participant in a container of `image` (None: cofe:VERSION)."""

    image: str | None = None
    gpus: str | None = None


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise CofeError(f"--timeout must be a positive number of seconds, got {timeout:g}",
                        hint="e.g. --timeout 3600, or leave it out to wait until the federation ends")


MAX_RESTARTS = 100  # above this a value is a typo: a site that died 100 times will not be helped by more


def check_restarts(restarts: int) -> None:
    if not 0 <= restarts <= MAX_RESTARTS:
        raise CofeError(f"--restarts must be between 0 and {MAX_RESTARTS}, got {restarts}",
                        hint="e.g. --restarts 2 (a collaborator that dies is started again at most twice)")


def container_options_of(containers: bool, *, image: str | None, gpus: str | None) -> ContainerOptions | None:
    if (image is not None or gpus is not None) and not containers:
        raise CofeError("--image and --gpus go with --containers", hint="add --containers, or leave them out")
    return ContainerOptions(image=image, gpus=gpus) if containers else None


def slurm_options_of(slurm: bool, containers: bool, **given):
    """The --slurm options, checked before anything is initialised or submitted (None without --slurm)."""
    from cofe_cli.launch.slurm import SlurmOptions

    options = SlurmOptions(**given)
    if not slurm:
        if options != SlurmOptions():
            raise CofeError("--partition, --account, --time, --mem-per-site, --cpus-per-site, --gpus-per-site and "
                            "--sbatch-arg go with --slurm", hint="add --slurm, or leave them out")
        return None
    if containers:
        raise CofeError("--slurm and --containers do not go together", hint="pick one")
    return options.validate()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_ctrl_c() -> None:
    """From now on a `kill` (SIGTERM, what `cofe stop` and launchers send) ends this process the way a
    Ctrl-C does, through its KeyboardInterrupt handling: whatever it started is stopped and reported."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def make_launcher(layout: FederationLayout, manifest: Manifest, *, containers: ContainerOptions | None = None,
                  slurm=None, restart: bool = False, workers: int | None = None, say: Callable[[str], None]):
    """A launcher for every participant of `manifest`, its checks done, with a line saying what it starts."""
    endpoint = f"gRPC with mutual TLS on {manifest.aggregator_address}:{manifest.aggregator_port}"
    count = len(manifest.collaborators)
    if slurm:
        from cofe_cli.launch.slurm import SlurmFederation

        launcher = SlurmFederation(layout, manifest, options=slurm, restart=restart, say=say, workers=workers)
        launcher.check()
        for note in launcher.notes:
            say(note)
        # Jobs do not die with this process: a `kill` of the command must cancel them like a Ctrl-C.
        sigterm_as_ctrl_c()
        shared = f", the collaborators in {workers} shared worker job(s)" if workers else ""
        say(f"Submitting the aggregator and {count} collaborator(s) as Slurm jobs{shared} ({endpoint}; "
            f"scripts in {layout.root / 'slurm'})...")
        return launcher
    if containers:
        from cofe_cli.launch.containers import ContainerFederation, network_name
        from cofe_cli.launch.docker_engine import DEFAULT_IMAGE

        image = containers.image or DEFAULT_IMAGE
        launcher = ContainerFederation(layout, manifest, image=image, gpus=containers.gpus)
        # Containers do not die with this process as child processes do: a `kill` of the command must
        # stop and remove them like a Ctrl-C.
        sigterm_as_ctrl_c()
        say(f"Starting the aggregator and {count} collaborator(s) in containers of {image} on network "
            f"{network_name(layout)} ({endpoint})...")
        return launcher
    from cofe_cli.launch.processes import ProcessFederation
    from cofe_cli.ports import check_port_free

    check_port_free(manifest.aggregator_port)
    # The participants would die with this process, but a `kill` (`cofe stop`) must end it like a Ctrl-C:
    # each participant's process group stopped, and the run's end reported.
    sigterm_as_ctrl_c()
    if workers:
        from cofe_cli.launch.workers import WorkerFederation

        say(f"Starting the aggregator as its own process and {count} collaborator(s) in {workers} shared worker "
            f"process(es), each site with its own certificate ({endpoint})...")
        return WorkerFederation(layout, manifest, workers=workers, restart=restart)
    say(f"Starting the aggregator and {count} collaborator(s) as separate processes ({endpoint})...")
    return ProcessFederation(layout, manifest)
