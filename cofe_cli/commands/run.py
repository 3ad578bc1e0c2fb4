"""`cofe run`: the whole federation on this machine, every participant its own process."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.events import read_events
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.locks import federation_locked
from cofe_cli.ports import check_port_free
from cofe_cli.pki.local_issuing import certify_locally
from cofe_cli.pki.workspace_certs import participant_cert_paths
from cofe_cli.plan.builder import ALGORITHMS
from cofe_cli.commands.init import DEFAULT_PORT, InitRequest, initialise, report_initialised
from cofe_cli.commands.start import clear_aggregator_state, prepare_collaborator_data


def prepare(layout: FederationLayout, request: InitRequest | None) -> Manifest:
    """Init and certify when they have not happened yet, so one command takes a user all the way."""
    if not layout.is_initialised():
        if request is None:
            raise CofeError(f"no federation in {layout.root}",
                            hint="run `cofe init` first, or give `cofe run` --gandlf-config and --collaborator too")
        report_initialised(layout, initialise(layout, request), next_steps=False)
    elif request is not None:
        console.print(f"Using the federation already in {layout.root} (`cofe init --force` replaces it).")
    manifest = layout.load_manifest()
    participants = (AGGREGATOR, *manifest.collaborators)
    if not all(participant_cert_paths(layout, manifest, p).present() for p in participants):
        certify_locally(layout, manifest)
        console.print("Certificates issued from this federation's own CA (one party runs every participant).")
    return manifest


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise CofeError(f"--timeout must be a positive number of seconds, got {timeout:g}",
                        hint="e.g. --timeout 3600, or leave it out to wait until the federation ends")


@dataclass(frozen=True)
class ContainerOptions:
    """`--containers`: every participant in a container of `image` (None: cofe:VERSION)."""

    image: str | None = None
    gpus: str | None = None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_federation(layout: FederationLayout, manifest: Manifest, *, restart: bool = False, timeout: float | None = None,
                   containers: ContainerOptions | None = None, slurm=None):
    # Held until the report is written; the participants' `cofe start` know that through launched_env().
    with federation_locked(layout):
        return _run_federation(layout, manifest, restart=restart, timeout=timeout, containers=containers, slurm=slurm)


def _run_federation(layout: FederationLayout, manifest: Manifest, *, restart: bool, timeout: float | None,
                    containers: ContainerOptions | None, slurm):
    from cofe_cli.launch.report import summary_table, write_results
    from cofe_cli.launch.supervisor import supervise

    events = layout.workspace(AGGREGATOR) / "logs" / "events.jsonl"
    if not restart and any(e.get("event") == "finished" for e in read_events(events)):
        raise CofeError(f"this federation already finished all {manifest.rounds} rounds (results in {layout.results})",
                        hint="pass --restart to train again from round 0")
    if restart:
        clear_aggregator_state(layout)
    for name in manifest.collaborators:
        prepare_collaborator_data(layout, name, None)
    if slurm:
        from cofe_cli.launch.slurm import SlurmFederation

        launcher = SlurmFederation(layout, manifest, options=slurm, restart=restart, say=console.print)
        launcher.check()
        for note in launcher.notes:
            console.print(note)
        # Jobs do not die with this process: a `kill` of `cofe run` must cancel them like a Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        console.print(f"Submitting the aggregator and {len(manifest.collaborators)} collaborator(s) as Slurm jobs "
                      f"(gRPC with mutual TLS on {manifest.aggregator_address}:{manifest.aggregator_port}; "
                      f"scripts in {layout.root / 'slurm'})...")
    elif containers:
        from cofe_cli.launch.containers import ContainerFederation, network_name
        from cofe_cli.launch.docker_engine import DEFAULT_IMAGE

        image = containers.image or DEFAULT_IMAGE
        launcher = ContainerFederation(layout, manifest, image=image, gpus=containers.gpus)
        # Containers do not die with this process as child processes do: a `kill` of `cofe run` must
        # stop and remove them like a Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        console.print(f"Starting the aggregator and {len(manifest.collaborators)} collaborator(s) in containers of {image} "
                      f"on network {network_name(layout)} (gRPC with mutual TLS on {manifest.aggregator_address}:{manifest.aggregator_port})...")
    else:
        from cofe_cli.launch.processes import ProcessFederation

        check_port_free(manifest.aggregator_port)
        launcher = ProcessFederation(layout, manifest)
        console.print(f"Starting the aggregator and {len(manifest.collaborators)} collaborator(s) as separate processes "
                      f"(gRPC with mutual TLS on {manifest.aggregator_address}:{manifest.aggregator_port})...")
    started = time.monotonic()
    progress = supervise(launcher, layout, manifest, console=console, timeout=timeout)
    results = write_results(layout, progress)
    console.print(summary_table(progress))
    console.print(f"[green]Federation finished[/] in {time.monotonic() - started:.0f} s. Results in {results}: "
                  "metrics.csv, metrics.png, summary.json, final_model.pt, best_model.pt")
    return progress


def run(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory."),
    restart: bool = typer.Option(False, "--restart", help="Discard the aggregator's saved state and train from round 0."),
    timeout: float = typer.Option(None, "--timeout", help="Stop everything if the federation is not done after this many seconds."),
    gandlf_config: Path = typer.Option(None, "--gandlf-config", "-c", help="With --collaborator: run `cofe init` first if needed."),
    collaborator: list[str] = typer.Option(None, "--collaborator", "-C", help="As for `cofe init`."),
    rounds: int = typer.Option(3, "--rounds", "-r", help="As for `cofe init`."),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="As for `cofe init`."),
    algorithm: str = typer.Option("fedavg", "--algorithm", help=f"As for `cofe init`: {', '.join(ALGORITHMS)}."),
    aggregator_address: str = typer.Option(None, "--aggregator-address", help="As for `cofe init` (default: localhost, or aggregator with --containers)."),
    containers: bool = typer.Option(False, "--containers", help="Every participant in a container of cofe's image, on one bridge network."),
    image: str = typer.Option(None, "--image", help="With --containers: the image (default: cofe:VERSION, see `cofe image build`)."),
    gpus: str = typer.Option(None, "--gpus", help="With --containers: GPUs for the collaborators (all, a count, or device=0,1)."),
    slurm: bool = typer.Option(False, "--slurm", help="Every participant as a job of a Slurm cluster (FED on a filesystem all nodes share)."),
    partition: str = typer.Option(None, "--partition", help="With --slurm: the partition (default: the cluster's)."),
    account: str = typer.Option(None, "--account", help="With --slurm: the account to charge."),
    time_limit: str = typer.Option(None, "--time", help="With --slurm: each job's time limit, e.g. 02:00:00."),
    mem_per_site: str = typer.Option(None, "--mem-per-site", help="With --slurm: memory of each job, e.g. 4G."),
    cpus_per_site: int = typer.Option(1, "--cpus-per-site", help="With --slurm: CPUs of each collaborator's job (also its OMP_NUM_THREADS)."),
    gpus_per_site: int = typer.Option(None, "--gpus-per-site", help="With --slurm: GPUs of each collaborator's job (it then trains on cuda)."),
    sbatch_arg: list[str] = typer.Option(None, "--sbatch-arg", help="With --slurm: one more sbatch option, e.g. --sbatch-arg=--qos=high (repeatable)."),
) -> None:
    """Run the whole federation here: aggregator and collaborators as separate processes (or containers), live progress, a report."""
    check_timeout(timeout)
    layout = FederationLayout(dir)
    check_timeout(timeout)
    request = None
    if gandlf_config or collaborator:
        if not (gandlf_config and collaborator):
            raise CofeError("--gandlf-config and --collaborator go together", hint="give both, or neither to use an existing federation")
        address = aggregator_address or ("aggregator" if containers else "localhost")
        request = InitRequest(gandlf_config=gandlf_config, collaborators=collaborator, rounds=rounds, port=port,
                              algorithm=algorithm, aggregator_address=address)
    if (image is not None or gpus is not None) and not containers:
        raise CofeError("--image and --gpus go with --containers", hint="add --containers, or leave them out")
    slurm_options = slurm_options_of(slurm, containers, partition=partition, account=account, time=time_limit,
                                     mem_per_site=mem_per_site, cpus_per_site=cpus_per_site,
                                     gpus_per_site=gpus_per_site, sbatch_args=tuple(sbatch_arg or ()))
    with federation_locked(layout):  # from before init and certify, which it may do first
        run_federation(layout, prepare(layout, request), restart=restart, timeout=timeout,
                       containers=ContainerOptions(image=image, gpus=gpus) if containers else None, slurm=slurm_options)


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
