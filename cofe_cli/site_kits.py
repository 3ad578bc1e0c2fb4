"""Site kits: everything one participant needs from the coordinator, and nothing secret.

`cofe export collaborator NAME` / `cofe export aggregator` write a gzip tar:

    kit.json                       the manifest below
    plans/plan.yaml, cols.yaml, gandlf_config.yaml, federation.yaml    the frozen plan, byte for byte
    plans/init.pbuf                (aggregator kits, when the coordinator has it) the initial model
    cert/cert_chain.crt            the CA chain (signing CA + root); never a private key
    data-template/train.csv, valid.csv   (collaborator kits) header-only GaNDLF CSVs for this model
    README.txt                     what the site's IT person does with it

kit.json: {"format": "cofe-site-kit", "version": 1, "federation": NAME, "participant": "hospital_a",
"role": "collaborator" | "aggregator", "aggregator": {"address", "port"}, "plan_sha384": HEX (what
`cofe_cli.federation.plan_hash` gives for plans/plan.yaml, and federation.yaml's plan_sha384),
"root_fingerprint": "AB:CD:..." (SHA-256 of the chain's root), "data_template": {"problem_type",
"columns"} (collaborators), "created", "cofe_version", "files": {member: sha256 hex} for every member
but kit.json}.

`cofe import` reads it with `read_archive` (regular files with expected names only, bounded sizes,
bounded unpacked size and ratio; the initial model streamed to disk) into a staging folder inside
SITE, checks every hash, refuses a plan whose hash is not kit.json's and federation.yaml's ("the plan
was edited after export"), an initial model whose SHA-384 is not federation.yaml's, and an initial
model in a collaborator's kit, then renames SITE/plans/ and SITE/workspaces/<name>/ into place.

The federation fingerprint it prints (`Manifest.fingerprint`: SHA-384 over the plan's and the
initial model's SHA-384) is read back to the coordinator. That is what catches a kit whose kit.json
and federation.yaml were rewritten along with its plan or its initial model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cofe_cli import __version__
from cofe_cli.archive import (
    FORMAT_VERSION,
    ArchiveSpec,
    StreamedMember,
    group_hex,
    json_bytes,
    load_json_member,
    now_iso,
    read_archive,
    write_archive,
)
from cofe_cli.errors import CofeError
from cofe_cli.federation import (
    FederationLayout,
    Manifest,
    check_collaborator_name,
    check_initial_model,
    check_plan_unchanged,
    plan_hash,
)
from cofe_cli.fsutil import atomic_write_bytes, staging_folder, swap_in
from cofe_cli.locks import federation_locked
from cofe_cli.participant import CERT_DIR, CHAIN_FILE, PLAN_DIR, Participant, is_aggregator, role_of
from cofe_cli.pki.authority import CertificateAuthority
from cofe_cli.pki.workspace_certs import CertPaths
from cofe_cli.pki.x509 import chain_root_fingerprint
from cofe_cli.plan.builder import INIT_STATE_PATH
from cofe_cli.plan.data import TRAIN_CSV, VALID_CSV, check_site_data, problem_type_of
from cofe_cli.plan.workspaces import COLS_FILE, GANDLF_FILE, INIT_MODEL, PLAN_FILE, collaborator_data_folder, write_workspace

KIT_FORMAT = "cofe-site-kit"
KIT_SUFFIX = "-kit.tar.gz"
KIT_JSON = "kit.json"
MANIFEST_FILE = "federation.yaml"
PLAN_MEMBERS = tuple(f"plans/{name}" for name in (PLAN_FILE, COLS_FILE, GANDLF_FILE, MANIFEST_FILE))
PLAN_MEMBER = f"plans/{PLAN_FILE}"
MANIFEST_MEMBER = f"plans/{MANIFEST_FILE}"
INIT_MEMBER = f"plans/{INIT_MODEL}"
CHAIN_MEMBER = f"{CERT_DIR}/{CHAIN_FILE}"
TEMPLATE_FOLDER = "data-template"
TEMPLATE_MEMBERS = (f"{TEMPLATE_FOLDER}/{TRAIN_CSV}", f"{TEMPLATE_FOLDER}/{VALID_CSV}")
README_MEMBER = "README.txt"

_MiB = 1024 * 1024
_KIT_HINT = "ask the coordinator for the kit `cofe export` wrote, and copy it again (the whole file)"
# Only the aggregator's kit carries a large member, the initial model (random weights: it hardly
# compresses). A kit unpacks to at most 16 times its size, 64 MiB whatever its size, 2 GiB and a bit in all.
KIT_ARCHIVE = ArchiveSpec(
    "site kit",
    {KIT_JSON: _MiB, **{name: 16 * _MiB for name in PLAN_MEMBERS}, INIT_MEMBER: 2048 * _MiB,
     CHAIN_MEMBER: 64 * 1024, **{name: 64 * 1024 for name in TEMPLATE_MEMBERS}, README_MEMBER: 64 * 1024},
    frozenset({KIT_JSON, *PLAN_MEMBERS, CHAIN_MEMBER, README_MEMBER}),
    _KIT_HINT,
    max_archive_bytes=2112 * _MiB,
    streamed=frozenset({INIT_MEMBER}),
    max_ratio=16,
    ratio_floor=64 * _MiB,
)
_FRESH_KIT_HINT = "do not use this kit; ask the coordinator for a fresh one (`cofe export`)"


def _sha256(data: bytes | StreamedMember) -> str:
    return data.sha256 if isinstance(data, StreamedMember) else hashlib.sha256(data).hexdigest()


def _place(content: bytes | StreamedMember, target: Path) -> None:
    """Write a member where it belongs, atomically. A streamed one (the initial model, maybe GiBs) is
    linked from where it was read to, in the same staging folder: no second copy on disk."""
    if not isinstance(content, StreamedMember):
        atomic_write_bytes(target, content)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        os.link(content.path, partial)
    except OSError:  # a file system without hard links
        shutil.copyfile(content.path, partial)
    os.replace(partial, target)


def data_template(gandlf_config: dict) -> tuple[str | None, list[str]]:
    """The GaNDLF CSV header this model needs: SubjectID, one Channel_i per input channel, then the target."""
    problem_type = problem_type_of(gandlf_config)
    channels = (gandlf_config.get("model") or {}).get("num_channels") or 1
    target = "Label" if problem_type == "segmentation" else "ValueToPredict"
    return problem_type, ["SubjectID", *(f"Channel_{i}" for i in range(int(channels))), target]


def _readme(manifest: Manifest, this: Participant, kit_file: str, root_fingerprint: str, columns: list[str]) -> str:
    name = this.name
    identity = group_hex(manifest.fingerprint())
    endpoint = f"{manifest.aggregator_address}:{manifest.aggregator_port}"
    if this.is_aggregator:
        steps = f"""\
1. cofe import {kit_file} --dir SITE
   SITE is a new folder. Read the federation fingerprint it prints back to the coordinator
   (it covers the plan and the initial model); it must be:
   {identity}
2. cofe certify request --dir SITE [--san OTHER.NAME ...]
   Makes this aggregator's private key (it stays in SITE/workspaces/aggregator/cert/server/,
   mode 0600, and never leaves) and aggregator.csr.tar.gz. The certificate names {manifest.aggregator_address}
   (the address in the plan); --san adds other names or IPs the sites may dial.
   Send the .csr.tar.gz to the coordinator and read out the request hash it prints.
3. When aggregator-signed.tar.gz comes back:
   cofe certify install aggregator-signed.tar.gz --dir SITE --expect-root-fingerprint FINGERPRINT
   with the root fingerprint the coordinator reads out to you (this kit says {root_fingerprint};
   trust what you hear from the coordinator, not a file that came with the same message).
4. cofe start aggregator --dir SITE
   Open TCP port {manifest.aggregator_port} to the sites; they dial {endpoint}.
   Revoked sites: put the coordinator's crl.pem at SITE/workspaces/aggregator/cert/crl.pem."""
    else:
        steps = f"""\
1. cofe import {kit_file} --dir SITE --data /path/to/data
   SITE is a new folder; /path/to/data holds GaNDLF's train.csv and valid.csv, with the columns
   of data-template/: {",".join(columns)}
   (one row per subject; Channel_* and Label are paths to image files, relative to the CSV's folder
   or absolute). Read the federation fingerprint it prints back to the coordinator
   (it covers the plan and the initial model); it must be:
   {identity}
2. cofe certify request --dir SITE
   Makes this site's private key (it stays in SITE/workspaces/{name}/cert/client/, mode 0600,
   and never leaves this machine) and {name}.csr.tar.gz, which holds no secret.
   Send the .csr.tar.gz to the coordinator and read out the request hash it prints.
3. When {name}-signed.tar.gz comes back:
   cofe certify install {name}-signed.tar.gz --dir SITE --expect-root-fingerprint FINGERPRINT
   with the root fingerprint the coordinator reads out to you (this kit says {root_fingerprint};
   trust what you hear from the coordinator, not a file that came with the same message).
4. cofe start collaborator {name} --dir SITE
   Needs outgoing TCP to the aggregator, {endpoint}. Patient data never leaves this machine."""
    return f"""\
cofe site kit: {name} ({this.role}) of the federation {manifest.name!r}

This archive holds the federation's plan and its CA chain: no private key, no other participant's
certificate. On the machine that runs {name}, with cofe installed:

{steps}
"""


@dataclass
class ExportResult:
    name: str
    role: str
    path: Path
    plan_sha384: str
    fingerprint: str
    root_fingerprint: str
    members: list[str]
    warnings: list[str] = field(default_factory=list)


def export_kit(layout: FederationLayout, name: str, *, out: Path | None = None, force: bool = False) -> ExportResult:
    manifest = layout.load_manifest()
    if not is_aggregator(name):
        check_collaborator_name(name)
        manifest.require_collaborator(name)
    this = layout.participant(name, manifest)
    if not CertificateAuthority.exists(layout.ca):
        raise CofeError(f"{layout.root} has no CA yet", hint=f"make it first: `cofe certify ca --dir {layout.root}`")
    ca = CertificateAuthority.load(layout.ca)
    check_plan_unchanged(layout, manifest)
    fingerprint = manifest.fingerprint()  # refuses a manifest that records no initial model
    members: dict[str, bytes] = {}
    for member in PLAN_MEMBERS:
        path = layout.plans / member.split("/", 1)[1]
        if not path.is_file():
            raise CofeError(f"{path} is missing", hint="re-create the federation with `cofe init --force`")
        members[member] = path.read_bytes()
    warnings = []
    if this.is_aggregator:
        if (layout.plans / INIT_MODEL).is_file():
            check_initial_model(layout.plans / INIT_MODEL, manifest)
            members[INIT_MEMBER] = (layout.plans / INIT_MODEL).read_bytes()
        else:
            warnings.append(f"{layout.plans / INIT_MODEL} is missing: the aggregator cannot start without the initial "
                            "model (`cofe init` writes it)")
    chain = ca.chain_pem()
    members[CHAIN_MEMBER] = chain
    gandlf_config = yaml.safe_load(members[f"plans/{GANDLF_FILE}"]) or {}
    problem_type, columns = data_template(gandlf_config)
    if not this.is_aggregator:
        header = (",".join(columns) + "\n").encode()
        members.update({member: header for member in TEMPLATE_MEMBERS})
    out = Path(out).expanduser() if out else Path(f"{name}{KIT_SUFFIX}")
    members[README_MEMBER] = _readme(manifest, this, out.name, ca.root_fingerprint(), columns).encode()
    kit = {
        "format": KIT_FORMAT, "version": FORMAT_VERSION, "federation": manifest.name,
        "participant": name, "role": this.role,
        "aggregator": {"address": manifest.aggregator_address, "port": manifest.aggregator_port},
        "plan_sha384": manifest.plan_sha384, "root_fingerprint": ca.root_fingerprint(),
    }
    if not this.is_aggregator:
        kit["data_template"] = {"problem_type": problem_type, "columns": columns}
    kit |= {"created": now_iso(), "cofe_version": __version__,
            "files": {member: _sha256(data) for member, data in members.items()}}
    write_archive(out, {KIT_JSON: json_bytes(kit), **members}, force=force)
    return ExportResult(name, this.role, out, manifest.plan_sha384, fingerprint, ca.root_fingerprint(),
                        [KIT_JSON, *members], warnings)


# ---------------------------------------------------------------- import


@dataclass
class ImportResult:
    name: str
    role: str
    federation: str
    plan_sha384: str
    fingerprint: str
    root_fingerprint: str
    aggregator: str
    workspace: Path
    plans_action: str  # created, kept, replaced
    workspace_action: str  # created, updated
    data_folder: Path | None
    template: Path | None
    warnings: list[str] = field(default_factory=list)


def _kit_manifest(members: dict[str, bytes], source: Path) -> dict:
    kit = load_json_member(members, KIT_JSON, expected_format=KIT_FORMAT, source=source, hint=_KIT_HINT)
    participant, role, files = kit.get("participant"), kit.get("role"), kit.get("files")
    plan, fingerprint = kit.get("plan_sha384"), kit.get("root_fingerprint")
    if not (isinstance(participant, str) and isinstance(role, str) and isinstance(files, dict)
            and isinstance(plan, str) and isinstance(fingerprint, str)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise CofeError(f"{source}: kit.json lacks participant, role, plan_sha384, root_fingerprint or files",
                        hint=_KIT_HINT)
    if not is_aggregator(participant):
        check_collaborator_name(participant)
    if role != role_of(participant):
        raise CofeError(f"{source}: kit.json says {participant} is the {role}", hint=_KIT_HINT)
    return kit


def _check_members(kit: dict, members: dict[str, bytes | StreamedMember], source: Path) -> Manifest:
    name = kit["participant"]
    listed, present = set(kit["files"]), set(members) - {KIT_JSON}
    if listed != present:
        extra, missing = sorted(present - listed), sorted(listed - present)
        detail = "; ".join(part for part in (f"not listed: {', '.join(extra)}" if extra else "",
                                             f"missing: {', '.join(missing)}" if missing else "") if part)
        raise CofeError(f"{source}: the archive's files are not the ones kit.json lists ({detail})", hint=_KIT_HINT)
    collaborator = not is_aggregator(name)
    if collaborator and not set(TEMPLATE_MEMBERS) <= present:
        raise CofeError(f"{source}: the data template is missing", hint=_KIT_HINT)
    if collaborator and INIT_MEMBER in present:
        raise CofeError(f"{source}: a collaborator's kit carries {INIT_MEMBER}; only the aggregator's does "
                        "(a collaborator receives the model from the aggregator)", hint=_FRESH_KIT_HINT)
    try:
        actual_plan = plan_hash(members[PLAN_MEMBER].decode("utf-8"))
        manifest = Manifest.from_dict(yaml.safe_load(members[MANIFEST_MEMBER]))
    except (UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise CofeError(f"{source}: the plan or federation.yaml cannot be read ({type(error).__name__})",
                        hint=_KIT_HINT) from None
    if not actual_plan == kit["plan_sha384"].lower() == manifest.plan_sha384.lower():
        raise CofeError(f"{source}: the plan was edited after export (its SHA-384 {actual_plan[:16]}... is not the "
                        f"federation's {kit['plan_sha384'][:16]}...)", hint=_FRESH_KIT_HINT)
    for member in sorted(listed):
        if _sha256(members[member]) != kit["files"][member].lower():
            raise CofeError(f"{source}: {member} was changed after export (its SHA-256 is not the one kit.json lists)",
                            hint=_FRESH_KIT_HINT)
    recorded_model = manifest.recorded_init_model_sha384()  # a kit of an older cofe: no fingerprint to read back
    init_model = members.get(INIT_MEMBER)
    if isinstance(init_model, StreamedMember) and init_model.sha384 != recorded_model:
        raise CofeError(f"{source}: the initial model was changed after export (its SHA-384 {init_model.sha384[:16]}... "
                        f"is not the {recorded_model[:16]}... federation.yaml records)", hint=_FRESH_KIT_HINT)
    if collaborator and name not in manifest.collaborators:
        raise CofeError(f"{source}: the kit is for {name!r}, which its plan does not list", hint=_KIT_HINT)
    try:
        cols = yaml.safe_load(members[f"plans/{COLS_FILE}"]) or {}
        collaborators = list(cols.get("collaborators") or [])
    except (yaml.YAMLError, AttributeError):
        collaborators = None
    if collaborators != list(manifest.collaborators):
        raise CofeError(f"{source}: cols.yaml and federation.yaml list different collaborators", hint=_KIT_HINT)
    aggregator = kit.get("aggregator") or {}
    if (aggregator.get("address"), aggregator.get("port")) != (manifest.aggregator_address, manifest.aggregator_port):
        raise CofeError(f"{source}: kit.json and federation.yaml name different aggregators", hint=_KIT_HINT)
    fingerprint = chain_root_fingerprint(members[CHAIN_MEMBER])
    if fingerprint != kit["root_fingerprint"].upper():
        raise CofeError(f"{source}: the CA chain's root is not the one kit.json names", hint=_KIT_HINT)
    return manifest


def _plans_state(site: FederationLayout, plan_files: dict[str, bytes], force: bool) -> str:
    if not site.plans.exists():
        return "created"
    same = all((site.plans / name).is_file() and (site.plans / name).read_bytes() == data
               for name, data in plan_files.items() if name != INIT_MODEL)
    if same:
        return "kept"
    if not force:
        raise CofeError(f"{site.plans} already holds another plan",
                        hint="pass --force to replace it (workspaces keep their keys), or import into another --dir")
    return "replaced"


@dataclass
class CheckedKit:
    """A kit read and checked against the site: what importing it changes there, nothing written yet."""

    source: Path
    kit: dict
    manifest: Manifest
    plan_files: dict[str, bytes | StreamedMember]  # plans/NAME: content
    plans_action: str  # created, kept, replaced
    workspace_action: str  # created, updated
    workspace_files: dict[str, bytes | StreamedMember]  # relative to the workspace, beside its plan/
    data_folder: Path | None
    warnings: list[str]

    @property
    def name(self) -> str:
        return self.kit["participant"]


def import_kit(kit_path: Path, site_dir: Path, *, data: Path | None = None, force: bool = False) -> ImportResult:
    """Validate, stage, swap: the site changes only once everything is checked and built beside it."""
    source = Path(kit_path).expanduser()
    site = FederationLayout(site_dir)
    # Inside the site: the kit is read into it, and renames, not copies, put what is built there in place.
    with staging_folder(site.root, prefix=".cofe-import-") as stage_root:
        stage = FederationLayout(stage_root)
        members = read_archive(source, KIT_ARCHIVE, stream_to=stage.root / "incoming")
        with federation_locked(site):  # refused while a run or a participant uses the site directory
            checked = validate_kit(members, source, site, data=data, force=force)
            stage_kit(checked, stage)
            swap_kit(checked, site, stage)
    name, manifest = checked.name, checked.manifest
    this = site.participant(name, manifest)
    workspace = this.workspace
    template = None if this.is_aggregator else workspace / TEMPLATE_FOLDER
    return ImportResult(name, checked.kit["role"], manifest.name, manifest.plan_sha384, manifest.fingerprint(),
                        checked.kit["root_fingerprint"], f"{manifest.aggregator_address}:{manifest.aggregator_port}",
                        workspace, checked.plans_action, checked.workspace_action,
                        None if this.is_aggregator else checked.data_folder, template, checked.warnings)


def validate_kit(members: dict[str, bytes | StreamedMember], source: Path, site: FederationLayout, *,
                 data: Path | None, force: bool) -> CheckedKit:
    """Check the kit's members, the site's data and what the site already holds; decide what goes where."""
    kit = _kit_manifest(members, source)
    manifest = _check_members(kit, members, source)
    name = kit["participant"]
    this = site.participant(name, manifest)
    gandlf_config = yaml.safe_load(members[f"plans/{GANDLF_FILE}"]) or {}
    if data is not None:
        if this.is_aggregator:
            raise CofeError("the aggregator has no data of its own; --data is for a collaborator's kit", hint="drop --data")
        data = Path(data).expanduser().resolve()
        check_site_data(data, gandlf_config)

    plan_files = {member.split("/", 1)[1]: members[member]
                  for member in (*PLAN_MEMBERS, INIT_MEMBER) if member in members}
    plans_action = _plans_state(site, plan_files, force)
    workspace = this.workspace
    if workspace.exists() and not force:
        raise CofeError(f"{site.root} already holds {name}'s workspace",
                        hint="pass --force to import the kit again (its key, certificates and data setting are kept)")
    workspace_action = "updated" if workspace.exists() else "created"
    warnings: list[str] = []
    previous_data = collaborator_data_folder(site, name) if workspace.exists() and not this.is_aggregator else None
    workspace_files = {KIT_JSON: members[KIT_JSON], README_MEMBER: members[README_MEMBER]}
    if not this.is_aggregator:
        workspace_files |= {member: members[member] for member in TEMPLATE_MEMBERS}
    elif INIT_MEMBER in members:
        workspace_files[INIT_STATE_PATH] = members[INIT_MEMBER]
    paths = CertPaths.of(this)
    chain = members[CHAIN_MEMBER]
    if not paths.cert.is_file() or not paths.chain.is_file() or paths.chain.read_bytes() == chain:
        workspace_files[str(paths.chain.relative_to(workspace))] = chain
    else:
        warnings.append(f"{name}'s certificate here comes from another CA than this kit's; make a new request "
                        f"(`cofe certify request --dir {site.root} --force`) and have it signed")
    return CheckedKit(source, kit, manifest, plan_files, plans_action, workspace_action, workspace_files,
                      data or previous_data, warnings)


def stage_kit(checked: CheckedKit, stage: FederationLayout) -> None:
    """Build the site's new plans/ and the participant's workspace in the staging folder; the site is untouched."""
    for filename, content in checked.plan_files.items():
        _place(content, stage.plans / filename)
    name = checked.name
    write_workspace(stage, name, {name: str(checked.data_folder)} if checked.data_folder else {})
    for relative, content in checked.workspace_files.items():
        _place(content, stage.workspace(name) / relative)


def swap_kit(checked: CheckedKit, site: FederationLayout, stage: FederationLayout) -> None:
    """Put what `stage_kit` built in place, by renames only."""
    if checked.plans_action in ("created", "replaced"):
        swap_in(stage.plans, site.plans, stage.root)
    elif INIT_MODEL in checked.plan_files:  # plans kept: the aggregator's kit joins a site
        swap_in(stage.plans / INIT_MODEL, site.plans / INIT_MODEL, stage.root)
    staged, workspace = stage.workspace(checked.name), site.workspace(checked.name)
    if checked.workspace_action == "created":
        swap_in(staged, workspace, stage.root)
        return
    # An existing workspace keeps cert/, save/, logs/ and local_state/: only its plan/ and the kit's files are swapped.
    for relative in (PLAN_DIR, *checked.workspace_files):
        swap_in(staged / relative, workspace / relative, stage.root)
