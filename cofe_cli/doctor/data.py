"""A collaborator's data folder, checked as `cofe start collaborator` checks it."""

from __future__ import annotations

from pathlib import Path

from cofe_cli.doctor.result import Check, fail, ok
from cofe_cli.errors import CofeError


def check_data(folder: Path | None, gandlf_config: dict, *, participant: str) -> Check:
    from cofe_cli.plan.data import check_site_data

    if folder is None:
        return fail("data", f"{participant} has no data folder yet",
                    f"name it: `cofe doctor --data PATH`, then `cofe start collaborator {participant} --data PATH`")
    try:
        summary = check_site_data(folder, gandlf_config)
    except CofeError as error:
        return fail("data", error.message, error.hint or "fix the CSVs")
    return ok("data", f"{summary.folder}: train.csv {summary.train_subjects} subject(s), valid.csv "
                      f"{summary.valid_subjects}, {summary.channels} channel(s), every listed file an image")
