"""`cofe certify`: the federation's CA and each participant's certificate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cofe_cli.console import console
from cofe_cli.federation import FederationLayout
from cofe_cli.pki.authority import DEFAULT_VALIDITY_DAYS, CertificateAuthority
from cofe_cli.pki.workspace_certs import certify_locally

app = typer.Typer(help="Create the federation's CA and certificates.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def certify(
    ctx: typer.Context,
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory."),
    force: bool = typer.Option(False, "--force", help="Replace the CA, keys and certificates that exist."),
    validity_days: int = typer.Option(DEFAULT_VALIDITY_DAYS, "--validity-days", help="Certificate lifetime in days."),
) -> None:
    """For a federation run by one party: a CA and every participant's certificate in one step."""
    if ctx.invoked_subcommand is not None:
        return
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    actions = certify_locally(layout, manifest, force=force, validity_days=validity_days)
    table = Table("participant", "certificate", title="Certificates")
    for participant, action in actions:
        table.add_row(participant, action)
    console.print(table)
    console.print(f"Root CA fingerprint (SHA-256): {CertificateAuthority.load(layout.ca).root_fingerprint()}")
