"""What `cofe init`, `cofe run` and `cofe demo` print the same way about a federation made or trained
here. Not a command itself (like launch_options.py): commands import it, never each other."""

from __future__ import annotations

from rich.markup import escape

from cofe_cli.console import console
from cofe_cli.federation import FederationLayout
from cofe_cli.init_pipeline import Initialised
from cofe_cli.launch.federation_run import FinishedRun, Prepared


def report_initialised(layout: FederationLayout, initialised: Initialised, *, next_steps: bool = True) -> None:
    for note in initialised.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if initialised.adaptations:
        console.print(f"Adapted the GaNDLF config for GaNDLF {initialised.gandlf_version} (saved as plans/gandlf_config.yaml):")
        for change in initialised.adaptations:
            console.print(f"  - {change}", markup=False)
    manifest = initialised.manifest
    console.print(f"[green]Federation ready[/] in {layout.root}: {len(manifest.collaborators)} collaborator(s), "
                  f"{manifest.rounds} round(s), aggregator {manifest.aggregator_address}:{manifest.aggregator_port}, "
                  f"plan sha384 {manifest.plan_sha384[:16]}...")
    if manifest.min_collaborators is not None:
        console.print(f"A round closes with at least {manifest.min_collaborators} of {len(manifest.collaborators)} "
                      f"site(s) once {manifest.round_timeout_seconds:g} s passed; with fewer left, the federation stops.")
    if not manifest.local_validation:
        console.print(f"Validation each round: {manifest.validations} (--local-validation off).")
    if next_steps:
        console.print(f"Next: [bold]cofe certify --dir {layout.root}[/], then [bold]cofe run --dir {layout.root}[/]")


def report_prepared(layout: FederationLayout, prepared: Prepared) -> None:
    if prepared.initialised is not None:
        report_initialised(layout, prepared.initialised, next_steps=False)
    elif prepared.kept_existing:
        console.print(f"Using the federation already in {layout.root} (`cofe init --force` replaces it).")
    if prepared.certified:
        console.print("Certificates issued from this federation's own CA (one party runs every participant).")


def report_finished(run: FinishedRun) -> None:
    from cofe_cli.launch.report import summary_table

    console.print(summary_table(run.progress))
    console.print(f"[green]Federation finished[/] in {run.seconds:.0f} s. Results in {run.results}: "
                  "metrics.csv, metrics.png, summary.json, final_model.pt, best_model.pt, gandlf_model/")
