"""`cofe init`: a GaNDLF config plus the sites' data become an OpenFL plan and one workspace per participant.

The pipeline itself is cofe_cli/init_pipeline.py; this module parses the options and prints the outcome."""

from __future__ import annotations

from pathlib import Path

import typer

from cofe_cli.commands import launch_options as options
from cofe_cli.commands.reports import report_initialised
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.init_pipeline import DEFAULT_PORT, InitRequest, collaborators_from_folder, initialise
from cofe_cli.plan.builder import ALGORITHMS


def init(
    gandlf_config: Path = typer.Option(..., "--gandlf-config", "-c", help="GaNDLF training config (YAML).", show_default=False),
    collaborator: list[str] = typer.Option(
        None, "--collaborator", "-C", show_default=False,
        help="NAME=FOLDER (with GaNDLF train.csv/valid.csv), NAME=FILE.csv (split by subject), or NAME (data given at the site). Repeat per site.",
    ),
    sites_from: Path = typer.Option(
        None, "--sites-from", show_default=False,
        help="Instead of --collaborator: one collaborator per sub-folder of this folder (its name; its train.csv/valid.csv), e.g. `cofe data split`'s --out.",
    ),
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory."),
    rounds: int = typer.Option(3, "--rounds", "-r", help="Federated rounds to train (1-10000)."),
    aggregator_address: str = typer.Option("localhost", "--aggregator-address", "-a", help="DNS name or IP that collaborators dial (goes into the server certificate)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Aggregator TCP port."),
    algorithm: str = typer.Option("fedavg", "--algorithm", help=f"Aggregation: {', '.join(ALGORITHMS)}."),
    proximal_mu: float = typer.Option(None, "--proximal-mu", help="FedProx mu (default 0.01 with --algorithm fedprox)."),
    device: str = typer.Option("cpu", "--device", help="Training device in the plan: cpu, cuda or cuda:N."),
    epochs_per_round: int = typer.Option(1, "--epochs-per-round", help="Local epochs each round."),
    validation_norm: str = typer.Option("input", "--validation-norm", help="Instance-norm statistics when validating: input (each volume's own) or running (GaNDLF's averages; unreliable across sites)."),
    validation_batch: str = options.VALIDATION_BATCH,
    local_validation: str = options.LOCAL_VALIDATION,
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", help="Validation share when a site gives a single CSV."),
    force: bool = typer.Option(False, "--force", help="Replace an existing plan and workspaces (the CA is kept)."),
    min_collaborators: int = typer.Option(None, "--min-collaborators", help="Sites a round needs once --round-timeout passed (default: all); fewer left, and the federation stops."),
    round_timeout: str = typer.Option(None, "--round-timeout", help="How long a round waits for every site, e.g. 90s, 20m (at least 10s; default 20m with --min-collaborators)."),
    max_epsilon: float = typer.Option(None, "--max-epsilon", help="With differential_privacy in the GaNDLF config: a site whose spent epsilon would pass this stops training (it still validates)."),
    secure_aggregation: bool = typer.Option(False, "--secure-aggregation", help="Refused: OpenFL 1.9's aggregator reconstructs every site's secrets during set-up."),
) -> None:
    """Make the OpenFL plan (plans/) and one workspace per participant (workspaces/)."""
    layout = FederationLayout(dir)
    if sites_from is not None:
        if collaborator:
            raise CofeError("--sites-from and --collaborator are two ways to give the sites: give one",
                            hint="drop --collaborator to take one site per sub-folder of --sites-from, or drop --sites-from")
        collaborator = collaborators_from_folder(sites_from)
    initialised = initialise(layout, InitRequest(
        gandlf_config=gandlf_config, collaborators=collaborator or [], rounds=rounds, aggregator_address=aggregator_address,
        port=port, algorithm=algorithm, proximal_mu=proximal_mu, device=device, epochs_per_round=epochs_per_round,
        validation_norm=validation_norm, validation_batch=validation_batch, local_validation=local_validation,
        valid_fraction=valid_fraction, force=force,
        min_collaborators=min_collaborators, round_timeout=round_timeout, max_epsilon=max_epsilon,
        secure_aggregation=secure_aggregation,
    ))
    report_initialised(layout, initialised)
