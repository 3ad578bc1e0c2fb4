"""Builders that turn a plan into files: `plans/` and one complete OpenFL workspace per participant.

Each builder does one thing; `build_federation` runs them in order into a staging folder that the
caller swaps into place only once everything (including GaNDLF's and OpenFL's checks) passed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, PLAN_FILE, FederationLayout, Manifest
from cofe_cli.fsutil import atomic_write_text
from cofe_cli.participant import COLS_FILE, PLAN_DIR
from cofe_cli.plan.builder import INIT_STATE_PATH, dump_yaml, render_cols, render_data_config
from cofe_cli.plan.data import check_site_data

GANDLF_FILE = "gandlf_config.yaml"
INIT_MODEL = Path(INIT_STATE_PATH).name  # plans/init.pbuf, copied to the aggregator's save/


@dataclass(frozen=True)
class CollaboratorData:
    name: str
    data_folder: Path | None  # None: the data lives at the site and is given to `cofe start`


def write_plans(layout: FederationLayout, plan_yaml: str, gandlf_config: dict, manifest: Manifest) -> None:
    atomic_write_text(layout.plans / PLAN_FILE, plan_yaml)
    atomic_write_text(layout.plans / COLS_FILE, render_cols(list(manifest.collaborators)))
    atomic_write_text(layout.plans / GANDLF_FILE, dump_yaml(gandlf_config))
    write_manifest(layout, manifest)


def write_manifest(layout: FederationLayout, manifest: Manifest) -> None:
    atomic_write_text(layout.manifest_file, dump_yaml(manifest.to_dict()))


def write_workspace(layout: FederationLayout, participant: str, data: dict[str, str]) -> Path:
    """An OpenFL workspace: plan/{plan,cols,data}.yaml plus the folders OpenFL writes into."""
    this = layout.participant(participant)
    for folder in (this.plan_dir, this.cert_dir, this.save_dir, this.logs_dir, this.local_state_dir):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(layout.plans / PLAN_FILE, this.plan_file)
    shutil.copyfile(layout.plans / COLS_FILE, this.cols_file)
    atomic_write_text(this.data_config, render_data_config(data))
    return this.workspace


def aggregator_init_model(workspace: Path) -> Path:
    """The initial model OpenFL's aggregator loads: its plan's init_state_path, relative to its workspace."""
    try:
        plan = yaml.safe_load((workspace / PLAN_DIR / PLAN_FILE).read_text(encoding="utf-8"))
        relative = plan["aggregator"]["settings"]["init_state_path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        relative = INIT_STATE_PATH  # no readable plan: OpenFL will not start either, and says so
    return workspace / str(relative)


def write_collaborator_data(layout: FederationLayout, collaborator: CollaboratorData) -> None:
    entries = {collaborator.name: str(collaborator.data_folder)} if collaborator.data_folder else {}
    write_workspace(layout, collaborator.name, entries)


def build_federation(layout: FederationLayout, plan_yaml: str, gandlf_config: dict, manifest: Manifest,
                     collaborators: list[CollaboratorData]) -> None:
    write_plans(layout, plan_yaml, gandlf_config, manifest)
    write_workspace(layout, AGGREGATOR, {})
    for collaborator in collaborators:
        write_collaborator_data(layout, collaborator)


def set_collaborator_data(layout: FederationLayout, name: str, data_folder: Path) -> None:
    """A site names its own data when it starts (the coordinator never sees it)."""
    atomic_write_text(layout.participant(name).data_config, render_data_config({name: str(data_folder)}))


def collaborator_data_folder(layout: FederationLayout, name: str) -> Path | None:
    data_file = layout.participant(name).data_config
    if not data_file.is_file():
        return None
    for line in data_file.read_text().splitlines():
        if line and not line.startswith("#"):
            entry, _, path = line.partition(",")
            if entry == name and path:
                return Path(path)
    return None


def clear_aggregator_state(layout: FederationLayout) -> None:
    for path in layout.aggregator().restart_state():
        if path.is_dir():
            shutil.rmtree(path)
            path.mkdir()
        elif path.exists():
            path.unlink()


def prepare_collaborator_data(layout: FederationLayout, name: str, data: Path | None) -> None:
    """Check the collaborator's data folder (`data`, or the one it was given before) and remember a new one."""
    gandlf_config = yaml.safe_load((layout.plans / GANDLF_FILE).read_text())
    folder = data.expanduser().resolve() if data else collaborator_data_folder(layout, name)
    if folder is None:
        raise CofeError(f"{name} has no data folder yet", hint=f"start it with `cofe start collaborator {name} --data PATH`")
    check_site_data(folder, gandlf_config)
    if data:
        set_collaborator_data(layout, name, folder)
