"""One console for output and one way to report errors."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

# No emoji codes: a root fingerprint such as 14:B9:EB:CD:60:AB:... would otherwise print ":CD:" and ":AB:"
# as emoji, and a site would be read out a fingerprint that is not the CA's.
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)


def print_warning(message: str, fix: str | None = None) -> None:
    line = f"[yellow]warning:[/] {escape(message)}"
    if fix:
        line += f" [yellow]fix:[/] {escape(fix)}"
    console.print(line, soft_wrap=True)


def warn_exposed_private_keys(layout, manifest) -> None:
    """One warning line when a private key here is readable by group or others (the fix is a chmod)."""
    from cofe_cli.pki.workspace_certs import exposed_private_keys

    exposure = exposed_private_keys(layout, manifest)
    if exposure is not None:
        print_warning(exposure.message, exposure.fix)


def print_error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)
