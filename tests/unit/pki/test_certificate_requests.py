"""Keys that never leave their site, through the real CLI across two directories: the coordinator's (FED)
and a hospital's (SITE). `cofe certify ca`, `export`, `import`, `certify request`, `sign`, `install`,
`revoke`, `status`; every refusal is exit 2 with a hint and changes nothing.

RSA-3072 keys cost ~0.5 s each: the CA and the main flow are made once per module; tests that change
files work on copies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_assertions import ok, refused, run_cofe
from unit_federation import EXPIRED, expired_copy, gandlf_config, write_federation
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout
from cofe_cli.pki import CertificateAuthority, check_key_matches_cert, describe_certificate, verify_issued_by
from cofe_cli.pki.revocation import build_crl, load_revoked_serials
from cofe_cli.pki.workspace_certs import participant_cert_paths
from cofe_cli.plan.workspaces import CollaboratorData

COLLABORATORS = ("hospital_a", "hospital_b")
ADDRESS = "fl.example.org"
TIMEOUT_S = 60
GANDLF_CONFIG = gandlf_config(channels=1)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}


def cofe(*args: str | Path, cwd: Path) -> Result:
    done = run_cofe(*args, cwd=cwd, timeout=TIMEOUT_S)
    return Result(done.returncode, done.stdout, done.stderr)


def cofe_on_a_terminal(*args: str | Path, cwd: Path, answer: str) -> Result:
    """Run cofe with a pseudo-terminal as stdin (so it may ask) and type `answer`."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "cofe_cli", *map(str, args)], cwd=cwd, env=_env(),
                                   stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(slave)
        os.write(master, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        os.close(master)
    return Result(process.returncode, stdout, stderr)


def make_federation(root: Path) -> FederationLayout:
    return write_federation(root, config=GANDLF_CONFIG, address=ADDRESS,
                            collaborators=[CollaboratorData(name, None) for name in COLLABORATORS])


def members_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isreg()}


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def request_hash(archive: Path) -> str:
    csr = x509.load_pem_x509_csr(members_of(archive)["csr.pem"])
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


def grouped(hex_digits: str) -> str:
    digits = hex_digits.upper()
    return " ".join(digits[i:i + 4] for i in range(0, len(digits), 4))


def tree(root: Path) -> dict[str, tuple[bytes, int] | None]:
    return {str(p.relative_to(root)): ((p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_of(site: Path, name: str = "hospital_a") -> Path:
    return site / "workspaces" / name / "cert" / "client" / f"col_{name}.key"


def cert_of(site: Path, name: str = "hospital_a") -> Path:
    return site / "workspaces" / name / "cert" / "client" / f"col_{name}.crt"


# ---------------------------------------------------------------- the whole flow, once per module


@dataclass
class Flow:
    root: Path
    fed: Path
    site: Path
    ca: CertificateAuthority
    kit: Path
    request: Path
    signed: Path
    outputs: dict[str, str]

    @property
    def fingerprint(self) -> str:
        return self.ca.root_fingerprint()


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> Flow:
    root = tmp_path_factory.mktemp("requests")
    fed, site = make_federation(root / "FED").root, root / "SITE"
    outputs = {}
    outputs["ca"] = ok(cofe("certify", "ca", "--dir", fed, cwd=root)).stdout
    ca = CertificateAuthority.load(fed / "ca")
    kit = root / "hospital_a-kit.tar.gz"
    ok(cofe("export", "collaborator", "hospital_a", "--dir", fed, "-o", kit, cwd=root))
    outputs["import"] = ok(cofe("import", kit, "--dir", site, cwd=root)).stdout
    outputs["request"] = ok(cofe("certify", "request", "--dir", site, cwd=root)).stdout  # writes ./hospital_a.csr.tar.gz
    request = root / "hospital_a.csr.tar.gz"
    outputs["sign"] = ok(cofe("certify", "sign", request, "--dir", fed, "--expect-hash", grouped(request_hash(request)),
                              cwd=root)).stdout
    signed = root / "hospital_a-signed.tar.gz"
    outputs["install"] = ok(cofe("certify", "install", signed, "--dir", site, "--expect-root-fingerprint",
                                 ca.root_fingerprint(), cwd=root)).stdout
    return Flow(root, fed, site, ca, kit, request, signed, outputs)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("other") / "ca", name="other")


@pytest.fixture
def copies(flow: Flow, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of FED and SITE (modes kept) for tests that change them."""
    fed, site = tmp_path / "FED", tmp_path / "SITE"
    shutil.copytree(flow.fed, fed)
    shutil.copytree(flow.site, site)
    return fed, site


# ---------------------------------------------------------------- the flow's results


def test_ca_prints_the_root_fingerprint_and_issues_nothing(flow: Flow) -> None:
    assert flow.fingerprint in flow.outputs["ca"]
    assert not list((flow.fed / "workspaces").rglob("*.key")), "the coordinator holds no participant's key"


def test_request_key_stays_at_the_site_with_mode_0600(flow: Flow) -> None:
    key = key_of(flow.site)
    assert key.is_file() and mode(key) == 0o600
    assert key.with_suffix(".csr").is_file()
    assert grouped(request_hash(flow.request)) in flow.outputs["request"]
    assert not list(flow.fed.rglob("col_hospital_a.key"))


def test_request_archive_holds_the_csr_and_request_json(flow: Flow) -> None:
    members = members_of(flow.request)
    assert set(members) == {"csr.pem", "request.json"}
    info = json.loads(members["request.json"])
    manifest = FederationLayout(flow.fed).load_manifest()
    assert info["format"] == "cofe-certificate-request" and info["version"] == 1
    assert (info["name"], info["role"], info["plan_sha384"]) == ("hospital_a", "collaborator", manifest.plan_sha384)
    csr = x509.load_pem_x509_csr(members["csr.pem"])
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "hospital_a"
    key = serialization.load_pem_private_key(key_of(flow.site).read_bytes(), password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert csr.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def test_no_archive_ever_holds_a_private_key(flow: Flow) -> None:
    key_body = b"".join(key_of(flow.site).read_bytes().splitlines()[1:-1])
    archives = sorted(flow.root.rglob("*.tar.gz"))
    assert {a.name for a in archives} >= {"hospital_a-kit.tar.gz", "hospital_a.csr.tar.gz", "hospital_a-signed.tar.gz"}
    for archive in archives:
        raw = archive.read_bytes()
        for name, data in members_of(archive).items():
            assert b"PRIVATE KEY" not in data, f"{archive.name}:{name}"
            assert key_body[:64] not in data.replace(b"\n", b""), f"{archive.name}:{name}"
        assert b"PRIVATE KEY" not in raw


def test_installed_certificate_verifies_and_matches_the_key(flow: Flow) -> None:
    cert, chain = cert_of(flow.site), flow.site / "workspaces" / "hospital_a" / "cert" / "cert_chain.crt"
    assert chain.read_bytes() == flow.ca.chain_pem()
    verify_issued_by(cert.read_bytes(), chain.read_bytes())
    assert check_key_matches_cert(key_of(flow.site).read_bytes(), cert.read_bytes())
    info = describe_certificate(cert.read_bytes())
    assert info.common_name == "hospital_a" and info.san_dns == ["hospital_a"]
    assert (flow.fed / "ca" / "issued" / "hospital_a.crt").read_bytes() == cert.read_bytes()
    assert mode(key_of(flow.site)) == 0o600
    assert "cofe start collaborator hospital_a" in flow.outputs["install"]


def test_signed_archive_and_sign_output(flow: Flow) -> None:
    members = members_of(flow.signed)
    assert set(members) == {"certificate.crt", "cert_chain.crt", "signed.json"}
    info = json.loads(members["signed.json"])
    cert = x509.load_pem_x509_certificate(members["certificate.crt"])
    assert (info["name"], info["role"]) == ("hospital_a", "collaborator")
    assert int(info["serial"], 16) == cert.serial_number
    assert info["root_fingerprint"] == flow.fingerprint
    assert info["request_sha256"] == request_hash(flow.request)
    assert flow.fingerprint in flow.outputs["sign"]


def test_the_site_can_start_from_what_it_holds(flow: Flow) -> None:
    from cofe_cli.pki.workspace_certs import require_certificates

    site = FederationLayout(flow.site)
    manifest = site.load_manifest()
    require_certificates(site, manifest, "hospital_a")  # what `cofe start collaborator` checks first


# ---------------------------------------------------------------- sign: refusals


@pytest.fixture(scope="module")
def spare_key():
    """One key for every hand-made request below (a key costs ~0.5 s; a request from it almost nothing)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _request_for(tmp: Path, name: str, *, key, fed: Path, role: str | None = None, plan: str | None = None,
                 common_name: str | None = None, san: tuple[str, ...] = ()) -> Path:
    """A request archive made by hand, as a confused or hostile site might."""
    manifest = FederationLayout(fed).load_manifest()
    common_name = common_name or name
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san or (common_name,)]), critical=False)
           .sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM))
    info = {"format": "cofe-certificate-request", "version": 1, "name": name,
            "role": role or ("aggregator" if name == AGGREGATOR else "collaborator"),
            "plan_sha384": plan or manifest.plan_sha384}
    return write_tar(tmp / f"{name}.csr.tar.gz", {"csr.pem": csr, "request.json": json.dumps(info).encode()})


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_sign_refuses_a_hash_mismatch_and_writes_nothing(flow: Flow, copies) -> None:
    fed, _ = copies
    before = tree(fed)
    wrong = "0" * 64
    refused(cofe("certify", "sign", flow.request, "--dir", fed, "--expect-hash", wrong, "--force", "-o",
                 fed.parent / "out.tar.gz", cwd=fed.parent), "does not match --expect-hash")
    refused(cofe("certify", "sign", flow.request, "--dir", fed, "--expect-hash", "1234", cwd=fed.parent),
            "is not 64 hex digits")
    assert tree(fed) == before and not (fed.parent / "out.tar.gz").exists()


def test_sign_without_expect_hash_and_without_a_terminal_is_refused(flow: Flow, copies) -> None:
    fed, _ = copies
    before = tree(fed)
    refused(cofe("certify", "sign", flow.request, "--dir", fed, "--force", "-o", fed.parent / "out.tar.gz",
                 cwd=fed.parent), "no --expect-hash, and no terminal")
    assert tree(fed) == before


def test_sign_on_a_terminal_asks_to_confirm_the_hash(flow: Flow, copies) -> None:
    fed, _ = copies
    before = tree(fed)
    out = fed.parent / "out.tar.gz"
    answered_no = cofe_on_a_terminal("certify", "sign", flow.request, "--dir", fed, "--force", "-o", out,
                                     cwd=fed.parent, answer="n")
    assert grouped(request_hash(flow.request)) in answered_no.stdout
    refused(answered_no, "the request's hash was not confirmed")
    assert tree(fed) == before and not out.exists()
    ok(cofe_on_a_terminal("certify", "sign", flow.request, "--dir", fed, "--force", "-o", out, cwd=fed.parent,
                          answer="y"))
    assert set(members_of(out)) == {"certificate.crt", "cert_chain.crt", "signed.json"}


def test_signing_the_same_name_twice_needs_force(flow: Flow, copies) -> None:
    fed, _ = copies
    before = tree(fed)
    expected = request_hash(flow.request)
    out = fed.parent / "again.tar.gz"
    refused(cofe("certify", "sign", flow.request, "--dir", fed, "--expect-hash", expected, "-o", out, cwd=fed.parent),
            "hospital_a already has a certificate from this CA")
    assert tree(fed) == before and not out.exists()
    ok(cofe("certify", "sign", flow.request, "--dir", fed, "--expect-hash", expected, "-o", out, "--force",
            cwd=fed.parent))
    archived = list((fed / "ca" / "issued" / "archive").glob("hospital_a.*.crt"))
    assert len(archived) == 1 and archived[0].read_bytes() == (flow.fed / "ca" / "issued" / "hospital_a.crt").read_bytes()
    assert (fed / "ca" / "issued" / "hospital_a.crt").read_bytes() == members_of(out)["certificate.crt"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp, fed, key: _request_for(tmp, "hospital_z", key=key, fed=fed), "the plan has no such collaborator"),
    (lambda tmp, fed, key: _request_for(tmp, "Hospital_A", key=key, fed=fed), "which is not a participant name"),
    (lambda tmp, fed, key: _request_for(tmp, "hospital_b", key=key, role="aggregator", fed=fed),
     "claims the role 'aggregator'"),
    (lambda tmp, fed, key: _request_for(tmp, "hospital_b", key=key, common_name="hospital_a", fed=fed),
     "the request's certificate name is 'hospital_a', expected 'hospital_b'"),
    (lambda tmp, fed, key: _request_for(tmp, "hospital_b", key=key, plan="ab" * 48, fed=fed),
     "was made for another plan"),
    (lambda tmp, fed, key: _request_for(tmp, AGGREGATOR, key=key, common_name=ADDRESS, san=("other.example.org",),
                                        fed=fed), f"does not name the plan's aggregator address '{ADDRESS}'"),
    (lambda tmp, fed, key: write_tar(tmp / "x.csr.tar.gz", {"csr.pem": b"x", "../request.json": b"{}"}),
     "points outside the archive"),
    (lambda tmp, fed, key: write_tar(tmp / "x.csr.tar.gz", {"csr.pem": b"x"}), "request.json missing"),
    (lambda tmp, fed, key: _write(tmp / "x.csr.tar.gz", b"\x1f\x8b\x08\x00garbage"), "truncated or not a .tar.gz"),
], ids=["unknown-name", "unsafe-name", "wrong-role", "csr-name-differs", "other-plan", "server-san-lacks-address",
        "dotdot", "incomplete", "truncated"])
def test_sign_refuses_bad_requests(flow: Flow, copies, spare_key, make, message: str) -> None:
    fed, _ = copies
    request = make(fed.parent, fed, spare_key)
    before = tree(fed)
    refused(cofe("certify", "sign", request, "--dir", fed, "--expect-hash", "0" * 64, cwd=fed.parent), message)
    assert tree(fed) == before
    assert not list(fed.parent.glob("*-signed.tar.gz"))


def test_a_truncated_request_made_by_the_cli_is_refused(flow: Flow, copies) -> None:
    fed, _ = copies
    data = flow.request.read_bytes()
    cut = fed.parent / "cut.csr.tar.gz"
    cut.write_bytes(data[: len(data) - 40])
    refused(cofe("certify", "sign", cut, "--dir", fed, "--expect-hash", request_hash(flow.request), cwd=fed.parent),
            "truncated or not a .tar.gz")


# ---------------------------------------------------------------- request and install: refusals


def test_request_refuses_to_replace_a_key_without_force(flow: Flow, copies) -> None:
    _, site = copies
    before = tree(site)
    refused(cofe("certify", "request", "--dir", site, "-o", site.parent / "r.tar.gz", cwd=site.parent),
            "hospital_a already has a private key")
    refused(cofe("certify", "request", "--dir", site, "--san", "x.example.org", "-o", site.parent / "r.tar.gz",
                 cwd=site.parent), "--san names the aggregator's host names")
    refused(cofe("certify", "request", "hospital_b", "--dir", site, cwd=site.parent), "holds no workspace for hospital_b")
    assert tree(site) == before and not (site.parent / "r.tar.gz").exists()


def test_request_refuses_a_locally_edited_plan(flow: Flow, copies) -> None:
    _, site = copies
    key_of(site).unlink()
    (site / "plans" / "plan.yaml").write_text((site / "plans" / "plan.yaml").read_text().replace("rounds_to_train: 2",
                                                                                                 "rounds_to_train: 9"))
    refused(cofe("certify", "request", "--dir", site, "-o", site.parent / "r.tar.gz", cwd=site.parent), "was changed")
    assert not key_of(site).exists()


def test_install_refuses_a_certificate_for_another_key(flow: Flow, copies) -> None:
    fed, site = copies
    # The site made a new key since (request --force): the old signed certificate no longer fits it.
    ok(cofe("certify", "request", "--dir", site, "--force", "-o", site.parent / "new.csr.tar.gz", cwd=site.parent))
    assert mode(key_of(site)) == 0o600
    assert not cert_of(site).exists(), "the certificate of the replaced key is removed"
    before = tree(site)
    refused(cofe("certify", "install", flow.signed, "--dir", site, "--expect-root-fingerprint", flow.fingerprint,
                 cwd=site.parent), "the certificate does not match hospital_a's private key here")
    assert tree(site) == before


def test_install_refuses_an_unexpected_root(flow: Flow, copies) -> None:
    _, site = copies
    cert_of(site).unlink()
    before = tree(site)
    other = "AB:" * 31 + "CD"
    refused(cofe("certify", "install", flow.signed, "--dir", site, "--expect-root-fingerprint", other, cwd=site.parent),
            "not the one you expected")
    refused(cofe("certify", "install", flow.signed, "--dir", site, cwd=site.parent),
            "--expect-root-fingerprint is required")
    refused(cofe("certify", "install", flow.signed, "--dir", site, "--expect-root-fingerprint", "AB:CD",
                 cwd=site.parent), "is not a SHA-256 fingerprint")
    assert tree(site) == before


def test_install_refuses_a_tampered_certificate(flow: Flow, copies, other_ca: CertificateAuthority) -> None:
    _, site = copies
    cert_of(site).unlink()
    before = tree(site)
    # A certificate for the site's own key from another CA whose chain rides along: the fingerprint stops it.
    # One from this CA for another key: the key check stops it.
    other = other_ca
    csr = key_of(site).with_suffix(".csr").read_bytes()
    forged = other.sign_csr(csr, kind="client", expected_name="hospital_a")
    members = members_of(flow.signed)
    members |= {"certificate.crt": forged, "cert_chain.crt": other.chain_pem()}
    archive = write_tar(site.parent / "forged.tar.gz", members)
    refused(cofe("certify", "install", archive, "--dir", site, "--expect-root-fingerprint", flow.fingerprint,
                 cwd=site.parent), "not the one you expected")
    members |= {"certificate.crt": flow.ca.issue_client_cert("hospital_a").cert_pem,
                "cert_chain.crt": flow.ca.chain_pem()}
    archive = write_tar(site.parent / "other-key.tar.gz", members)
    refused(cofe("certify", "install", archive, "--dir", site, "--expect-root-fingerprint", flow.fingerprint,
                 cwd=site.parent), "does not match hospital_a's private key")
    assert tree(site) == before


# ---------------------------------------------------------------- the aggregator on its own host


def test_aggregator_request_sign_install(flow: Flow, tmp_path: Path) -> None:
    fed = tmp_path / "FED"
    shutil.copytree(flow.fed, fed)
    agg = tmp_path / "AGG"
    ok(cofe("export", "aggregator", "--dir", fed, "-o", tmp_path / "agg-kit.tar.gz", cwd=tmp_path))
    ok(cofe("import", tmp_path / "agg-kit.tar.gz", "--dir", agg, cwd=tmp_path))
    ok(cofe("certify", "request", "--dir", agg, "--san", "agg.internal", "--san", "10.0.0.5", cwd=tmp_path))
    key = agg / "workspaces" / AGGREGATOR / "cert" / "server" / f"agg_{ADDRESS}.key"
    assert mode(key) == 0o600
    request = tmp_path / "aggregator.csr.tar.gz"
    assert json.loads(members_of(request)["request.json"])["role"] == "aggregator"
    sign = ok(cofe("certify", "sign", request, "--dir", fed, "--expect-hash", request_hash(request), cwd=tmp_path))
    assert "agg.internal" in sign.stdout
    ok(cofe("certify", "install", tmp_path / "aggregator-signed.tar.gz", "--dir", agg, "--expect-root-fingerprint",
            flow.fingerprint.replace(":", "").lower(), cwd=tmp_path))
    cert = key.with_suffix(".crt").read_bytes()
    info = describe_certificate(cert)
    assert info.common_name == ADDRESS
    assert info.san_dns == [ADDRESS, "agg.internal"] and info.san_ips == ["10.0.0.5"]
    verify_issued_by(cert, (agg / "workspaces" / AGGREGATOR / "cert" / "cert_chain.crt").read_bytes())
    assert check_key_matches_cert(key.read_bytes(), cert)
    assert not list((fed / "workspaces").rglob("*.key"))
    # The coordinator cannot then certify a second aggregator on its own host by accident.
    refused(cofe("certify", "ca", "--dir", fed, "--aggregator", cwd=tmp_path), "the aggregator already has a certificate")


def test_an_expired_aggregator_certificate_at_the_coordinator_is_named_and_the_ca_kept(flow: Flow, tmp_path: Path) -> None:
    """`certify ca --aggregator` used to say "a private key that this CA did not certify" and suggest --force,
    which with `ca` replaces the CA."""
    fed = tmp_path / "FED"
    shutil.copytree(flow.fed, fed)
    ok(cofe("certify", "ca", "--dir", fed, "--aggregator", cwd=tmp_path))
    paths = participant_cert_paths(FederationLayout(fed), FederationLayout(fed).load_manifest(), AGGREGATOR)
    expired = expired_copy(paths, flow.ca, EXPIRED)
    for path in (paths.cert, fed / "ca" / "issued" / "aggregator.crt"):
        path.write_bytes(expired)
    result = cofe("certify", "ca", "--dir", fed, "--aggregator", cwd=tmp_path)
    refused(result, "the aggregator has a certificate that expired on 2024-03-01 12:00 UTC")
    assert "--force" not in result.stderr and "move" in result.stderr
    paths.key.unlink()  # what the hint says
    ok(cofe("certify", "ca", "--dir", fed, "--aggregator", cwd=tmp_path))
    verify_issued_by(paths.cert.read_bytes(), flow.ca.chain_pem())
    assert CertificateAuthority.load(fed / "ca").root_fingerprint() == flow.fingerprint


def test_the_one_step_certify_still_works(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "FED").root
    result = ok(cofe("certify", "--dir", fed, cwd=tmp_path))
    assert "Root CA fingerprint (SHA-256):" in result.stdout
    for name in COLLABORATORS:
        assert mode(key_of(fed, name)) == 0o600
        verify_issued_by(cert_of(fed, name).read_bytes(), (fed / "ca" / "cert_chain.crt").read_bytes())
    status = ok(cofe("certify", "status", "--dir", fed, cwd=tmp_path)).stdout
    for name in (AGGREGATOR, *COLLABORATORS):
        assert re.search(rf"│ {name}\s+│", status), status
    # The group's own options are the one-step certify's; before a subcommand they are refused, not ignored.
    refused(cofe("certify", "--dir", fed, "status", cwd=tmp_path), "--dir given before `status`: there it is an option of the one-step certify")


# ---------------------------------------------------------------- revoke and status


def test_revoke_writes_a_signed_crl_holding_the_serial(flow: Flow, copies) -> None:
    fed, _ = copies
    serial = x509.load_pem_x509_certificate(cert_of(flow.site).read_bytes()).serial_number
    refused(cofe("certify", "revoke", "hospital_b", "--dir", fed, cwd=fed.parent), "no certificate of this CA issued to 'hospital_b'")
    assert not (fed / "ca" / "crl.pem").exists()
    result = ok(cofe("certify", "revoke", "hospital_a", "--dir", fed, "--reason", "key-compromise", cwd=fed.parent))
    assert format(serial, "x") in result.stdout and "SITE/workspaces/aggregator/cert/crl.pem" in result.stdout
    crl_pem = (fed / "ca" / "crl.pem").read_bytes()
    crl = x509.load_pem_x509_crl(crl_pem)
    assert crl.is_signature_valid(flow.ca.signing_cert.public_key())
    assert crl.issuer == flow.ca.signing_cert.subject
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert (fed / "workspaces" / AGGREGATOR / "cert" / "crl.pem").read_bytes() == crl_pem
    assert load_revoked_serials(fed / "ca" / "crl.pem", flow.ca.chain_pem()) == frozenset({serial})
    # Revoking again changes nothing.
    again = ok(cofe("certify", "revoke", "hospital_a", "--dir", fed, cwd=fed.parent))
    assert "Already revoked" in again.stdout and (fed / "ca" / "crl.pem").read_bytes() == crl_pem


def test_status_lists_certificates_expiry_and_revocation(flow: Flow, copies) -> None:
    fed, _ = copies
    # hospital_b, signed for 10 days only, then hospital_a revoked.
    site_b = fed.parent / "SITE_B"
    ok(cofe("export", "collaborator", "hospital_b", "--dir", fed, "-o", fed.parent / "b-kit.tar.gz", cwd=fed.parent))
    ok(cofe("import", fed.parent / "b-kit.tar.gz", "--dir", site_b, cwd=fed.parent))
    ok(cofe("certify", "request", "--dir", site_b, cwd=fed.parent))
    request = fed.parent / "hospital_b.csr.tar.gz"
    ok(cofe("certify", "sign", request, "--dir", fed, "--expect-hash", request_hash(request), "--validity-days", "10",
            cwd=fed.parent))
    ok(cofe("certify", "revoke", "hospital_a", "--dir", fed, cwd=fed.parent))
    status = ok(cofe("certify", "status", "--dir", fed, cwd=fed.parent)).stdout
    serial_a = format(x509.load_pem_x509_certificate(cert_of(flow.site).read_bytes()).serial_number, "x")
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
            for line in status.splitlines() if line.startswith("│")}
    assert rows["hospital_a"][1] == "collaborator" and rows["hospital_a"][2] == serial_a
    assert rows["hospital_a"][5] == "revoked"
    assert rows["hospital_b"][4] in ("9", "10") and rows["hospital_b"][5] == "no"
    assert flow.fingerprint in status


def test_load_revoked_serials_checks_the_signer(flow: Flow, tmp_path: Path, other_ca: CertificateAuthority) -> None:
    assert load_revoked_serials(tmp_path / "absent.pem", flow.ca.chain_pem()) == frozenset()
    entry = x509.RevokedCertificateBuilder().serial_number(1234).revocation_date(
        other_ca.signing_cert.not_valid_before_utc).build()
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(build_crl(other_ca, [entry], 1))
    with pytest.raises(CofeError, match="not signed by this federation's signing CA"):
        load_revoked_serials(foreign, flow.ca.chain_pem())
    assert load_revoked_serials(foreign, other_ca.chain_pem()) == frozenset({1234})
    # This CA's issuer name, another CA's key: the signature decides, not the name.
    other_key = serialization.load_pem_private_key((other_ca.ca_dir / "private" / "signing-ca.key").read_bytes(), None)
    forged_crl = (x509.CertificateRevocationListBuilder().issuer_name(flow.ca.signing_cert.subject)
                  .last_update(other_ca.signing_cert.not_valid_before_utc)
                  .next_update(other_ca.signing_cert.not_valid_after_utc)
                  .add_revoked_certificate(entry).sign(other_key, hashes.SHA384()))
    forged = tmp_path / "forged.pem"
    forged.write_bytes(forged_crl.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CofeError, match="not signed by this federation's signing CA"):
        load_revoked_serials(forged, flow.ca.chain_pem())
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN X509 CRL-----\nbm9wZQ==\n-----END X509 CRL-----\n")
    with pytest.raises(CofeError, match="is not a certificate revocation list"):
        load_revoked_serials(garbage, flow.ca.chain_pem())
    ours = tmp_path / "ours.pem"
    ours.write_bytes(build_crl(flow.ca, [entry], 7))
    assert load_revoked_serials(ours, flow.ca.chain_pem()) == frozenset({1234})
    assert load_revoked_serials(ours, flow.ca.chain_pem()) == frozenset({1234})  # cached
    der = tmp_path / "ours.der"
    der.write_bytes(x509.load_pem_x509_crl(ours.read_bytes()).public_bytes(serialization.Encoding.DER))
    assert load_revoked_serials(der, flow.ca.chain_pem()) == frozenset({1234})


def test_status_piped_at_80_columns_never_cuts_a_name(tmp_path: Path) -> None:
    """At 80 columns (what a pipe gets) the table cut every name to "hospit…": hospital_a and hospital_b read the same."""
    names = ["hospital_a", "hospital_b", "university_medical_center_north"]
    fed = write_federation(tmp_path / "FED", config=GANDLF_CONFIG, address=ADDRESS,
                           collaborators=[CollaboratorData(name, None) for name in names]).root
    ok(cofe("certify", "--dir", fed, cwd=tmp_path))
    done = subprocess.run([sys.executable, "-m", "cofe_cli", "certify", "status", "--dir", str(fed)], cwd=tmp_path,
                          env={**_env(), "COLUMNS": "80"}, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    status = ok(done).stdout
    assert "…" not in status, status
    first_cells = [line.split("│")[1].strip() for line in status.splitlines() if line.startswith("│")]
    assert [cell for cell in first_cells if cell] == [AGGREGATOR, *names], status
    expiry = f"{x509.load_pem_x509_certificate(cert_of(fed).read_bytes()).not_valid_after_utc:%Y-%m-%d}"
    assert re.search(rf"│ hospital_a\s+│ collaborator\s+│ [0-9a-f]+\s+│ {expiry}\s+│", status), status


@pytest.mark.parametrize("days", ["0", "-5", "10951", "10000000"])
def test_out_of_range_validity_is_refused_by_every_command_that_takes_it(flow: Flow, copies, days: str) -> None:
    """--validity-days 10000000 used to end in an OverflowError traceback."""
    fed, _ = copies
    before = tree(fed)
    commands = [["certify", "--dir", fed], ["certify", "ca", "--dir", fed, "--force"],
                ["certify", "ca", "--dir", fed, "--aggregator", "--force"],
                ["certify", "sign", flow.request, "--dir", fed, "--force", "--expect-hash", request_hash(flow.request),
                 "-o", fed.parent / "out.tar.gz"]]
    for command in commands:
        refused(cofe(*command, "--validity-days", days, cwd=fed.parent), f"--validity-days {days} is out of range")
    assert tree(fed) == before and not (fed.parent / "out.tar.gz").exists()
