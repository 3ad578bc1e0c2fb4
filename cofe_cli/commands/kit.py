"""`cofe export` (at the coordinator) and `cofe import` (at a site): the kit one participant needs.

A kit holds the frozen plan, the CA chain, a data template and a README; never a private key.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cofe_cli.console import console
from cofe_cli.federation import AGGREGATOR, FederationLayout

export_app = typer.Typer(
    help="Write what leaves the coordinator: a site kit (the plan and CA chain one participant needs, never a private key), or the trained model (`cofe export model`).",
    no_args_is_help=True,
)

_DIR = typer.Option(Path("."), "--dir", "-d", help="Federation directory (the coordinator's).")
_OUT = typer.Option(None, "--output", "-o", help="Kit file to write (default: NAME-kit.tar.gz here).")
_FORCE = typer.Option(False, "--force", help="Replace the kit file if it exists.")


def _say(text: str) -> None:
    console.print(text, soft_wrap=True)


def _export(name: str, dir: Path, out: Path | None, force: bool) -> None:
    from cofe_cli.archive import group_hex
    from cofe_cli.site_kits import export_kit

    layout = FederationLayout(dir)
    result = export_kit(layout, name, out=out, force=force)
    for warning in result.warnings:
        _say(f"[yellow]warning:[/] {escape(warning)}")
    _say(f"[green]Kit for {escape(name)}[/] ({result.role}): [bold]{escape(str(result.path))}[/]")
    _say(f"  holds: {escape(', '.join(result.members))} (no private key)")
    _say(f"  federation fingerprint (plan + initial model): {group_hex(result.fingerprint)}")
    _say("  (the site reads it back to you after `cofe import`)")
    _say(f"  root CA fingerprint: {result.root_fingerprint}")
    _say("  (read it out to the site by phone: it checks it with `cofe certify install --expect-root-fingerprint`)")


@export_app.command("collaborator")
def export_collaborator(
    name: str = typer.Argument(..., help="The collaborator's name in the plan."),
    dir: Path = _DIR,
    out: Path = _OUT,
    force: bool = _FORCE,
) -> None:
    """Kit for one site: plan, CA chain, data template, README."""
    _export(name, dir, out, force)


@export_app.command("aggregator")
def export_aggregator(dir: Path = _DIR, out: Path = _OUT, force: bool = _FORCE) -> None:
    """Kit for the aggregator's host when it is not the coordinator's: plan, initial model, CA chain, README."""
    _export(AGGREGATOR, dir, out, force)


def import_kit(
    kit: Path = typer.Argument(..., help="The NAME-kit.tar.gz the coordinator sent."),
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Site directory (made if needed)."),
    data: Path = typer.Option(None, "--data", help="Collaborator: folder with this site's GaNDLF train.csv and valid.csv."),
    force: bool = typer.Option(False, "--force", help="Import again over an existing workspace (its key and certificates are kept)."),
) -> None:
    """At a site: check a kit (hashes, plan, CA) and set up SITE/plans and SITE/workspaces/NAME from it."""
    from cofe_cli.archive import group_hex
    from cofe_cli.site_kits import import_kit as import_site_kit

    result = import_site_kit(kit, dir, data=data, force=force)
    root = FederationLayout(dir).root
    _say(f"[green]Imported {escape(result.name)}[/] ({result.role}) of the federation {escape(result.federation)} "
         f"into {escape(str(root))}: plans {result.plans_action}, workspace {result.workspace_action}")
    for warning in result.warnings:
        _say(f"[yellow]warning:[/] {escape(warning)}")
    if result.role == "collaborator":
        if result.data_folder is not None:
            _say(f"Data: {escape(str(result.data_folder))}")
        else:
            _say(f"Data: not given yet; the CSV columns it needs are in {escape(str(result.template))}/ "
                 f"(give the folder with --data here or to `cofe start collaborator`)")
    _say(f"Aggregator: {escape(result.aggregator)}")
    _say("Federation fingerprint, over the plan and the initial model (read it back to the coordinator; it must "
         "match what `cofe export` showed):")
    _say(f"  [bold]{group_hex(result.fingerprint)}[/]")
    _say(f"Next: [bold]cofe certify request --dir {escape(str(root))}[/]")
