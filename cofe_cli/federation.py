"""Where everything of one federation lives on disk, and the names cofe accepts for participants.

FED/
  plans/        the OpenFL plan, collaborator list, normalised GaNDLF config, initial model, manifest
  workspaces/   one complete OpenFL workspace per participant (aggregator/, <collaborator>/)
  ca/           the federation's certificate authority (only at the party that runs it)
  results/      metrics, plots and models of finished runs
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cofe_cli.errors import CofeError

AGGREGATOR = "aggregator"
# OpenFL lowercases collaborator names in cols.yaml and certificates, and then fails to find
# `site_A`; accepting only lowercase names keeps the name a user types the one OpenFL uses.
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_collaborator_name(name: str) -> str:
    if not name:
        raise CofeError("a collaborator name is empty", hint="give --collaborator NAME=DATA with a name such as hospital_a")
    if name == AGGREGATOR:
        raise CofeError("'aggregator' is reserved and cannot name a collaborator", hint="pick another name, e.g. hospital_a")
    if not _NAME_PATTERN.match(name):
        suggestion = re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_-")[:63] or "site_1"
        if suggestion == AGGREGATOR or not _NAME_PATTERN.match(suggestion):
            suggestion = "site_1"
        raise CofeError(
            f"collaborator name {name!r} is not a safe name",
            hint=f"use 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit, e.g. {suggestion!r}",
        )
    return name


@dataclass(frozen=True)
class FederationLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def plans(self) -> Path:
        return self.root / "plans"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def manifest_file(self) -> Path:
        return self.plans / "federation.yaml"

    def workspace(self, participant: str) -> Path:
        return self.workspaces / participant

    def is_initialised(self) -> bool:
        return self.manifest_file.is_file()

    def load_manifest(self) -> "Manifest":
        if not self.is_initialised():
            raise CofeError(f"no federation in {self.root}", hint="run `cofe init --dir DIR ...` first, or pass the right --dir")
        try:
            return Manifest.from_dict(yaml.safe_load(self.manifest_file.read_text()))
        except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CofeError(f"{self.manifest_file} is damaged ({type(exc).__name__}: {exc})",
                            hint="re-create the federation with `cofe init --force`") from None


@dataclass(frozen=True)
class Manifest:
    """What cofe records about a federation beside the OpenFL plan (plans/federation.yaml)."""

    name: str
    collaborators: tuple[str, ...]
    rounds: int
    aggregator_address: str
    aggregator_port: int
    algorithm: str
    plan_sha384: str
    versions: dict

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "collaborators": list(self.collaborators),
            "rounds": self.rounds,
            "aggregator": {"address": self.aggregator_address, "port": self.aggregator_port},
            "algorithm": self.algorithm,
            "plan_sha384": self.plan_sha384,
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        return cls(
            name=data["name"],
            collaborators=tuple(data["collaborators"]),
            rounds=int(data["rounds"]),
            aggregator_address=data["aggregator"]["address"],
            aggregator_port=int(data["aggregator"]["port"]),
            algorithm=data["algorithm"],
            plan_sha384=data["plan_sha384"],
            versions=dict(data.get("versions", {})),
        )

    def require_collaborator(self, name: str) -> None:
        if name not in self.collaborators:
            raise CofeError(
                f"the plan has no collaborator {name!r} (it has: {', '.join(self.collaborators)})",
                hint="check the spelling, or add the site with `cofe init --force` and a new --collaborator",
            )
