"""What this site holds is what the federation recorded: the plan (its hash, the workspace's copy), the
aggregator's initial model, and the versions of cofe, openfl, gandlf and torch installed here."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Callable

import yaml

from cofe_cli.doctor.result import Check, fail, ok
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.plan.builder import refuse_secure_aggregation

RECORDED_PACKAGES = ("cofe", "openfl", "gandlf", "torch")


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _public(version: str) -> str:
    return version.split("+", 1)[0].strip()  # 2.7.1+cpu is 2.7.1 built for CPU


def check_environment(recorded: dict, installed: Callable[[str], str | None] = installed_version) -> Check:
    wanted = {package: str(recorded[package]) for package in RECORDED_PACKAGES if recorded.get(package)}
    if not wanted:
        return ok("environment", "the plan records no versions to compare with (made by an older cofe)")
    mismatches, same = [], []
    for package, version in wanted.items():
        here = installed(package)
        if here is None:
            mismatches.append(f"{package} is not installed (the plan has {version})")
        elif _public(here) != _public(version):
            mismatches.append(f"{package} {here} here, the plan has {version}")
        else:
            same.append(f"{package} {here}")
    if mismatches:
        pins = " ".join(f"'{package}=={_public(version)}'" for package, version in wanted.items() if package != "cofe")
        return fail("environment", "; ".join(mismatches),
                    f"install the federation's versions (`pip install {pins}`, and cofe {wanted.get('cofe', '')} "
                    "as the coordinator has it), or ask the coordinator to re-create the plan")
    return ok("environment", ", ".join(same) + ": as the plan recorded")


def check_plan(layout: FederationLayout, manifest: Manifest, participant: str) -> Check:
    from cofe_cli.federation import plan_hash
    from cofe_cli.plan.workspaces import COLS_FILE, PLAN_FILE

    plan_file = layout.plans / PLAN_FILE
    try:
        text = plan_file.read_text(encoding="utf-8")
    except OSError:
        return fail("plan", f"{plan_file} is missing", "import the site kit again (`cofe import KIT --force`)")
    if plan_hash(text) != manifest.plan_sha384:
        return fail("plan", f"{plan_file} was changed: its hash is not the federation's plan hash",
                    "import the kit again (`cofe import KIT --dir SITE --force`)")
    try:
        refuse_secure_aggregation(yaml.safe_load(text))
    except CofeError as refusal:
        return fail("plan", refusal.message, refusal.hint)
    workspace_plan = layout.participant(participant).plan_dir
    for name in (PLAN_FILE, COLS_FILE):
        copy = workspace_plan / name
        if not copy.is_file() or copy.read_bytes() != (layout.plans / name).read_bytes():
            return fail("plan", f"{copy} is not the federation's {name}",
                        "import the kit again (`cofe import KIT --dir SITE --force`)")
    return ok("plan", f"plan SHA-384 {manifest.plan_sha384[:16]}... as federation.yaml records; {participant}'s "
                      "workspace holds that plan")


def check_initial_model_file(workspace: Path, manifest: Manifest) -> Check:
    from cofe_cli.federation import check_initial_model
    from cofe_cli.plan.workspaces import aggregator_init_model

    model = aggregator_init_model(workspace)
    try:
        check_initial_model(model, manifest)
    except CofeError as error:
        return fail("model", error.message, error.hint or "import the aggregator's kit again")
    return ok("model", f"the initial model {model} has the SHA-384 federation.yaml records "
                       f"({manifest.init_model_sha384[:16]}...)")
