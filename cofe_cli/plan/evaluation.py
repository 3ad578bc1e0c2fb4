"""Federated evaluation: a one-round federation derived from a trained one, in FED/evaluation/.

Its plan is the training plan with OpenFL's `evaluation` task group selected (aggregated_model_validation
only: no training, no model update, no checkpoint) and the evaluated model as the initial one. Its
participants are the trained federation's aggregator and any sites, each with a certificate of the
federation's own CA: the training sites keep theirs, a site that never trained gets one issued.
Rebuilt in a staging folder at every evaluation, so a failure never leaves half of one behind.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, file_sha384, parse_site_arguments, plan_hash
from cofe_cli.fsutil import staged_dir
from cofe_cli.plan.builder import dump_yaml
from cofe_cli.plan.data import check_data_folder, evaluation_only_data, expectations_of
from cofe_cli.plan.workspaces import GANDLF_FILE, INIT_MODEL, PLAN_FILE, CollaboratorData, build_federation, \
    collaborator_data_folder

EVALUATION_DIR = "evaluation"
EVALUATION_GROUP = "evaluation"
EVALUATED_TASK = "aggregated_model_validation"


@dataclass(frozen=True)
class EvaluationSite:
    name: str
    data_folder: Path  # holds valid.csv (the subjects evaluated) and train.csv (OpenFL's loader reads both)
    subjects: int
    trained: bool  # a site of the training federation, or one that only evaluates


def evaluation_layout(layout: FederationLayout) -> FederationLayout:
    return FederationLayout(layout.root / EVALUATION_DIR)


def evaluation_plan(training_plan: dict) -> dict:
    plan = copy.deepcopy(training_plan)
    assigner = plan["assigner"]["settings"]
    assigner["task_groups"] = [group for group in assigner["task_groups"] if group["name"] != EVALUATION_GROUP]
    assigner["task_groups"].append({"name": EVALUATION_GROUP, "percentage": 1.0, "tasks": [EVALUATED_TASK]})
    assigner["selected_task_group"] = EVALUATION_GROUP
    aggregator = plan["aggregator"]["settings"]
    aggregator["rounds_to_train"] = 1
    aggregator["persist_checkpoint"] = False  # OpenFL skips it in evaluation anyway; say so in the plan
    return plan


def parse_sites(layout: FederationLayout, manifest: Manifest, values: list[str] | None) -> list[tuple[str, Path | None]]:
    """`--collaborator NAME[=DATA]`: a training site by name (its own data, or DATA instead) or a new
    site with DATA. Without any, every training site whose data this machine knows."""
    if not values:
        known = [(name, None) for name in manifest.collaborators if collaborator_data_folder(layout, name)]
        if not known:
            raise CofeError("no site's data is known here to evaluate on",
                            hint="give --collaborator NAME=DATA (a folder with valid.csv, or one CSV) for each site")
        return known
    parsed = []
    for name, data in parse_site_arguments(values):
        if data is None and name not in manifest.collaborators:
            raise CofeError(f"{name!r} did not train in this federation, so its data is unknown here",
                            hint=f"give its data: --collaborator {name}=FOLDER_OR_CSV")
        if data is None and collaborator_data_folder(layout, name) is None:
            raise CofeError(f"{name}'s data is not known on this machine",
                            hint=f"give it: --collaborator {name}=FOLDER_OR_CSV")
        parsed.append((name, data.resolve() if data else None))
    return parsed


def build_evaluation(layout: FederationLayout, manifest: Manifest, sites: list[tuple[str, Path | None]],
                     model_pbuf: Path) -> tuple[FederationLayout, Manifest, list[EvaluationSite]]:
    """Write FED/evaluation/ (plans, workspaces, the new sites' data, every participant's certificate)."""
    from cofe_cli.pki.authority import CertificateAuthority
    from cofe_cli.pki.workspace_certs import CertPaths, refresh_chain

    gandlf_config = yaml.safe_load((layout.plans / GANDLF_FILE).read_text()) or {}
    expected = expectations_of(gandlf_config)
    plan_yaml = dump_yaml(evaluation_plan(yaml.safe_load((layout.plans / PLAN_FILE).read_text())))
    evaluation = evaluation_layout(layout)
    new_sites = [name for name, _ in sites if name not in manifest.collaborators]
    if new_sites and not CertificateAuthority.exists(layout.ca):
        raise CofeError(f"{layout.root} holds no CA to certify {', '.join(new_sites)}",
                        hint="evaluate at the coordinator that holds the federation's CA (`cofe certify ca`)")
    eval_manifest = Manifest(
        name=f"{manifest.name}-evaluation", collaborators=tuple(name for name, _ in sites), rounds=1,
        aggregator_address=manifest.aggregator_address, aggregator_port=manifest.aggregator_port,
        algorithm=manifest.algorithm, plan_sha384=plan_hash(plan_yaml), versions=manifest.versions,
        init_model_sha384=file_sha384(model_pbuf))  # the evaluated model is this federation's initial one
    chosen: list[EvaluationSite] = []
    with staged_dir(evaluation.root) as stage_root:
        stage = FederationLayout(stage_root)
        entries = []
        for name, data in sites:
            if data is not None and data.is_file():
                summary = evaluation_only_data(data, stage.participant(name).data_dir, **expected)
                folder = evaluation.participant(name).data_dir
            else:
                folder = data or collaborator_data_folder(layout, name)
                summary = check_data_folder(folder, **expected)
            entries.append(CollaboratorData(name, folder))
            chosen.append(EvaluationSite(name, folder, summary.valid_subjects, name in manifest.collaborators))
        build_federation(stage, plan_yaml, gandlf_config, eval_manifest, entries)
        shutil.copyfile(model_pbuf, stage.aggregator().save_dir / INIT_MODEL)
        for participant in (AGGREGATOR, *(site.name for site in chosen if site.trained)):
            source = layout.participant(participant, manifest)
            if not CertPaths.of(source).present():
                raise CofeError(f"{participant} has no certificate in {layout.root}",
                                hint=f"run `cofe certify --dir {layout.root}` first")
            shutil.copytree(source.cert_dir, stage.participant(participant).cert_dir, dirs_exist_ok=True)
        if new_sites:
            ca = CertificateAuthority.load(layout.ca)
            for name in new_sites:
                site = stage.participant(name)
                ca.issue_client_cert(name).write(site.cert, site.key)
                refresh_chain(CertPaths.of(site), ca.chain_pem())
    return evaluation, eval_manifest, chosen
