"""Where everything of one federation lives on disk, and the names cofe accepts for participants.

FED/
  plans/        the OpenFL plan, collaborator list, normalised GaNDLF config, initial model, manifest
  workspaces/   one complete OpenFL workspace per participant (aggregator/, <collaborator>/)
  ca/           the federation's certificate authority (only at the party that runs it)
  results/      metrics, plots and models of finished runs
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cofe_cli.errors import CofeError
from cofe_cli.participant import AGGREGATOR, PLAN_FILE, Participant, is_aggregator
from cofe_cli.plan.builder import LOCAL_VALIDATION_TASK, TASKS
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


def plan_hash(plan_yaml: str) -> str:
    """SHA-384 of the plan file's bytes: what a site reads out to the coordinator."""
    return hashlib.sha384(plan_yaml.encode("utf-8")).hexdigest()


def federation_fingerprint(plan_sha384: str, init_model_sha384: str) -> str:
    identity = f"cofe federation\nplan.yaml sha384 {plan_sha384.lower()}\ninit.pbuf sha384 {init_model_sha384.lower()}\n"
    return hashlib.sha384(identity.encode("ascii")).hexdigest()


def file_sha384(path: Path) -> str:
    """Read in chunks: an initial model can be larger than the memory one would spend on hashing it."""
    digest = hashlib.sha384()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def parse_site_arguments(values: list[str]) -> list[tuple[str, Path | None]]:
    """`--collaborator NAME[=DATA]` values: each name checked and given once, DATA (when given) not empty."""
    parsed, seen = [], set()
    for value in values:
        name, sep, data = value.partition("=")
        name = check_collaborator_name(name.strip())
        if name in seen:
            raise CofeError(f"collaborator {name!r} is given twice", hint="give every site one --collaborator with its own name")
        seen.add(name)
        if sep and not data.strip():
            raise CofeError(f"collaborator {name!r} has an empty data path",
                            hint=f"write {name}=/path/to/data, or just {name} if the site gives its data itself")
        parsed.append((name, Path(data.strip()).expanduser() if sep else None))
    return parsed


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

    def participant(self, name: str, manifest: "Manifest | None" = None) -> Participant:
        """`name`'s workspace, paths and start command; the manifest gives the aggregator's certificate name."""
        return Participant(name=name, root=self.root, workspace=self.workspace(name),
                           aggregator_address=manifest.aggregator_address if manifest else None)

    def aggregator(self, manifest: "Manifest | None" = None) -> Participant:
        return self.participant(AGGREGATOR, manifest)

    def participants(self, manifest: "Manifest") -> list[Participant]:
        """The aggregator first, then every collaborator of the plan."""
        return [self.participant(name, manifest) for name in manifest.participant_names()]

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
    # SHA-384 of plans/init.pbuf, the weights round 0 starts from; None in a manifest of an older cofe.
    init_model_sha384: str | None = None
    # The plan's site-loss policy (`cofe init --min-collaborators/--round-timeout`); None: wait for every site.
    min_collaborators: int | None = None
    round_timeout_seconds: float | None = None
    # Whether each round also validates the locally tuned model (`cofe init --local-validation`); the
    # progress view and the summary say which validations ran. True in a manifest of an older cofe.
    local_validation: bool = True

    @property
    def validations(self) -> str:
        """Which validations each round runs, as the progress view and the summary say it."""
        return "aggregated + locally tuned" if self.local_validation else "aggregated model only"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks a collaborator runs each round, in OpenFL's order."""
        return tuple(task for task in TASKS if self.local_validation or task != LOCAL_VALIDATION_TASK)

    @property
    def required_collaborators(self) -> int:
        """How many sites the federation needs to go on: fewer alive, and it cannot finish."""
        return self.min_collaborators or len(self.collaborators)

    def to_dict(self) -> dict:
        site_loss = ({"site_loss": {"min_collaborators": self.min_collaborators,
                                    "round_timeout_seconds": self.round_timeout_seconds}}
                     if self.min_collaborators is not None else {})
        return {
            "name": self.name,
            "collaborators": list(self.collaborators),
            "rounds": self.rounds,
            "aggregator": {"address": self.aggregator_address, "port": self.aggregator_port},
            "algorithm": self.algorithm,
            "plan_sha384": self.plan_sha384,
            "init_model_sha384": self.init_model_sha384,
            "versions": dict(self.versions),
            **site_loss,
            **({} if self.local_validation else {"local_validation": False}),
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
            init_model_sha384=data.get("init_model_sha384"),
            min_collaborators=(data.get("site_loss") or {}).get("min_collaborators"),
            round_timeout_seconds=(data.get("site_loss") or {}).get("round_timeout_seconds"),
            local_validation=bool(data.get("local_validation", True)),
        )

    def fingerprint(self) -> str:
        """What a site reads back to the coordinator: one SHA-384 over the plan's hash and the initial model's.

        The plan alone does not say which weights round 0 starts from; a swapped init.pbuf must change
        the value read out on the phone."""
        return federation_fingerprint(self.plan_sha384, self.recorded_init_model_sha384())

    def recorded_init_model_sha384(self) -> str:
        if not self.init_model_sha384:
            raise CofeError("federation.yaml records no hash of the initial model (made by an older cofe), so the "
                            "federation's fingerprint cannot be shown or checked",
                            hint="at the coordinator, re-create the federation with `cofe init --force` (the CA is "
                                 "kept) and export the kits again")
        return self.init_model_sha384.lower()

    def participant_names(self) -> tuple[str, ...]:
        """The aggregator, then the collaborators in the plan's order."""
        return (AGGREGATOR, *self.collaborators)

    def require_collaborator(self, name: str) -> None:
        if name not in self.collaborators:
            raise CofeError(
                f"the plan has no collaborator {name!r} (it has: {', '.join(self.collaborators)})",
                hint="check the spelling, or add the site with `cofe init --force` and a new --collaborator",
            )


def check_initial_model(model: Path, manifest: Manifest) -> None:
    """Raise unless `model` holds the initial weights federation.yaml records (what the aggregator serves in round 0)."""
    recorded = manifest.recorded_init_model_sha384()
    if not Path(model).is_file():
        raise CofeError(f"the initial model {model} is missing",
                        hint="import the aggregator's kit again (`cofe import KIT --force`; it carries plans/init.pbuf), "
                             "or at the coordinator re-create the federation with `cofe init --force`")
    actual = file_sha384(model)
    if actual != recorded:
        raise CofeError(f"the initial model {model} is not the federation's: its SHA-384 {actual[:16]}... is not "
                        f"{recorded[:16]}..., which federation.yaml records",
                        hint="do not start from it; import the aggregator's kit again (`cofe import KIT --force`), "
                             "or at the coordinator copy plans/init.pbuf to workspaces/aggregator/save/init.pbuf")


def task_runner_settings(layout: FederationLayout) -> dict:
    """The plan's task runner settings: the GaNDLF config the federation trains with (`gandlf_config`, with
    its differential_privacy section), instance_norm_statistics, ...; {} without a plan."""
    try:
        plan = yaml.safe_load((layout.plans / PLAN_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return ((plan.get("task_runner") or {}).get("settings")) or {}


def check_plan_unchanged(layout: FederationLayout, manifest: Manifest) -> None:
    plan_file = layout.plans / PLAN_FILE
    try:
        text = plan_file.read_text(encoding="utf-8")
    except OSError:
        raise CofeError(f"{plan_file} is missing", hint="import the site kit again (`cofe import KIT --force`)") from None
    if plan_hash(text) != manifest.plan_sha384:
        raise CofeError(f"{plan_file} was changed: its hash is not the federation's plan hash",
                        hint="import the kit again (`cofe import KIT --dir DIR --force`) or ask the coordinator for a new one")


def local_participant(layout: FederationLayout, manifest: Manifest, name: str | None) -> str:
    """The participant whose workspace is in this directory: `name`, or the only one there."""
    known = manifest.participant_names()
    if name is not None:
        if not is_aggregator(name):
            check_collaborator_name(name)
            manifest.require_collaborator(name)
        if not layout.workspace(name).is_dir():
            raise CofeError(f"{layout.root} holds no workspace for {name}",
                            hint=f"import {name}'s site kit first: `cofe import KIT --dir {layout.root}`")
        return name
    present = [p for p in known if layout.workspace(p).is_dir()]
    if not present:
        raise CofeError(f"{layout.root} holds no participant's workspace",
                        hint=f"import the site kit first: `cofe import KIT --dir {layout.root}`")
    if len(present) > 1:
        raise CofeError(f"{layout.root} holds several participants ({', '.join(present)}); which one?",
                        hint="name it, e.g. `cofe certify request hospital_a --dir DIR`")
    return present[0]
