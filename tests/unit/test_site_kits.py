"""Site kits through the real CLI: `cofe export` at the coordinator (FED), `cofe import` at a site (SITE).

No torch: the federation is made with cofe's own builders (a stand-in init.pbuf), and the CA once per module.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cli_assertions import ok, refused
from unit_federation import gandlf_config, write_federation
from volumes import write_volume

from cofe_cli import site_kits
from cofe_cli.archive import read_archive
from cofe_cli.federation import AGGREGATOR, FederationLayout, federation_fingerprint, plan_hash
from cofe_cli.pki import CertificateAuthority
from cofe_cli.plan.workspaces import CollaboratorData, collaborator_data_folder

COLLABORATORS = ("hospital_a", "hospital_b")
ADDRESS = "fl.example.org"
TIMEOUT_S = 60
GANDLF_CONFIG = gandlf_config(channels=2)
KIT_MEMBERS = {"kit.json", "plans/plan.yaml", "plans/cols.yaml", "plans/gandlf_config.yaml", "plans/federation.yaml",
               "cert/cert_chain.crt", "README.txt"}
TEMPLATE = {"data-template/train.csv", "data-template/valid.csv"}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cofe(*args: str | Path, cwd: Path) -> Result:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    done = subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)


def make_federation(root: Path, address: str = ADDRESS) -> FederationLayout:
    return write_federation(root, config=GANDLF_CONFIG, address=address,
                            collaborators=[CollaboratorData(name, None) for name in COLLABORATORS])


def write_data(folder: Path, channels: int = 2) -> Path:
    """A segmentation site with `channels` image columns, each a real (tiny) volume."""
    header = ["SubjectID", *(f"Channel_{i}" for i in range(channels)), "Label"]
    for name, subjects in (("train.csv", ["s1", "s2"]), ("valid.csv", ["s3"])):
        rows = []
        for subject in subjects:
            row = [subject]
            for column in header[1:]:
                row.append(str(write_volume(folder / f"{subject}_{column}.nii.gz")))
            rows.append(row)
        with open(folder / name, "w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
    return folder


def members_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isreg()}


def write_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def tree(root: Path) -> dict[str, tuple[bytes, int] | None]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ((p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- one coordinator per module


@dataclass
class Coordinator:
    root: Path
    fed: FederationLayout
    ca: CertificateAuthority
    kit_a: Path
    kit_agg: Path
    export_stdout: str


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory) -> Coordinator:
    root = tmp_path_factory.mktemp("kits")
    fed = make_federation(root / "FED")
    ok(cofe("certify", "ca", "--dir", fed.root, cwd=root))
    exported = ok(cofe("export", "collaborator", "hospital_a", "--dir", fed.root, "-o", root / "hospital_a-kit.tar.gz",
                       cwd=root))
    ok(cofe("export", "aggregator", "--dir", fed.root, cwd=root))  # default name, here
    return Coordinator(root, fed, CertificateAuthority.load(fed.ca), root / "hospital_a-kit.tar.gz",
                       root / "aggregator-kit.tar.gz", exported.stdout)


def grouped(hex_digits: str) -> str:
    digits = hex_digits.upper()
    return " ".join(digits[i:i + 4] for i in range(0, len(digits), 4))


# ---------------------------------------------------------------- export


def test_collaborator_kit_holds_the_plan_the_chain_a_template_and_no_key(coordinator: Coordinator) -> None:
    members = members_of(coordinator.kit_a)
    assert set(members) == KIT_MEMBERS | TEMPLATE
    for name, data in members.items():
        assert b"PRIVATE KEY" not in data, name
    for name in ("plan.yaml", "cols.yaml", "gandlf_config.yaml", "federation.yaml"):
        assert members[f"plans/{name}"] == (coordinator.fed.plans / name).read_bytes()
    assert members["cert/cert_chain.crt"] == coordinator.ca.chain_pem()
    # Only the CA's two certificates: no participant's certificate travels in a kit.
    assert members["cert/cert_chain.crt"].count(b"BEGIN CERTIFICATE") == 2
    assert b"BEGIN CERTIFICATE" not in b"".join(data for name, data in members.items() if name != "cert/cert_chain.crt")
    for name in TEMPLATE:
        assert members[name] == b"SubjectID,Channel_0,Channel_1,Label\n"
    assert "cofe import" in members["README.txt"].decode() and "cofe certify request" in members["README.txt"].decode()


def test_kit_json_describes_every_member(coordinator: Coordinator) -> None:
    members = members_of(coordinator.kit_a)
    kit = json.loads(members["kit.json"])
    plan = (coordinator.fed.plans / "plan.yaml").read_text()
    assert kit["format"] == "cofe-site-kit" and kit["version"] == 1
    assert (kit["participant"], kit["role"], kit["federation"]) == ("hospital_a", "collaborator", "unit-fed")
    assert kit["plan_sha384"] == plan_hash(plan) == coordinator.fed.load_manifest().plan_sha384
    assert kit["root_fingerprint"] == coordinator.ca.root_fingerprint()
    assert kit["aggregator"] == {"address": ADDRESS, "port": 50051}
    assert kit["data_template"] == {"problem_type": "segmentation", "columns": ["SubjectID", "Channel_0", "Channel_1", "Label"]}
    assert set(kit["files"]) == set(members) - {"kit.json"}
    for name, digest in kit["files"].items():
        assert hashlib.sha256(members[name]).hexdigest() == digest, name
    assert grouped(coordinator.fed.load_manifest().fingerprint()) in coordinator.export_stdout
    assert coordinator.ca.root_fingerprint() in coordinator.export_stdout


def test_aggregator_kit_carries_the_initial_model_and_no_template(coordinator: Coordinator) -> None:
    members = members_of(coordinator.kit_agg)
    assert set(members) == KIT_MEMBERS | {"plans/init.pbuf"}
    assert members["plans/init.pbuf"] == (coordinator.fed.plans / "init.pbuf").read_bytes()
    kit = json.loads(members["kit.json"])
    assert (kit["participant"], kit["role"]) == (AGGREGATOR, "aggregator")
    assert not any(b"PRIVATE KEY" in data for data in members.values())


def test_export_refusals(coordinator: Coordinator, tmp_path: Path) -> None:
    fed = coordinator.fed.root
    refused(cofe("export", "collaborator", "hospital_z", "--dir", fed, "-o", tmp_path / "z.tar.gz", cwd=tmp_path),
            "the plan has no collaborator 'hospital_z'")
    refused(cofe("export", "collaborator", "hospital_a", "--dir", fed, "-o", coordinator.kit_a, cwd=tmp_path),
            "already exists")
    no_ca = make_federation(tmp_path / "NOCA")
    refused(cofe("export", "collaborator", "hospital_a", "--dir", no_ca.root, cwd=tmp_path), "has no CA yet")
    assert not list(tmp_path.glob("*.tar.gz"))


# ---------------------------------------------------------------- import


def test_import_builds_the_site_from_the_kit(coordinator: Coordinator, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data_a")
    result = ok(cofe("import", coordinator.kit_a, "--dir", tmp_path / "SITE", "--data", data, cwd=tmp_path))
    site = FederationLayout(tmp_path / "SITE")
    for name in ("plan.yaml", "cols.yaml", "gandlf_config.yaml", "federation.yaml"):
        assert (site.plans / name).read_bytes() == (coordinator.fed.plans / name).read_bytes()
    manifest = site.load_manifest()  # what `cofe start` loads
    assert grouped(manifest.fingerprint()) in result.stdout
    assert manifest.fingerprint() == coordinator.fed.load_manifest().fingerprint()
    assert sorted(p.name for p in site.workspaces.iterdir()) == ["hospital_a"], "only this site's workspace"
    workspace = site.workspace("hospital_a")
    assert (workspace / "plan" / "plan.yaml").read_bytes() == (site.plans / "plan.yaml").read_bytes()
    assert (workspace / "cert" / "cert_chain.crt").read_bytes() == coordinator.ca.chain_pem()
    assert collaborator_data_folder(site, "hospital_a") == data.resolve()
    assert (workspace / "data-template" / "train.csv").read_text() == "SubjectID,Channel_0,Channel_1,Label\n"
    assert json.loads((workspace / "kit.json").read_text())["participant"] == "hospital_a"
    for sub in ("save", "logs", "local_state"):
        assert (workspace / sub).is_dir()
    assert not list(site.root.rglob("*.key")) and not (site.root / "ca").exists()
    assert not [p for p in site.root.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_import_without_data_then_again_with_force_keeps_the_key(coordinator: Coordinator, tmp_path: Path) -> None:
    site = FederationLayout(tmp_path / "SITE")
    first = ok(cofe("import", coordinator.kit_a, "--dir", site.root, cwd=tmp_path))
    assert "data-template" in first.stdout and collaborator_data_folder(site, "hospital_a") is None
    key = site.workspace("hospital_a") / "cert" / "client" / "col_hospital_a.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"the site's key")
    refused(cofe("import", coordinator.kit_a, "--dir", site.root, cwd=tmp_path), "already holds hospital_a's workspace")
    data = write_data(tmp_path / "data")
    ok(cofe("import", coordinator.kit_a, "--dir", site.root, "--data", data, "--force", cwd=tmp_path))
    assert key.read_bytes() == b"the site's key"
    assert collaborator_data_folder(site, "hospital_a") == data.resolve()


def test_import_aggregator_kit(coordinator: Coordinator, tmp_path: Path) -> None:
    site = FederationLayout(tmp_path / "AGG")
    refused(cofe("import", coordinator.kit_agg, "--dir", site.root, "--data", tmp_path, cwd=tmp_path),
            "the aggregator has no data of its own")
    assert not site.root.exists()
    ok(cofe("import", coordinator.kit_agg, "--dir", site.root, cwd=tmp_path))
    workspace = site.workspace(AGGREGATOR)
    assert (workspace / "save" / "init.pbuf").read_bytes() == (coordinator.fed.plans / "init.pbuf").read_bytes()
    assert (site.plans / "init.pbuf").is_file()
    assert not (workspace / "data-template").exists()


def test_import_refuses_bad_data_and_writes_nothing(coordinator: Coordinator, tmp_path: Path) -> None:
    one_channel = write_data(tmp_path / "data", channels=1)
    refused(cofe("import", coordinator.kit_a, "--dir", tmp_path / "SITE", "--data", one_channel, cwd=tmp_path),
            "the model expects 2")
    assert not (tmp_path / "SITE").exists()


def test_a_second_kit_of_the_same_federation_joins_the_site(coordinator: Coordinator, tmp_path: Path) -> None:
    ok(cofe("import", coordinator.kit_a, "--dir", tmp_path / "SITE", cwd=tmp_path))
    result = ok(cofe("import", coordinator.kit_agg, "--dir", tmp_path / "SITE", cwd=tmp_path))
    assert "plans kept" in result.stdout
    assert sorted(p.name for p in (tmp_path / "SITE" / "workspaces").iterdir()) == [AGGREGATOR, "hospital_a"]


# ---------------------------------------------------------------- bad kits: refused, nothing written


def _edited_plan(members: dict[str, bytes]) -> dict[str, bytes]:
    members["plans/plan.yaml"] = members["plans/plan.yaml"].replace(b"rounds_to_train: 2", b"rounds_to_train: 20")
    return members


def _edited_plan_and_kit_json(members: dict[str, bytes]) -> dict[str, bytes]:
    """The editor also rewrote kit.json's hashes; federation.yaml still names the exported plan."""
    members = _edited_plan(members)
    kit = json.loads(members["kit.json"])
    kit["plan_sha384"] = plan_hash(members["plans/plan.yaml"].decode())
    kit["files"]["plans/plan.yaml"] = hashlib.sha256(members["plans/plan.yaml"]).hexdigest()
    members["kit.json"] = json.dumps(kit).encode()
    return members


def _edited_cols(members: dict[str, bytes]) -> dict[str, bytes]:
    members["plans/cols.yaml"] += b"- intruder\n"
    return members


def _extra_member(members: dict[str, bytes]) -> dict[str, bytes]:
    members["cert/client/col_hospital_b.crt"] = b"another participant's certificate"
    return members


def _missing_member(members: dict[str, bytes]) -> dict[str, bytes]:
    del members["plans/gandlf_config.yaml"]
    return members


def _foreign_chain(members: dict[str, bytes]) -> dict[str, bytes]:
    kit = json.loads(members["kit.json"])
    kit["root_fingerprint"] = "AA:" * 31 + "AA"
    members["kit.json"] = json.dumps(kit).encode()
    return members


@pytest.mark.parametrize(("damage", "message"), [
    (_edited_plan, "the plan was edited after export"),
    (_edited_plan_and_kit_json, "the plan was edited after export"),
    (_edited_cols, "plans/cols.yaml was changed after export"),
    (_extra_member, "unexpected member 'cert/client/col_hospital_b.crt'"),
    (_missing_member, "plans/gandlf_config.yaml missing"),
    (_foreign_chain, "the CA chain's root is not the one kit.json names"),
], ids=["plan-edited", "plan-and-kit-json-edited", "cols-edited", "extra-member", "missing-member", "foreign-root"])
def test_a_retarred_kit_is_refused(coordinator: Coordinator, tmp_path: Path, damage, message: str) -> None:
    kit = write_tar(tmp_path / "kit.tar.gz", damage(members_of(coordinator.kit_a)))
    refused(cofe("import", kit, "--dir", tmp_path / "SITE", cwd=tmp_path), message)
    assert not (tmp_path / "SITE").exists()


def _truncated(tmp: Path, kit: Path) -> Path:
    data = kit.read_bytes()
    return _write(tmp / "cut.tar.gz", data[: len(data) // 2])


def _cut_trailer(tmp: Path, kit: Path) -> Path:
    return _write(tmp / "cut.tar.gz", kit.read_bytes()[:-6])


def _trailing_garbage(tmp: Path, kit: Path) -> Path:
    return _write(tmp / "long.tar.gz", kit.read_bytes() + b"\x00garbage" * 100)


def _dotdot(tmp: Path, kit: Path) -> Path:
    members = members_of(kit)
    members["../evil.txt"] = b"escaped"
    return write_tar(tmp / "dotdot.tar.gz", members)


def _absolute(tmp: Path, kit: Path) -> Path:
    members = members_of(kit)
    members["/tmp/evil.txt"] = b"escaped"
    return write_tar(tmp / "abs.tar.gz", members)


def _symlink(tmp: Path, kit: Path) -> Path:
    members = members_of(kit)
    del members["README.txt"]
    return write_tar(tmp / "link.tar.gz", members, links={"README.txt": "/etc/passwd"})


def _foreign(tmp: Path, kit: Path) -> Path:
    return write_tar(tmp / "photos.tar.gz", {"holiday/beach.jpg": b"\xff\xd8\xff", "notes.txt": b"hello"})


def _not_gzip(tmp: Path, kit: Path) -> Path:
    return _write(tmp / "kit.tar.gz", b"this is not an archive\n")


def _empty(tmp: Path, kit: Path) -> Path:
    return _write(tmp / "kit.tar.gz", b"")


def _plain_tar(tmp: Path, kit: Path) -> Path:
    with tarfile.open(tmp / "kit.tar", "w") as tar:
        tar.add(tmp, arcname="x", recursive=False)
    return tmp / "kit.tar"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (_truncated, "truncated or not a .tar.gz"),
    (_cut_trailer, "truncated or not a .tar.gz"),
    (_trailing_garbage, "is not a readable cofe site kit"),
    (_dotdot, "points outside the archive ('../evil.txt')"),
    (_absolute, "absolute path ('/tmp/evil.txt')"),
    (_symlink, "holds a link ('README.txt')"),
    (_foreign, "is not a cofe site kit: unexpected member"),
    (_not_gzip, "truncated or not a .tar.gz"),
    (_empty, "truncated or not a .tar.gz"),
    (_plain_tar, "truncated or not a .tar.gz"),
], ids=["truncated", "cut-trailer", "trailing-garbage", "dotdot", "absolute", "symlink", "foreign", "not-gzip", "empty",
        "uncompressed-tar"])
def test_a_damaged_or_foreign_archive_is_refused(coordinator: Coordinator, tmp_path: Path, make, message: str) -> None:
    kit = make(tmp_path, coordinator.kit_a)
    site = tmp_path / "SITE"
    refused(cofe("import", kit, "--dir", site, cwd=tmp_path), message)
    assert not site.exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_import_over_another_federation_needs_force(coordinator: Coordinator, tmp_path: Path) -> None:
    other = make_federation(tmp_path / "OTHER", address="other.example.org")
    site = tmp_path / "SITE"
    shutil.copytree(other.plans, site / "plans")
    before = tree(site)
    refused(cofe("import", coordinator.kit_a, "--dir", site, cwd=tmp_path), "already holds another plan")
    assert tree(site) == before
    ok(cofe("import", coordinator.kit_a, "--dir", site, "--force", cwd=tmp_path))
    assert (site / "plans" / "plan.yaml").read_bytes() == (coordinator.fed.plans / "plan.yaml").read_bytes()


# ---------------------------------------------------------------- validate, stage, swap


def fill_the_disk_at_the_third_write(monkeypatch) -> list[Path]:
    """Every file of a kit is written into the staging folder through site_kits._place: the third one finds
    the disk full. Returns the paths it was asked to write."""
    place, asked = site_kits._place, []

    def place_until_full(content, target: Path) -> None:
        asked.append(target)
        if len(asked) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        place(content, target)

    monkeypatch.setattr(site_kits, "_place", place_until_full)
    return asked


def test_validating_a_kit_writes_nothing_and_says_what_importing_it_does(coordinator: Coordinator,
                                                                        tmp_path: Path) -> None:
    site = FederationLayout(tmp_path / "SITE")
    ok(cofe("import", coordinator.kit_a, "--dir", site.root, cwd=tmp_path))
    before = tree(site.root)
    members = read_archive(coordinator.kit_agg, site_kits.KIT_ARCHIVE, stream_to=tmp_path / "incoming")
    checked = site_kits.validate_kit(members, coordinator.kit_agg, site, data=None, force=False)
    assert (checked.name, checked.plans_action, checked.workspace_action) == (AGGREGATOR, "kept", "created")
    assert "init.pbuf" in checked.plan_files and checked.warnings == []
    assert tree(site.root) == before


def test_a_failure_while_staging_a_kit_leaves_the_site_as_it_was(coordinator: Coordinator, tmp_path: Path,
                                                                 monkeypatch) -> None:
    site = FederationLayout(tmp_path / "SITE")
    ok(cofe("import", coordinator.kit_a, "--dir", site.root, cwd=tmp_path))
    key = site.workspace("hospital_a") / "cert" / "client" / "col_hospital_a.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"the site's key")
    before = tree(site.root)
    asked = fill_the_disk_at_the_third_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        site_kits.import_kit(coordinator.kit_a, site.root, data=write_data(tmp_path / "data"), force=True)
    assert asked[-1].relative_to(site.root).parts[0].startswith(".cofe-import-"), "it failed while staging"
    assert tree(site.root) == before, "the workspace, its plan, its key and the site's plans are untouched"


def test_a_failure_while_staging_a_kit_in_a_new_folder_leaves_no_folder(coordinator: Coordinator, tmp_path: Path,
                                                                         monkeypatch) -> None:
    fill_the_disk_at_the_third_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        site_kits.import_kit(coordinator.kit_agg, tmp_path / "new" / "SITE")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- the initial model is part of the federation's identity


def _relisted(members: dict[str, bytes], **federation_changes) -> dict[str, bytes]:
    """What an editor does to make a changed kit look whole: federation.yaml and kit.json rewritten to match."""
    if federation_changes:
        manifest = yaml.safe_load(members["plans/federation.yaml"])
        for key, value in federation_changes.items():
            if value is None:
                manifest.pop(key, None)
            else:
                manifest[key] = value
        members["plans/federation.yaml"] = yaml.safe_dump(manifest).encode()
    kit = json.loads(members["kit.json"])
    kit["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items() if name != "kit.json"}
    members["kit.json"] = json.dumps(kit).encode()
    return members


SWAPPED_MODEL = b"\x08\x01weights chosen by someone else"


def test_an_aggregator_kit_with_a_swapped_initial_model_is_refused(coordinator: Coordinator, tmp_path: Path) -> None:
    """The hostile review's case: init.pbuf swapped and kit.json's entry updated; the plan hash stays genuine."""
    members = members_of(coordinator.kit_agg)
    members["plans/init.pbuf"] = SWAPPED_MODEL
    kit = write_tar(tmp_path / "kit.tar.gz", _relisted(members))
    refused(cofe("import", kit, "--dir", tmp_path / "SITE", cwd=tmp_path), "the initial model was changed after export")
    assert not (tmp_path / "SITE").exists()


def test_a_swapped_model_with_a_rewritten_manifest_changes_the_fingerprint_read_back(coordinator: Coordinator,
                                                                                     tmp_path: Path) -> None:
    """federation.yaml rewritten too: the kit is whole again, but the value read back on the phone is not the coordinator's."""
    members = _relisted(members_of(coordinator.kit_agg), init_model_sha384=hashlib.sha384(SWAPPED_MODEL).hexdigest())
    members["plans/init.pbuf"] = SWAPPED_MODEL
    kit = write_tar(tmp_path / "kit.tar.gz", _relisted(members))
    result = ok(cofe("import", kit, "--dir", tmp_path / "SITE", cwd=tmp_path))
    genuine = coordinator.fed.load_manifest()
    assert grouped(genuine.fingerprint()) in coordinator.export_stdout
    assert grouped(genuine.fingerprint()) not in result.stdout
    read_back = FederationLayout(tmp_path / "SITE").load_manifest().fingerprint()
    assert grouped(read_back) in result.stdout
    assert read_back == federation_fingerprint(genuine.plan_sha384, hashlib.sha384(SWAPPED_MODEL).hexdigest())


def test_a_kit_of_a_manifest_without_the_initial_model_hash_is_refused(coordinator: Coordinator, tmp_path: Path) -> None:
    """An older cofe's federation.yaml: nothing ties the initial model to what is read back, so no import."""
    kit = write_tar(tmp_path / "kit.tar.gz", _relisted(members_of(coordinator.kit_a), init_model_sha384=None))
    refused(cofe("import", kit, "--dir", tmp_path / "SITE", cwd=tmp_path), "records no hash of the initial model")
    assert not (tmp_path / "SITE").exists()


def test_export_refuses_an_initial_model_that_is_not_the_recorded_one(coordinator: Coordinator, tmp_path: Path) -> None:
    fed = tmp_path / "FED"
    shutil.copytree(coordinator.fed.root, fed)
    (fed / "plans" / "init.pbuf").write_bytes(SWAPPED_MODEL)
    refused(cofe("export", "aggregator", "--dir", fed, "-o", tmp_path / "agg.tar.gz", cwd=tmp_path),
            "is not the federation's")
    assert not (tmp_path / "agg.tar.gz").exists()


def test_a_collaborator_kit_never_carries_the_initial_model(coordinator: Coordinator, tmp_path: Path) -> None:
    members = members_of(coordinator.kit_a)
    members["plans/init.pbuf"] = (coordinator.fed.plans / "init.pbuf").read_bytes()
    kit = write_tar(tmp_path / "kit.tar.gz", _relisted(members))
    refused(cofe("import", kit, "--dir", tmp_path / "SITE", cwd=tmp_path), "a collaborator's kit carries plans/init.pbuf")
    assert not (tmp_path / "SITE").exists()


# ---------------------------------------------------------------- decompression bombs

BOMB_MIB = 2000
# hashlib.sha256(bytes(2000 << 20)).hexdigest(), computed once: hashing 2 GB in the test would take longer than it.
BOMB_SHA256 = "274fbb979251bcaceab594dd89d5adfec310e8851e320b5b5f90fd5f18d76149"
_ZEROS_MIB = 8
# Runs cofe and reports its peak memory and the bytes it wrote (stdout included) on a last stderr line.
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large
# pytest process would report the parent's size; VmHWM belongs to the child's own address space.
_MEASURED = """
import runpy, sys
try:
    runpy.run_module("cofe_cli", run_name="__main__", alter_sys=True)
finally:
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    print(f"measured {status['VmHWM'].split()[0]} {io['wchar']}", file=sys.stderr)
"""


def measured_cofe(*args: str | Path, cwd: Path) -> tuple[Result, int, int]:
    """cofe's result, its peak RSS and the bytes it wrote."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    done = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    peak_kib, written = done.stderr.splitlines()[-1].split()[1:]
    return Result(done.returncode, done.stdout, done.stderr), int(peak_kib) * 1024, int(written)


def _zero_gzip_members(total_mib: int) -> bytes:
    """`total_mib` MiB of zeros as concatenated gzip members (gzip readers read them as one stream): a few
    kB per 8 MiB, made in a fraction of a second."""
    assert total_mib % _ZEROS_MIB == 0
    return gzip.compress(bytes(_ZEROS_MIB << 20), compresslevel=9) * (total_mib // _ZEROS_MIB)


def write_bomb(path: Path, members: dict[str, bytes], *, name: str, size_mib: int, kind: bytes = tarfile.REGTYPE) -> Path:
    """A gzip tar holding `members`, then `name` with `size_mib` MiB of zeros, then the end of the archive."""
    head = io.BytesIO()
    with tarfile.open(fileobj=head, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    prefix = head.getvalue()[: _end_of_members(members)]
    bomb = tarfile.TarInfo(name)
    bomb.size, bomb.type = size_mib << 20, kind
    with open(path, "wb") as out:
        out.write(gzip.compress(prefix + bomb.tobuf(tarfile.USTAR_FORMAT)))
        out.write(_zero_gzip_members(size_mib))
        out.write(gzip.compress(b"\0" * 1024))  # tar's end-of-archive blocks
    return path


def _end_of_members(members: dict[str, bytes]) -> int:
    """Bytes of a USTAR stream holding `members` before its end-of-archive blocks."""
    return sum(512 + -(-len(data) // 512) * 512 for data in members.values())


def test_a_collaborator_kit_unpacking_to_gigabytes_is_refused_quickly_with_bounded_memory(coordinator: Coordinator,
                                                                                           tmp_path: Path) -> None:
    """The hostile review's bomb: a 2 MB collaborator kit listing a 2000 MiB plans/init.pbuf (with its true
    SHA-256). It used to import with exit 0, 2.1 GB of memory and 2 GB written."""
    members = members_of(coordinator.kit_a)
    kit = json.loads(members["kit.json"])
    kit["files"]["plans/init.pbuf"] = BOMB_SHA256
    members["kit.json"] = json.dumps(kit).encode()
    bomb = write_bomb(tmp_path / "hospital_a-kit.tar.gz", members, name="plans/init.pbuf", size_mib=BOMB_MIB)
    assert bomb.stat().st_size < 3 << 20
    started = time.monotonic()
    result, peak, written = measured_cofe("import", bomb, "--dir", tmp_path / "SITE", cwd=tmp_path)
    refused(result, "refusing it as a decompression bomb")
    assert time.monotonic() - started < 30
    assert peak < 200 << 20, f"peak memory {peak >> 20} MiB"
    assert written < 1 << 20, f"{written} bytes written"
    assert not (tmp_path / "SITE").exists()


def test_a_huge_tar_header_is_refused_before_it_is_held_in_memory(coordinator: Coordinator, tmp_path: Path) -> None:
    """tarfile reads a pax header whole into memory: the bound must hold below it, on the gzip stream."""
    bomb = write_bomb(tmp_path / "kit.tar.gz", {}, name="././@PaxHeader", size_mib=512, kind=tarfile.XHDTYPE)
    result, peak, _ = measured_cofe("import", bomb, "--dir", tmp_path / "SITE", cwd=tmp_path)
    refused(result, "refusing it as a decompression bomb")
    assert peak < 300 << 20, f"peak memory {peak >> 20} MiB"
    assert not (tmp_path / "SITE").exists()
