"""`cofe run`: the whole federation on this machine, every participant its own process."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cofe_cli.commands import launch_options as options
from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.events import read_events
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.locks import federation_locked
from cofe_cli.launch.factory import ContainerOptions, check_restarts, check_timeout, container_options_of, slurm_options_of
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


def run_federation(layout: FederationLayout, manifest: Manifest, *, restart: bool = False, timeout: float | None = None,
                   containers: ContainerOptions | None = None, slurm=None, restarts: int = 0):
    # Held until the report is written; the participants' `cofe start` know that through launched_env().
    with federation_locked(layout):
        return _run_federation(layout, manifest, restart=restart, timeout=timeout, containers=containers, slurm=slurm,
                               restarts=restarts)


def _run_federation(layout: FederationLayout, manifest: Manifest, *, restart: bool, timeout: float | None,
                    containers: ContainerOptions | None, slurm, restarts: int = 0):
    from cofe_cli.launch.factory import make_launcher
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
    launcher = make_launcher(layout, manifest, containers=containers, slurm=slurm, restart=restart, say=console.print)
    started = time.monotonic()
    progress = supervise(launcher, layout, manifest, console=console, timeout=timeout, restarts=restarts)
    results = write_results(layout, progress)
    console.print(summary_table(progress))
    console.print(f"[green]Federation finished[/] in {time.monotonic() - started:.0f} s. Results in {results}: "
                  "metrics.csv, metrics.png, summary.json, final_model.pt, best_model.pt, gandlf_model/")
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
    containers: bool = options.CONTAINERS,
    image: str = options.IMAGE,
    gpus: str = options.GPUS,
    slurm: bool = options.SLURM,
    partition: str = options.PARTITION,
    account: str = options.ACCOUNT,
    time_limit: str = options.TIME_LIMIT,
    mem_per_site: str = options.MEM_PER_SITE,
    cpus_per_site: int = options.CPUS_PER_SITE,
    gpus_per_site: int = options.GPUS_PER_SITE,
    sbatch_arg: list[str] = options.SBATCH_ARG,
    restarts: int = typer.Option(0, "--restarts", help="Restart a collaborator that dies at most this many times (it rejoins from the next round)."),
) -> None:
    """Run the whole federation here: aggregator and collaborators as separate processes (or containers), live progress, a report."""
    check_timeout(timeout)
    check_restarts(restarts)
    layout = FederationLayout(dir)
    request = None
    if gandlf_config or collaborator:
        if not (gandlf_config and collaborator):
            raise CofeError("--gandlf-config and --collaborator go together", hint="give both, or neither to use an existing federation")
        address = aggregator_address or ("aggregator" if containers else "localhost")
        request = InitRequest(gandlf_config=gandlf_config, collaborators=collaborator, rounds=rounds, port=port,
                              algorithm=algorithm, aggregator_address=address)
    container_options = container_options_of(containers, image=image, gpus=gpus)
    slurm_options = slurm_options_of(slurm, containers, partition=partition, account=account, time=time_limit,
                                     mem_per_site=mem_per_site, cpus_per_site=cpus_per_site,
                                     gpus_per_site=gpus_per_site, sbatch_args=tuple(sbatch_arg or ()))
    if request is None:
        layout.load_manifest()  # no federation and nothing to make one from: say so before a lock makes --dir
    with federation_locked(layout):  # from before init and certify, which it may do first
        run_federation(layout, prepare(layout, request), restart=restart, timeout=timeout,
                       containers=container_options, slurm=slurm_options, restarts=restarts)
