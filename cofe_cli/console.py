"""One console for output and one way to report errors."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

# No emoji codes: a root fingerprint such as 14:B9:EB:CD:60:AB:... would otherwise print ":CD:" and ":AB:"
# as emoji, and a site would be read out a fingerprint that is not the CA's.
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)


def print_error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)
