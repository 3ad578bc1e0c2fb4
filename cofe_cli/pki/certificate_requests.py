"""Certificate requests between machines: a site's private key never leaves the site.

    site:         cofe certify request   -> key (mode 0600, in the workspace) + <name>.csr.tar.gz
    coordinator:  cofe certify sign      -> <name>-signed.tar.gz (+ a record in ca/issued/<name>.crt)
    site:         cofe certify install   -> the certificate and CA chain where OpenFL looks for them

Archives (gzip-compressed tar, regular files only, fixed member names):

- request `<name>.csr.tar.gz`: `csr.pem` (PKCS#10, PEM) and `request.json`:
  {"format": "cofe-certificate-request", "version": 1, "name": "hospital_a", "role": "collaborator",
   "federation": "...", "plan_sha384": "<hex>", "common_name": "...", "subject_alt_names": [...],
   "created": "<ISO 8601 UTC>", "cofe_version": "..."}
  Its *hash* is the SHA-256 of the CSR's DER bytes, which hold the name and the public key: the
  site reads it out (grouped hex) and the coordinator compares before signing. request.json is
  not covered by the hash; the name and role it claims are checked against the CSR and the plan.
- signed `<name>-signed.tar.gz`: `certificate.crt`, `cert_chain.crt` (signing CA + root) and
  `signed.json`: {"format": "cofe-signed-certificate", "version": 1, "name", "role", "serial"
  (hex), "not_after", "root_fingerprint", "plan_sha384", "request_sha256"}.

The archives are read and written with `cofe_cli.archive` (bounded, regular files only).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cofe_cli import __version__
from cofe_cli.archive import (
    FORMAT_VERSION,
    ArchiveSpec,
    archive_bytes,
    group_hex,
    json_bytes,
    load_json_member,
    normalise_hex,
    now_iso,
    read_archive,
    write_archive,
)
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest, check_collaborator_name, check_plan_unchanged, local_participant
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki.authority import DEFAULT_VALIDITY_DAYS, CertificateAuthority, make_private_key_and_csr
from cofe_cli.pki.issue_records import current_certificate, record_issued
from cofe_cli.participant import CHAIN_FILE, is_aggregator
from cofe_cli.pki.workspace_certs import CertPaths
from cofe_cli.pki.x509 import (
    chain_root_fingerprint,
    check_key_matches_cert,
    common_name,
    parse_certificate,
    parse_csr,
    same_host,
    san_names,
    verify_issued_by,
)

REQUEST_FORMAT = "cofe-certificate-request"
SIGNED_FORMAT = "cofe-signed-certificate"
REQUEST_SUFFIX = ".csr.tar.gz"
SIGNED_SUFFIX = "-signed.tar.gz"
CSR_MEMBER = "csr.pem"
REQUEST_MEMBER = "request.json"
CERT_MEMBER = "certificate.crt"
CHAIN_MEMBER = CHAIN_FILE
SIGNED_MEMBER = "signed.json"

_SMALL = 64 * 1024
_REQUEST_HINT = "ask the site for the <name>.csr.tar.gz that `cofe certify request` wrote"
_SIGNED_HINT = "ask the coordinator for the <name>-signed.tar.gz that `cofe certify sign` wrote"

REQUEST_ARCHIVE = ArchiveSpec("certificate request", {CSR_MEMBER: _SMALL, REQUEST_MEMBER: _SMALL},
                              frozenset({CSR_MEMBER, REQUEST_MEMBER}), _REQUEST_HINT)
SIGNED_ARCHIVE = ArchiveSpec("signed certificate", {CERT_MEMBER: _SMALL, CHAIN_MEMBER: _SMALL, SIGNED_MEMBER: _SMALL},
                             frozenset({CERT_MEMBER, CHAIN_MEMBER, SIGNED_MEMBER}), _SIGNED_HINT)


def csr_hash(csr_pem: bytes) -> str:
    """SHA-256 (hex) of the request's DER bytes: what the site reads out and the coordinator checks."""
    csr = _load_csr(csr_pem)
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    return parse_csr(csr_pem, "the request holds no PEM certificate signing request", _REQUEST_HINT)


def csr_path(paths: CertPaths) -> Path:
    return paths.key.with_suffix(".csr")


# ---------------------------------------------------------------- site: make the key and the request


@dataclass
class RequestResult:
    name: str
    role: str
    key: Path
    csr: Path
    archive: Path
    sha256: str
    subject_alt_names: list[str]
    replaced_certificate: bool = False


def create_request(layout: FederationLayout, manifest: Manifest, name: str | None, *, out: Path | None = None,
                   extra_san: Sequence[str] = (), force: bool = False) -> RequestResult:
    this = layout.participant(local_participant(layout, manifest, name), manifest)
    name, role = this.name, this.role
    check_plan_unchanged(layout, manifest)
    paths = CertPaths.of(this)
    if extra_san and not this.is_aggregator:
        raise CofeError("--san names the aggregator's host names; a collaborator's certificate carries its name only",
                        hint="drop --san")
    common_name, san = this.common_name, this.subject_alt_names(extra_san)
    if paths.key.exists() and not force:
        raise CofeError(f"{name} already has a private key ({paths.key})",
                        hint="pass --force to make a new key; its certificate must then be signed again")
    out = Path(out).expanduser() if out else Path(f"{name}{REQUEST_SUFFIX}")
    if out.exists() and not force:
        raise CofeError(f"{out} already exists", hint="pass --force to replace it, or -o another file name")

    key_pem, csr_pem = make_private_key_and_csr(common_name, san=san)
    digest = csr_hash(csr_pem)
    request = {
        "format": REQUEST_FORMAT, "version": FORMAT_VERSION, "name": name, "role": role,
        "federation": manifest.name, "plan_sha384": manifest.plan_sha384, "common_name": common_name,
        "subject_alt_names": san, "created": now_iso(), "cofe_version": __version__,
    }
    data = archive_bytes({CSR_MEMBER: csr_pem, REQUEST_MEMBER: json_bytes(request)})
    with _restored_on_failure(paths.key, csr_path(paths)):
        atomic_write_bytes(paths.key, key_pem, mode=0o600)
        atomic_write_bytes(csr_path(paths), csr_pem)
        atomic_write_bytes(out, data, mode=0o644)
    replaced = False
    if paths.cert.exists() and not check_key_matches_cert(key_pem, paths.cert.read_bytes()):
        paths.cert.unlink()  # it certifies the old key, which is gone
        replaced = True
    return RequestResult(name, role, paths.key, csr_path(paths), out, digest, san, replaced)


@contextlib.contextmanager
def _restored_on_failure(*paths: Path):
    """If the block fails, every path is put back as it was (a half-made request leaves no new key behind)."""
    saved = {path: (path.read_bytes(), path.stat().st_mode & 0o777) if path.is_file() else None for path in paths}
    try:
        yield
    except BaseException:
        for path, before in saved.items():
            with contextlib.suppress(OSError):
                if before is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(path, before[0], mode=before[1])
        raise


# ---------------------------------------------------------------- coordinator: check and sign


@dataclass
class PendingRequest:
    source: Path
    name: str
    role: str
    plan_sha384: str
    csr_pem: bytes
    sha256: str
    common_name: str
    subject_alt_names: list[str]
    info: dict = field(default_factory=dict)


def load_request(path: Path) -> PendingRequest:
    path = Path(path).expanduser()
    members = read_archive(path, REQUEST_ARCHIVE)
    info = load_json_member(members, REQUEST_MEMBER, expected_format=REQUEST_FORMAT, source=path, hint=_REQUEST_HINT)
    name, role, plan = info.get("name"), info.get("role"), info.get("plan_sha384")
    if not all(isinstance(value, str) and value for value in (name, role, plan)):
        raise CofeError(f"{path}: request.json lacks name, role or plan_sha384", hint=_REQUEST_HINT)
    csr = _load_csr(members[CSR_MEMBER])
    if not csr.is_signature_valid:
        raise CofeError(f"{path}: the request's signature does not verify (changed after it was made?)",
                        hint="ask the site for a new request")
    return PendingRequest(path, name, role, plan.lower(), members[CSR_MEMBER], csr_hash(members[CSR_MEMBER]),
                          common_name(csr.subject), san_names(csr.extensions), info)


def check_request(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority, request: PendingRequest,
                  *, force: bool = False, allow_other_plan: bool = False) -> list[str]:
    """Everything that can refuse a request, before anyone is asked to confirm its hash; returns warnings."""
    warnings: list[str] = []
    name = request.name
    if not is_aggregator(name):
        try:
            check_collaborator_name(name)
        except CofeError:
            raise CofeError(f"the request is for {name!r}, which is not a participant name",
                            hint="ask the site for the request `cofe certify request` made") from None
        if name not in manifest.collaborators:
            raise CofeError(f"the request is for {name!r}, but the plan has no such collaborator "
                            f"(it has: {', '.join(manifest.collaborators)})",
                            hint="check which site sent it; add a site with `cofe init --force` and a new --collaborator")
    this = layout.participant(name, manifest)
    if request.role != this.role:
        raise CofeError(f"the request for {name!r} claims the role {request.role!r}, but {name} is "
                        f"{'the' if this.is_aggregator else 'a'} {this.role}",
                        hint="ask the site for a new request made with `cofe certify request`")
    expected_cn = this.common_name
    if request.common_name != expected_cn:
        raise CofeError(f"the request's certificate name is {request.common_name!r}, expected {expected_cn!r}",
                        hint="ask the site for a new request made with `cofe certify request`")
    if this.is_aggregator and not any(same_host(entry, manifest.aggregator_address)
                                      for entry in request.subject_alt_names):
        raise CofeError(f"the aggregator's request does not name the plan's aggregator address "
                        f"{manifest.aggregator_address!r} (it names: {', '.join(request.subject_alt_names) or 'nothing'})",
                        hint="make the request again with `cofe certify request` from the aggregator's kit")
    if request.plan_sha384 != manifest.plan_sha384:
        message = (f"the request was made for another plan (sha384 {request.plan_sha384[:16]}...) "
                   f"than this federation's ({manifest.plan_sha384[:16]}...)")
        if not allow_other_plan:
            raise CofeError(message, hint="send the site the current kit (`cofe export`), have it re-import it with "
                                          "--force, or pass --allow-other-plan to sign anyway")
        warnings.append(message)
    current = current_certificate(layout, manifest, ca, name)
    if current is not None and not force:
        raise CofeError(f"{name} already has a certificate from this CA ({current})",
                        hint=f"pass --force to sign a new one (then revoke the old one: `cofe certify revoke {name}`)")
    return warnings


def parse_expected_hash(expected: str) -> str:
    digits = normalise_hex(expected)
    if len(digits) != 64 or any(ch not in "0123456789abcdef" for ch in digits):
        raise CofeError(f"--expect-hash {expected!r} is not 64 hex digits",
                        hint="give the whole hash the site's `cofe certify request` printed (spaces allowed)")
    return digits


def check_expected_hash(request: PendingRequest, expected: str) -> None:
    digits = parse_expected_hash(expected)
    if digits != request.sha256:
        raise CofeError(f"the request's hash {group_hex(request.sha256)} does not match --expect-hash "
                        f"{group_hex(digits)}: it is not the request the site made",
                        hint="do not sign it; ask the site to read the hash again, or to send its request again")


@dataclass
class SignResult:
    name: str
    role: str
    archive: Path
    record: Path
    serial: int
    not_after: datetime
    root_fingerprint: str
    subject_alt_names: list[str]


def sign_request(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority, request: PendingRequest,
                 *, out: Path | None = None, force: bool = False,
                 validity_days: int = DEFAULT_VALIDITY_DAYS) -> SignResult:
    name = request.name
    out = Path(out).expanduser() if out else Path(f"{name}{SIGNED_SUFFIX}")
    if out.exists() and not force:
        raise CofeError(f"{out} already exists", hint="pass --force to replace it, or -o another file name")
    this = layout.participant(name, manifest)
    cert_pem = ca.sign_csr(request.csr_pem, kind=this.certificate_kind, expected_name=this.common_name,
                           validity_days=validity_days)
    chain = ca.chain_pem()
    verify_issued_by(cert_pem, chain)
    cert = parse_certificate(cert_pem)
    signed = {
        "format": SIGNED_FORMAT, "version": FORMAT_VERSION, "name": name, "role": this.role,
        "serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
        "root_fingerprint": ca.root_fingerprint(), "plan_sha384": manifest.plan_sha384,
        "request_sha256": request.sha256, "cofe_version": __version__,
    }
    write_archive(out, {CERT_MEMBER: cert_pem, CHAIN_MEMBER: chain, SIGNED_MEMBER: json_bytes(signed)}, force=force)
    record = record_issued(layout, name, cert_pem)
    return SignResult(name, this.role, out, record, cert.serial_number, cert.not_valid_after_utc,
                      ca.root_fingerprint(), san_names(cert.extensions))


# ---------------------------------------------------------------- site: install what came back


@dataclass
class InstallResult:
    name: str
    cert: Path
    chain: Path
    serial: int
    not_after: datetime
    unchanged: bool


def install_signed(layout: FederationLayout, manifest: Manifest, path: Path, *, expected_root_fingerprint: str,
                   name: str | None = None) -> InstallResult:
    path = Path(path).expanduser()
    expected = normalise_hex(expected_root_fingerprint)
    if len(expected) != 64 or any(ch not in "0123456789abcdef" for ch in expected):
        raise CofeError(f"--expect-root-fingerprint {expected_root_fingerprint!r} is not a SHA-256 fingerprint "
                        "(64 hex digits)", hint="ask the coordinator to read out the root fingerprint `cofe certify ca` printed")
    members = read_archive(path, SIGNED_ARCHIVE)
    info = load_json_member(members, SIGNED_MEMBER, expected_format=SIGNED_FORMAT, source=path, hint=_SIGNED_HINT)
    signed_name = info.get("name")
    if not isinstance(signed_name, str) or not signed_name:
        raise CofeError(f"{path}: signed.json names no participant", hint=_SIGNED_HINT)
    if name is not None and name != signed_name:
        raise CofeError(f"{path} holds {signed_name}'s certificate, not {name}'s", hint=_SIGNED_HINT)
    name = local_participant(layout, manifest, signed_name)
    chain_pem, cert_pem = members[CHAIN_MEMBER], members[CERT_MEMBER]
    root_fingerprint = chain_root_fingerprint(chain_pem)
    if normalise_hex(root_fingerprint) != expected:
        raise CofeError(f"the certificate comes from a CA whose root fingerprint is {root_fingerprint}, "
                        f"not the one you expected", hint="do not install it; check the fingerprint with the "
                                                          "coordinator by phone, not from the message that brought the file")
    cert = parse_certificate(cert_pem, f"{path}: {CERT_MEMBER}", _SIGNED_HINT)
    this = layout.participant(name, manifest)
    if common_name(cert.subject) != this.common_name:
        raise CofeError(f"the certificate is for {common_name(cert.subject)!r}, not {this.common_name!r}", hint=_SIGNED_HINT)
    verify_issued_by(cert_pem, chain_pem)
    paths = CertPaths.of(this)
    if not paths.key.is_file():
        raise CofeError(f"{name} has no private key here ({paths.key})",
                        hint=f"make it first: `cofe certify request --dir {layout.root}`, and have that request signed")
    if not check_key_matches_cert(paths.key.read_bytes(), cert_pem):
        raise CofeError(f"the certificate does not match {name}'s private key here ({paths.key})",
                        hint="it was signed from another request; have the coordinator sign this site's latest "
                             "request (its hash is the one `cofe certify request` printed)")
    unchanged = (paths.cert.is_file() and paths.cert.read_bytes() == cert_pem
                 and paths.chain.is_file() and paths.chain.read_bytes() == chain_pem)
    if not unchanged:
        atomic_write_bytes(paths.cert, cert_pem)
        atomic_write_bytes(paths.chain, chain_pem)
    return InstallResult(name, paths.cert, paths.chain, cert.serial_number, cert.not_valid_after_utc, unchanged)

