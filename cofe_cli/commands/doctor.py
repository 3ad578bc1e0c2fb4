"""`cofe doctor`: at a site, before round 0, check that this participant can join the federation.

One line per check: PASS, FAIL with the fix, or SKIP when an earlier failure leaves nothing to check.
Exit 0 when every check passed, 1 when one failed (the federation would not start: not bad input),
2 for bad input (no federation in --dir, an unknown participant, ...).

The checks, and what each one really verifies and cannot, are in cofe_cli/doctor/.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cofe_cli.console import console
from cofe_cli.doctor.certificates import DEFAULT_MIN_DAYS
from cofe_cli.doctor.network_tls import DEFAULT_TIMEOUT
from cofe_cli.doctor.result import FAIL, PASS, SKIP, Check
from cofe_cli.doctor.runner import run_checks, select_participant
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.participant import is_aggregator


def print_check(check: Check) -> None:
    colour = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}[check.status]
    line = f"[{colour}]{check.status}[/] {check.name:<12} {escape(check.detail)}"
    if check.fix:
        line += f" [yellow]fix:[/] {escape(check.fix)}"
    console.print(line, soft_wrap=True)


def doctor(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Site directory (made by `cofe import`) or federation directory."),
    participant: str = typer.Option(None, "--participant", "-p", help="The participant to check (needed when --dir holds several)."),
    min_days: int = typer.Option(DEFAULT_MIN_DAYS, "--min-days", help="Fail when the certificate expires within this many days."),
    data: Path = typer.Option(None, "--data", help="Collaborator: check this data folder instead of the one recorded."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Seconds to wait for each network step."),
) -> None:
    """At a site, before round 0: can this participant join? One line per check; exit 1 if any fails."""
    if min_days < 0:
        raise CofeError(f"--min-days must be 0 or more, got {min_days}", hint="e.g. --min-days 30")
    if not 0 < timeout <= 300:
        raise CofeError(f"--timeout must be between 0 and 300 seconds, got {timeout:g}", hint="e.g. --timeout 5")
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    name = select_participant(layout, manifest, participant)
    if data is not None and is_aggregator(name):
        raise CofeError("the aggregator has no data of its own; --data is for a collaborator", hint="drop --data")
    console.print(f"Checking {escape(name)} in {escape(str(layout.root))} (federation {escape(manifest.name)}, "
                  f"aggregator {escape(manifest.aggregator_address)}:{manifest.aggregator_port})", soft_wrap=True)
    checks = run_checks(layout, manifest, name, min_days=min_days, data=data, timeout=timeout, report=print_check)
    failed = [check.name for check in checks if check.failed]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} checks failed[/] ({', '.join(failed)}): "
                      "fix them before the federation starts.", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]All {len(checks)} checks passed[/]: {escape(name)} is ready for round 0.", soft_wrap=True)
