"""`cofe status` and `cofe stop`: the Slurm jobs of a federation started with `cofe run --slurm`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout

_DIR = typer.Option(Path("."), "--dir", "-d", help="Federation directory.")


def _recorded(layout: FederationLayout) -> dict[str, str]:
    from cofe_cli.launch.slurm import JOBS_FILE, SLURM_DIR, recorded_job_ids

    layout.load_manifest()  # a clear error when DIR is no federation
    jobs = recorded_job_ids(layout)
    if not jobs:
        raise CofeError(f"no Slurm jobs recorded for the federation in {layout.root} ({SLURM_DIR}/{JOBS_FILE})",
                        hint=f"start them with `cofe run --dir {layout.root} --slurm`")
    return jobs


def status(dir: Path = _DIR) -> None:
    """Which participant runs where: Slurm job ids, states and nodes of the federation's jobs."""
    from cofe_cli.launch.slurm import query_jobs

    layout = FederationLayout(dir)
    jobs = _recorded(layout)
    infos = query_jobs(list(jobs.values()))
    table = Table(title=f"Slurm jobs of {layout.root}")
    for column in ("participant", "job", "state", "node", "exit code / reason"):
        table.add_column(column)
    for name, job in jobs.items():
        info = infos.get(job)
        if info is None or info.state == "UNKNOWN":
            table.add_row(name, job, "gone", "-", "Slurm no longer knows this job (it ended over ~5 min ago)")
            continue
        detail = info.reason if info.state == "PENDING" else (
            f"{info.exit_code}" + (f" (signal {info.signal})" if info.signal else "") if not info.active else "")
        table.add_row(name, job, info.state, info.node or "-", detail)
    console.print(table)


def stop(dir: Path = _DIR) -> None:
    """Cancel every Slurm job of the federation (queued or running) and wait until they are gone."""
    from cofe_cli.launch.slurm import stop_jobs

    layout = FederationLayout(dir)
    jobs = _recorded(layout)
    infos = stop_jobs(list(jobs.values()))
    still = [name for name, job in jobs.items() if infos.get(job) and infos[job].active]
    if still:
        raise CofeError(f"Slurm has not ended the jobs of {', '.join(still)} yet",
                        hint=f"`cofe status --dir {layout.root}` shows them; run `cofe stop` again")
    console.print(f"No job of the federation in {layout.root} is queued or running "
                  f"(jobs {', '.join(jobs.values())}).")
