"""`cofe export model --format hf`: a folder in the layout GaNDLF's Hugging Face integration (`gandlf hf`)
uploads and downloads: the GaNDLF model directory's files plus a model card. Only an allowlist of files is
ever copied in, so no key, certificate, CSV or patient file can reach a published package."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, task_runner_settings
from cofe_cli.engine.gandlf_model import BEST_SUFFIX, CONFIG_FILE, LATEST_SUFFIX, MODEL_DIR  # names only: no torch
from cofe_cli.fsutil import staged_dir
from cofe_cli.launch.report import EVALUATION_FILE, METRICS_FILE
from cofe_cli.model_export.card import model_card, read_csv_rows

CHECKPOINT_SUFFIXES = (BEST_SUFFIX, LATEST_SUFFIX)
PROVENANCE_FILE = "cofe_provenance.json"


@dataclass(frozen=True)
class HubPackage:
    path: Path
    files: list[str]


def model_dir_of(layout: FederationLayout) -> Path:
    model_dir = layout.results / MODEL_DIR
    if not (model_dir / CONFIG_FILE).is_file():
        raise CofeError(f"{layout.root} has no trained model yet ({model_dir} is missing)",
                        hint=f"train the federation first: `cofe run --dir {layout.root}`")
    return model_dir


def package_for_hub(layout: FederationLayout, out: Path, *, force: bool = False, onnx: bool = False,
                    name_sites: bool = False) -> HubPackage:
    manifest = layout.load_manifest()
    model_dir = model_dir_of(layout)
    out = Path(out).expanduser().resolve()
    if out.exists() and not force:
        raise CofeError(f"{out} already exists", hint="pass --force to replace it, or choose another --out")
    protected = (layout.plans, layout.workspaces, layout.ca, layout.results)
    if out == layout.root or out in layout.root.parents or any(out == p or p in out.parents for p in protected):
        # The package replaces --out whole: it must never be the federation or a part of it.
        raise CofeError(f"--out {out} would replace the federation or a part of it",
                        hint="write the package to a folder of its own, e.g. --out ./model-package")
    gandlf_config = yaml.safe_load((model_dir / CONFIG_FILE).read_text()) or {}
    # The exported config leaves differential_privacy out (GaNDLF's inference crashes on it): the plan has it.
    privacy = (task_runner_settings(layout).get("gandlf_config") or {}).get("differential_privacy")
    architecture = (gandlf_config.get("model") or {}).get("architecture", "")
    checkpoints = [f"{architecture}{suffix}" for suffix in CHECKPOINT_SUFFIXES if (model_dir / f"{architecture}{suffix}").is_file()]
    if not checkpoints:
        raise CofeError(f"{model_dir} holds no {architecture} checkpoint", hint=f"train again: `cofe run --dir {layout.root} --restart`")
    with staged_dir(out) as stage:
        for name in (CONFIG_FILE, *checkpoints):
            shutil.copyfile(model_dir / name, stage / name)
        if onnx:
            from cofe_cli.engine.gandlf_model import export_onnx

            export_onnx(stage / checkpoints[0], stage / CONFIG_FILE, stage)
        provenance = {
            "federation": manifest.name, "plan_sha384": manifest.plan_sha384, "rounds": manifest.rounds,
            "algorithm": manifest.algorithm, "sites": len(manifest.collaborators),
            "site_names": list(manifest.collaborators) if name_sites else None, "versions": manifest.versions,
            "differential_privacy": privacy, "secure_aggregation": False,
        }
        (stage / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        files = sorted([*(p.name for p in stage.iterdir()), "README.md"])
        card = model_card(manifest=manifest, gandlf_config={**gandlf_config, "differential_privacy": privacy},
                          metrics_rows=read_csv_rows(layout.results / METRICS_FILE),
                          evaluation_rows=read_csv_rows(layout.results / EVALUATION_FILE), files=files,
                          name_sites=name_sites)
        (stage / "README.md").write_text(card)
    return HubPackage(out, files)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise CofeError(f"{repo_id!r} is not a Hugging Face repository id ({str(error).splitlines()[0]})",
                        hint="write ORG/NAME, e.g. --push my-lab/brats-federated-resunet") from None
    if "/" not in repo_id:
        raise CofeError(f"{repo_id!r} names no owner", hint="write ORG/NAME, e.g. --push my-lab/brats-federated-resunet")
    return repo_id


def push(package: Path, repo_id: str, *, token: str | None = None) -> str:
    """Upload the package as a model repository; returns its URL. Every failure is one CofeError."""
    from huggingface_hub import HfApi, get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise CofeError("no Hugging Face token to upload with",
                        hint="create a write token at huggingface.co/settings/tokens, then `export HF_TOKEN=...` or pass --token")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(package), repo_type="model",
                                   commit_message="Federated model exported by cofe")
    except Exception as error:  # requests' connection errors and the Hub's HTTP errors alike
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CofeError(f"could not upload to the Hugging Face Hub ({type(error).__name__}: {reason})",
                        hint="check the network, the token's write access and the repository id, then run the same "
                             "command again") from None
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
