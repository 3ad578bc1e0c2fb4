"""Where a federation is made: `cofe init`'s pipeline, also run by `cofe run` and `cofe demo` when there is none yet.

A GaNDLF config plus the sites' data become an OpenFL plan (plans/) and one workspace per participant
(workspaces/): the config is normalised for the installed GaNDLF, the options and the sites' data are
checked, the plan is built, the federation is written into a staging folder inside --dir where GaNDLF
and OpenFL check it and write the initial model, and only then is it swapped in. Nothing is printed
here but the wait for GaNDLF and OpenFL: the commands say what came of it (`Initialised`).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Iterator
from urllib.error import URLError

from cofe_cli import __version__
from cofe_cli.console import console
from cofe_cli.errors import CofeError, is_write_failure
from cofe_cli.federation import FederationLayout, Manifest, file_sha384, parse_site_arguments, plan_hash
from cofe_cli.fsutil import staging_folder, swap_in, writing_into
from cofe_cli.locks import federation_locked
from cofe_cli.plan.builder import (
    AUTO_BATCH,
    SECURE_AGGREGATION_REFUSAL,
    PlanOptions,
    build_plan,
    check_plan_options,
    dump_yaml,
    site_loss_policy,
    validation_options,
)
from cofe_cli.plan.data import TRAIN_CSV, check_data_folder, data_facts, expectations_of, split_csv
from cofe_cli.plan.gandlf_config import load_gandlf_yaml, normalise_gandlf_config_with_notes
from cofe_cli.plan.workspaces import INIT_MODEL, CollaboratorData, build_federation, write_manifest

DEFAULT_PORT = 50051


@dataclass
class InitRequest:
    gandlf_config: Path
    collaborators: list[str]
    rounds: int = 3
    aggregator_address: str = "localhost"
    port: int = DEFAULT_PORT
    algorithm: str = "fedavg"
    proximal_mu: float | None = None
    device: str = "cpu"
    epochs_per_round: int = 1
    validation_norm: str = "input"
    validation_batch: str = AUTO_BATCH
    local_validation: str = "on"
    valid_fraction: float = 0.2
    force: bool = False
    name: str | None = None
    min_collaborators: int | None = None
    round_timeout: str | None = None
    max_epsilon: float | None = None
    secure_aggregation: bool = False


@dataclass
class Initialised:
    """A federation in place: its manifest, notes on the sites' data, and how the GaNDLF config was adapted."""

    manifest: Manifest
    gandlf_version: str
    notes: list[str] = field(default_factory=list)
    adaptations: list[str] = field(default_factory=list)


def parse_collaborator_args(values: list[str]) -> list[tuple[str, Path | None]]:
    if not values:
        raise CofeError("no collaborators given",
                        hint="add --collaborator NAME=DATA for every site (at least one), or --sites-from DIR")
    return parse_site_arguments(values)


def collaborators_from_folder(folder: Path) -> list[str]:
    """`--sites-from DIR`: NAME=DIR/NAME for every sub-folder, in name order (hidden ones skipped), as
    `--collaborator` takes them; each must hold GaNDLF's CSVs (checked in full with the others' data)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CofeError(f"--sites-from {folder} is not a folder",
                        hint="give the folder `cofe data split --out` wrote: one sub-folder per site")
    sites = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not sites:
        raise CofeError(f"--sites-from {folder} has no sub-folders",
                        hint="it needs one sub-folder per site with train.csv and valid.csv, e.g. from `cofe data split`")
    without = [site.name for site in sites if not (site / TRAIN_CSV).is_file()]
    if without:
        raise CofeError(f"--sites-from {folder}: sub-folder(s) without {TRAIN_CSV}: {', '.join(without)}",
                        hint="every sub-folder is one site's data folder with train.csv and valid.csv: remove the others")
    return [f"{site.name}={site}" for site in sites]


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise CofeError(f"{package} is not installed in this Python environment",
                        hint="install cofe with its dependencies: `pip install .` in the cofe repository") from None


def initialise(layout: FederationLayout, request: InitRequest) -> Initialised:
    """Everything cheap is checked first; GaNDLF and OpenFL then check the staged result, and only
    a federation that passed all checks replaces what is on disk."""
    if request.secure_aggregation:
        raise CofeError(SECURE_AGGREGATION_REFUSAL, hint="leave out --secure-aggregation; see README, Differential privacy")
    gandlf_version = _installed("gandlf")
    raw_config = load_gandlf_yaml(Path(request.gandlf_config))
    collaborators = parse_collaborator_args(request.collaborators)
    with gandlf_config_guard(request.gandlf_config):
        gandlf_config, changes = normalise_gandlf_config_with_notes(
            raw_config, gandlf_version=gandlf_version, data=data_facts([data for _, data in collaborators]))
    validation_batch, local_validation = validation_options(request.validation_batch, request.local_validation)
    min_collaborators, round_timeout = site_loss_policy(request.min_collaborators, request.round_timeout, len(collaborators))
    options = PlanOptions(
        rounds=request.rounds, aggregator_address=request.aggregator_address, aggregator_port=request.port,
        algorithm=request.algorithm, proximal_mu=request.proximal_mu, device=request.device,
        epochs_per_round=request.epochs_per_round, instance_norm_statistics=request.validation_norm,
        min_collaborators=min_collaborators, round_timeout_seconds=round_timeout, max_epsilon=request.max_epsilon,
        validation_batch=validation_batch, local_validation=local_validation,
    )
    check_plan_options(options)
    if not 0 < request.valid_fraction < 1:
        raise CofeError(f"--valid-fraction must be between 0 and 1, got {request.valid_fraction}", hint="e.g. --valid-fraction 0.2")
    expected = expectations_of(gandlf_config)
    notes = [note for name, data in collaborators if data is not None and not data.is_file()
             for note in check_data_folder(data, **expected).notes]

    with gandlf_config_guard(request.gandlf_config):
        plan_yaml = dump_yaml(build_plan(gandlf_config, options))
    manifest = Manifest(
        name=request.name or layout.root.name, collaborators=tuple(name for name, _ in collaborators),
        rounds=request.rounds, aggregator_address=request.aggregator_address, aggregator_port=request.port,
        algorithm=request.algorithm, plan_sha384=plan_hash(plan_yaml),
        min_collaborators=min_collaborators, round_timeout_seconds=round_timeout,
        local_validation=options.local_validation,
        versions={"cofe": __version__, "openfl": _installed("openfl"), "gandlf": gandlf_version, "torch": _installed("torch")},
    )

    with writing_into(layout.root), federation_locked(layout):  # refused while a run or a participant uses it
        if layout.is_initialised() and not request.force:
            raise CofeError(f"{layout.root} already holds a federation",
                            hint="pass --force to replace its plan and workspaces (its CA is kept)")
        manifest, split_notes = _build_and_swap_in(layout, request, gandlf_config, plan_yaml, manifest, collaborators,
                                                   expected)
    return Initialised(manifest, gandlf_version, notes + split_notes, changes)


@contextmanager
def gandlf_config_guard(config_path: Path, *, building_model: bool = False) -> Iterator[None]:
    """Whatever GaNDLF (or cofe's reading of the config) raises while the config becomes a plan and a model
    is one error line naming the config, never a traceback; the known cases are refused before, by name."""
    try:
        yield
    except CofeError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure here is this config's, told in one line
        if is_write_failure(error):
            raise  # the disk's (full, read-only, no permission), not the config's: writing_into names --dir
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        if building_model and isinstance(error, URLError | ConnectionError | TimeoutError):
            raise CofeError(
                f"GaNDLF could not download what the model in {config_path} starts from ({reason})",
                hint="give this machine network access, or start from random weights "
                     "(e.g. `pretrained: false` under `model:` for imagenet_unet)") from None
        stage = "build the model of" if building_model else "turn into a plan"
        raise CofeError(f"GaNDLF could not {stage} the config {config_path}: {reason}",
                        hint="fix that setting in the GaNDLF config; GaNDLF's samples/config_all_options.yaml "
                             "documents every option") from None


def _build_and_swap_in(layout: FederationLayout, request: InitRequest, gandlf_config: dict, plan_yaml: str,
                       manifest: Manifest, collaborators: list[tuple[str, Path | None]],
                       expected: dict) -> tuple[Manifest, list[str]]:
    """Build the federation in a staging folder inside --dir, have GaNDLF and OpenFL check it, then swap it in.
    Returns the manifest (with the initial model's hash) and the notes on the sites' data that a split CSV gave."""
    notes = []
    with staging_folder(layout.root, prefix=".cofe-init-") as stage_root:
        stage = FederationLayout(stage_root)
        data_entries = []
        for name, data in collaborators:
            if data is not None and data.is_file():
                # A single CSV is split by subject into the site's workspace; absolute paths keep it valid after the move.
                notes += split_csv(data, stage.workspace(name) / "data", valid_fraction=request.valid_fraction,
                                   **expected).notes
                data = layout.workspace(name) / "data"
            data_entries.append(CollaboratorData(name, data.resolve() if data else None))
        build_federation(stage, plan_yaml, gandlf_config, manifest, data_entries)
        with console.status("Checking with GaNDLF and OpenFL and building the initial model (first run imports torch)..."):
            from cofe_cli.engine.gandlf_validation import validate_with_gandlf
            from cofe_cli.engine.participant import check_plan, quiet, write_initial_model

            with quiet(), gandlf_config_guard(request.gandlf_config, building_model=True):
                validate_with_gandlf(gandlf_config)
                check_plan(stage.aggregator().workspace)
                write_initial_model(stage.aggregator().workspace, stage.plans / INIT_MODEL)
        # The weights are part of the federation's identity: their hash goes into the fingerprint read back.
        manifest = replace(manifest, init_model_sha384=file_sha384(stage.plans / INIT_MODEL))
        write_manifest(stage, manifest)
        shutil.copyfile(stage.plans / INIT_MODEL, stage.aggregator().save_dir / INIT_MODEL)
        # init makes plans/ and workspaces/ only: the CA, results/ and anything else in --dir stay.
        swap_in(stage.plans, layout.plans, stage.root)
        swap_in(stage.workspaces, layout.workspaces, stage.root)
    return manifest, notes
