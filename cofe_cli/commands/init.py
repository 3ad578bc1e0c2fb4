"""`cofe init`: a GaNDLF config plus the sites' data become an OpenFL plan and one workspace per participant."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import typer
from rich.markup import escape

from cofe_cli import __version__
from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, file_sha384, parse_site_arguments, plan_hash
from cofe_cli.fsutil import writing_into
from cofe_cli.locks import federation_locked
from cofe_cli.plan.builder import ALGORITHMS, PlanOptions, build_plan, check_plan_options, dump_yaml, site_loss_policy
from cofe_cli.plan.data import check_data_folder, expectations_of, split_csv
from cofe_cli.plan.gandlf_config import load_gandlf_yaml, normalise_gandlf_config_with_notes
from cofe_cli.plan.workspaces import INIT_MODEL, CollaboratorData, build_federation, write_manifest

DEFAULT_PORT = 50051


@dataclass
class InitRequest:
    gandlf_config: Path
    collaborators: list[str]
    rounds: int = 3
    aggregator_address: str = "localhost"
    port: int = DEFAULT_PORT
    algorithm: str = "fedavg"
    proximal_mu: float | None = None
    device: str = "cpu"
    epochs_per_round: int = 1
    validation_norm: str = "input"
    valid_fraction: float = 0.2
    force: bool = False
    name: str | None = None
    min_collaborators: int | None = None
    round_timeout: str | None = None


def parse_collaborator_args(values: list[str]) -> list[tuple[str, Path | None]]:
    if not values:
        raise CofeError("no collaborators given", hint="add --collaborator NAME=DATA for every site (at least one)")
    return parse_site_arguments(values)


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise CofeError(f"{package} is not installed in this Python environment",
                        hint="install cofe with its dependencies: `pip install .` in the cofe repository") from None


def initialise(layout: FederationLayout, request: InitRequest) -> Manifest:
    """Everything cheap is checked first; GaNDLF and OpenFL then check the staged result, and only
    a federation that passed all checks replaces what is on disk."""
    gandlf_version = _installed("gandlf")
    gandlf_config, changes = normalise_gandlf_config_with_notes(load_gandlf_yaml(Path(request.gandlf_config)),
                                                                gandlf_version=gandlf_version)
    collaborators = parse_collaborator_args(request.collaborators)
    min_collaborators, round_timeout = site_loss_policy(request.min_collaborators, request.round_timeout, len(collaborators))
    options = PlanOptions(
        rounds=request.rounds, aggregator_address=request.aggregator_address, aggregator_port=request.port,
        algorithm=request.algorithm, proximal_mu=request.proximal_mu, device=request.device,
        epochs_per_round=request.epochs_per_round, instance_norm_statistics=request.validation_norm,
        min_collaborators=min_collaborators, round_timeout_seconds=round_timeout,
    )
    check_plan_options(options)
    if not 0 < request.valid_fraction < 1:
        raise CofeError(f"--valid-fraction must be between 0 and 1, got {request.valid_fraction}", hint="e.g. --valid-fraction 0.2")
    expected = expectations_of(gandlf_config)
    notes = [note for name, data in collaborators if data is not None and not data.is_file()
             for note in check_data_folder(data, **expected).notes]

    plan_yaml = dump_yaml(build_plan(gandlf_config, options))
    manifest = Manifest(
        name=request.name or layout.root.name, collaborators=tuple(name for name, _ in collaborators),
        rounds=request.rounds, aggregator_address=request.aggregator_address, aggregator_port=request.port,
        algorithm=request.algorithm, plan_sha384=plan_hash(plan_yaml),
        min_collaborators=min_collaborators, round_timeout_seconds=round_timeout,
        versions={"cofe": __version__, "openfl": _installed("openfl"), "gandlf": gandlf_version, "torch": _installed("torch")},
    )

    with writing_into(layout.root), federation_locked(layout):  # refused while a run or a participant uses it
        if layout.is_initialised() and not request.force:
            raise CofeError(f"{layout.root} already holds a federation",
                            hint="pass --force to replace its plan and workspaces (its CA is kept)")
        manifest, split_notes = _build_and_swap_in(layout, request, gandlf_config, plan_yaml, manifest, collaborators,
                                                   expected)
    notes += split_notes
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if changes:
        console.print(f"Adapted the GaNDLF config for GaNDLF {gandlf_version} (saved as plans/gandlf_config.yaml):")
        for change in changes:
            console.print(f"  - {change}", markup=False)
    return manifest


def _build_and_swap_in(layout: FederationLayout, request: InitRequest, gandlf_config: dict, plan_yaml: str,
                       manifest: Manifest, collaborators: list[tuple[str, Path | None]],
                       expected: dict) -> tuple[Manifest, list[str]]:
    """Build the federation in a staging folder inside --dir, have GaNDLF and OpenFL check it, then swap it in.
    Returns the manifest (with the initial model's hash) and the notes on the sites' data that a split CSV gave."""
    stage = FederationLayout(Path(tempfile.mkdtemp(prefix=".cofe-init-", dir=layout.root)))
    notes = []
    try:
        data_entries = []
        for name, data in collaborators:
            if data is not None and data.is_file():
                # A single CSV is split by subject into the site's workspace; absolute paths keep it valid after the move.
                notes += split_csv(data, stage.workspace(name) / "data", valid_fraction=request.valid_fraction,
                                   **expected).notes
                data = layout.workspace(name) / "data"
            data_entries.append(CollaboratorData(name, data.resolve() if data else None))
        build_federation(stage, plan_yaml, gandlf_config, manifest, data_entries)
        with console.status("Checking with GaNDLF and OpenFL and building the initial model (first run imports torch)..."):
            from cofe_cli.engine.gandlf_validation import validate_with_gandlf
            from cofe_cli.engine.participant import check_plan, quiet, write_initial_model

            with quiet():
                validate_with_gandlf(gandlf_config)
                check_plan(stage.workspace(AGGREGATOR))
                write_initial_model(stage.workspace(AGGREGATOR), stage.plans / INIT_MODEL)
        # The weights are part of the federation's identity: their hash goes into the fingerprint read back.
        manifest = replace(manifest, init_model_sha384=file_sha384(stage.plans / INIT_MODEL))
        write_manifest(stage, manifest)
        shutil.copyfile(stage.plans / INIT_MODEL, stage.workspace(AGGREGATOR) / "save" / INIT_MODEL)
        _swap_in(stage, layout)
    finally:
        shutil.rmtree(stage.root, ignore_errors=True)
    return manifest, notes


def _swap_in(stage: FederationLayout, layout: FederationLayout) -> None:
    for part in ("plans", "workspaces"):
        new, current = stage.root / part, layout.root / part
        if current.exists():
            os.replace(current, stage.root / f"{part}.replaced")
        os.replace(new, current)


def init(
    gandlf_config: Path = typer.Option(..., "--gandlf-config", "-c", help="GaNDLF training config (YAML).", show_default=False),
    collaborator: list[str] = typer.Option(
        ..., "--collaborator", "-C", show_default=False,
        help="NAME=FOLDER (with GaNDLF train.csv/valid.csv), NAME=FILE.csv (split by subject), or NAME (data given at the site). Repeat per site.",
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
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", help="Validation share when a site gives a single CSV."),
    force: bool = typer.Option(False, "--force", help="Replace an existing plan and workspaces (the CA is kept)."),
    min_collaborators: int = typer.Option(None, "--min-collaborators", help="Sites a round needs once --round-timeout passed (default: all); fewer left, and the federation stops."),
    round_timeout: str = typer.Option(None, "--round-timeout", help="How long a round waits for every site, e.g. 90s, 20m (at least 10s; default 20m with --min-collaborators)."),
) -> None:
    """Make the OpenFL plan (plans/) and one workspace per participant (workspaces/)."""
    layout = FederationLayout(dir)
    manifest = initialise(layout, InitRequest(
        gandlf_config=gandlf_config, collaborators=collaborator, rounds=rounds, aggregator_address=aggregator_address,
        port=port, algorithm=algorithm, proximal_mu=proximal_mu, device=device, epochs_per_round=epochs_per_round,
        validation_norm=validation_norm, valid_fraction=valid_fraction, force=force,
        min_collaborators=min_collaborators, round_timeout=round_timeout,
    ))
    report_initialised(layout, manifest)


def report_initialised(layout: FederationLayout, manifest: Manifest, *, next_steps: bool = True) -> None:
    console.print(f"[green]Federation ready[/] in {layout.root}: {len(manifest.collaborators)} collaborator(s), "
                  f"{manifest.rounds} round(s), aggregator {manifest.aggregator_address}:{manifest.aggregator_port}, "
                  f"plan sha384 {manifest.plan_sha384[:16]}...")
    if manifest.min_collaborators is not None:
        console.print(f"A round closes with at least {manifest.min_collaborators} of {len(manifest.collaborators)} "
                      f"site(s) once {manifest.round_timeout_seconds:g} s passed; with fewer left, the federation stops.")
    if next_steps:
        console.print(f"Next: [bold]cofe certify --dir {layout.root}[/], then [bold]cofe run --dir {layout.root}[/]")
