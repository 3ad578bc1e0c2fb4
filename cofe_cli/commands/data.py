"""`cofe data split`: one GaNDLF CSV of a study -> one data folder per simulated site (cofe_cli/plan/data_split.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cofe_cli.console import console
from cofe_cli.plan.data_split import (SplitMode, check_out_folder, check_split_options, label_balance, read_study,
                                      split_study, write_sites)

app = typer.Typer(help="Prepare a study's data for a simulated federation.", no_args_is_help=True)


@app.command("split")
def split(
    csv: Path = typer.Option(..., "--csv", help="The study's GaNDLF CSV (SubjectID, Channel_*, Label or ValueToPredict).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="New folder: one sub-folder per site with train.csv and valid.csv (image paths written absolute).", show_default=False),
    by: str = typer.Option(None, "--by", help="Split by this column of the CSV, e.g. Partition_ID: one site per value (1 -> site1).", show_default=False),
    partition_csv: Path = typer.Option(None, "--partition-csv", help="Split by a partitioning CSV with Partition_ID,Subject_ID (FeTS's format).", show_default=False),
    sites: int = typer.Option(None, "--sites", help="Split at random into N sites of about equal size (IID), site1..siteN.", show_default=False),
    dirichlet: float = typer.Option(None, "--dirichlet", help="With --sites: skew each site's labels, drawn from Dirichlet(ALPHA) per class (segmentation: by lesion presence). Small ALPHA, strong skew.", show_default=False),
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", help="Share of each site's subjects that validate (at least one, never all)."),
    seed: int = typer.Option(0, "--seed", help="The same seed and CSV give the same split."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
) -> None:
    """Split one GaNDLF CSV by subject into one data folder per site, for `cofe init --sites-from OUT`."""
    mode = SplitMode(by=by, partition_csv=partition_csv, sites=sites, dirichlet=dirichlet)
    check_split_options(mode, valid_fraction=valid_fraction, seed=seed)
    out = out.expanduser()
    with console.status("Reading the study's CSV and its images..."):
        study = read_study(csv)
    check_out_folder(out, study, force=force)
    split_sites = split_study(study, mode, valid_fraction=valid_fraction, seed=seed)
    write_sites(study, split_sites, out)

    balance = "with lesion" if study.problem_type == "segmentation" else f"per {study.columns.values[0]}"
    table = Table("site", "train", "valid", f"{balance} (train)", f"{balance} (valid)",
                  title=f"{len(split_sites)} sites in {out}", title_justify="left")
    for site in split_sites:
        table.add_row(site.name, str(len(site.train)), str(len(site.valid)),
                      label_balance(study, site.train), label_balance(study, site.valid))
    table.add_row("all", str(sum(len(s.train) for s in split_sites)), str(sum(len(s.valid) for s in split_sites)),
                  label_balance(study, tuple(s for site in split_sites for s in site.train)),
                  label_balance(study, tuple(s for site in split_sites for s in site.valid)), style="bold")
    console.print(table)
    console.print(f"Next: cofe init --gandlf-config CONFIG --sites-from {out} --dir FED")
