"""`cofe status` and `cofe stop`: what runs for a federation, however it was launched, and stopping it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cofe_cli.console import console
from cofe_cli.federation import FederationLayout

_DIR = typer.Option(Path("."), "--dir", "-d", help="Federation directory.")


def status(dir: Path = _DIR) -> None:
    """What runs for the federation, however it was launched (processes, containers, Slurm, `cofe start`).

    Per participant: what launched it (`cofe run`, with --containers or --slurm, or `cofe start`), its pid, container or Slurm job, state, host or node, and since when.

    Exit code 0, also when nothing runs (it says so)."""
    from cofe_cli.launch.status import command_of, launches_participants, snapshot

    found = snapshot(FederationLayout(dir))
    root = found.layout.root
    if found.holder is not None:
        doing = "runs" if launches_participants(found.holder) else "writes to"
        console.print(f"{command_of(found.holder)} {doing} the federation in {root}: {found.holder.describe()}.",
                      highlight=False)
    if found.entries:
        table = Table(title=f"Participants of {root}")
        for column in ("participant", "launched by", "pid / container / job", "state", "host / node", "since"):
            table.add_column(column)
        for entry in found.entries:
            table.add_row(entry.participant, entry.launcher, entry.handle, entry.state, entry.where, entry.since or "-")
        console.print(table)
    for note in found.notes:
        console.print(f"[yellow]note:[/] {note}")
    if not found.running:
        console.print(f"Nothing is running for the federation in {root}.", highlight=False)


def stop(dir: Path = _DIR) -> None:
    """Stop everything that runs for the federation, and wait until it is gone.

    SIGTERM to `cofe run` (it stops its processes, containers or Slurm jobs as on a Ctrl-C) and to every `cofe start` of the federation on this host; then containers and Slurm jobs left running by a killed `cofe run` are stopped. Waits up to 2 minutes.

    Exit code 0 when nothing of the federation runs any more (also when nothing ran), 1 when something still runs (a command on another host, or one that did not end in time), 2 when DIR holds no federation."""
    from cofe_cli.launch.status import stop as stop_federation

    layout = FederationLayout(dir)
    before = stop_federation(layout, say=lambda line: console.print(line, highlight=False))
    if before.running:
        console.print(f"Nothing of the federation in {layout.root} is running any more.", highlight=False)
    else:
        console.print(f"Nothing is running for the federation in {layout.root}: nothing to stop.", highlight=False)
