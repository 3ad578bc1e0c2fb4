"""`cofe run`: the whole federation on this machine, every participant its own process."""

from __future__ import annotations

from pathlib import Path

import typer

from cofe_cli.commands import launch_options as options
from cofe_cli.commands.reports import report_finished, report_prepared
from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.init_pipeline import DEFAULT_PORT, InitRequest
from cofe_cli.launch.factory import check_restarts, check_timeout, container_options_of, slurm_options_of
from cofe_cli.launch.federation_run import prepare, run_federation
from cofe_cli.launch.workers import check_workers
from cofe_cli.locks import federation_locked
from cofe_cli.plan.builder import ALGORITHMS, validation_options


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
    validation_batch: str = options.VALIDATION_BATCH,
    local_validation: str = options.LOCAL_VALIDATION,
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
    min_collaborators: int = typer.Option(None, "--min-collaborators", help="As for `cofe init`."),
    round_timeout: str = typer.Option(None, "--round-timeout", help="As for `cofe init`."),
    restarts: int = typer.Option(0, "--restarts", help="Restart a collaborator that dies at most this many times (it rejoins from the next round)."),
    workers: int = options.WORKERS,
) -> None:
    """Run the whole federation here: aggregator and collaborators as separate processes (or containers), live progress, a report."""
    check_timeout(timeout)
    check_restarts(restarts)
    layout = FederationLayout(dir)
    request = None
    if gandlf_config or collaborator:
        if not (gandlf_config and collaborator):
            raise CofeError("--gandlf-config and --collaborator go together", hint="give both, or neither to use an existing federation")
        validation_options(validation_batch, local_validation)  # before the lock makes --dir
        address = aggregator_address or ("aggregator" if containers else "localhost")
        request = InitRequest(gandlf_config=gandlf_config, collaborators=collaborator, rounds=rounds, port=port,
                              algorithm=algorithm, aggregator_address=address,
                              min_collaborators=min_collaborators, round_timeout=round_timeout,
                              validation_batch=validation_batch, local_validation=local_validation)
    container_options = container_options_of(containers, image=image, gpus=gpus)
    slurm_options = slurm_options_of(slurm, containers, partition=partition, account=account, time=time_limit,
                                     mem_per_site=mem_per_site, cpus_per_site=cpus_per_site,
                                     gpus_per_site=gpus_per_site, sbatch_args=tuple(sbatch_arg or ()))
    if request is None or layout.is_initialised():
        # No federation and nothing to make one from: say so before a lock makes --dir.
        sites = len(layout.load_manifest().collaborators)
    else:
        sites = len(request.collaborators)
    check_workers(workers, sites, containers=containers)
    with federation_locked(layout):  # from before init and certify, which it may do first
        prepared = prepare(layout, request)
        report_prepared(layout, prepared)
        report_finished(run_federation(layout, prepared.manifest, console=console, restart=restart, timeout=timeout,
                                       containers=container_options, slurm=slurm_options, restarts=restarts,
                                       workers=workers))
