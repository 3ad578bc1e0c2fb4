"""Revocation: a real X.509 CRL signed by the federation's signing CA, and the list of what was issued.

`cofe certify revoke NAME --dir FED` puts the serial of every certificate this CA issued to NAME
(ca/issued/NAME.crt, earlier ones kept in ca/issued/archive/, and the one in NAME's workspace when
the one-step `cofe certify` made it) on the CRL, FED/ca/crl.pem (PEM, CRL number incremented on
every change, next update = the signing CA's expiry), and copies it to the aggregator's workspace,
FED/workspaces/aggregator/cert/crl.pem. When the aggregator runs on another host, the CRL has to be
copied to that host's SITE/workspaces/aggregator/cert/crl.pem (it holds no secret).

For the engine (the running aggregator), at every new client connection:

    from cofe_cli.pki.revocation import load_revoked_serials

    revoked = load_revoked_serials(aggregator.crl_file, aggregator.chain.read_bytes())  # aggregator: a Participant
    if peer_certificate.serial_number in revoked:
        refuse the call (gRPC: context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate revoked"))

`load_revoked_serials(crl_path, chain_pem) -> frozenset[int]`:
- no file at crl_path: frozenset() (nothing was ever revoked);
- otherwise the CRL (PEM or DER) must be issued and signed by the chain's signing CA (the chain's
  certificate that is not self-signed; the root only when the chain has nothing else); any other
  CRL, a damaged file or a bad signature raises CofeError, and the aggregator should then refuse
  the connection (fail closed) rather than ignore revocations;
- the result is cached per (file path, inode, size, mtime, chain), so calling it per connection costs
  a stat() once the CRL was read; a new CRL dropped in place (an atomic rename) is picked up at the
  next call. next_update is not enforced: cofe delivers CRLs by hand, and an old CRL still lists
  what it lists.
The peer's certificate is in the gRPC auth context (`context.auth_context()["x509_pem_cert"][0]`);
`x509.load_pem_x509_certificate(pem).serial_number` gives the serial to look up.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.participant import AGGREGATOR, CRL_FILE, role_of
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki.authority import CHAIN, CertificateAuthority
from cofe_cli.pki.issue_records import ARCHIVED_DIR, ISSUED_DIR
from cofe_cli.pki.x509 import certificate_or_none, chain_signers, issued_by_chain

REASONS = {
    "unspecified": None,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}
_CRL_HINT = "get the current crl.pem from the coordinator (`cofe certify revoke` writes ca/crl.pem)"


def ca_crl_path(layout: FederationLayout) -> Path:
    return layout.ca / CRL_FILE


# ---------------------------------------------------------------- reading a CRL


def _parse_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CofeError(f"{source} is not a certificate revocation list", hint=_CRL_HINT) from None


def _verified(crl: x509.CertificateRevocationList, chain_pem: bytes, source: str) -> x509.CertificateRevocationList:
    for signer in chain_signers(chain_pem, hint="pass the workspace's cert/cert_chain.crt"):
        if signer.subject != crl.issuer:
            continue
        try:
            if crl.is_signature_valid(signer.public_key()):
                return crl
        except (TypeError, ValueError, UnsupportedAlgorithm):
            continue
    raise CofeError(f"{source} is not signed by this federation's signing CA", hint=_CRL_HINT)


_cache: dict[tuple, frozenset[int]] = {}
_cache_lock = threading.Lock()


def load_revoked_serials(crl_path: Path, chain_pem: bytes) -> frozenset[int]:
    """Serial numbers the CRL at crl_path revokes, after checking it is signed by the chain's signing CA.

    A missing file means nothing is revoked; a damaged, foreign or badly signed CRL raises CofeError."""
    path = Path(crl_path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return frozenset()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, hashlib.sha256(chain_pem).digest())
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    crl = _verified(_parse_crl(path.read_bytes(), str(path)), chain_pem, str(path))
    serials = frozenset(entry.serial_number for entry in crl)
    with _cache_lock:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = serials
    return serials


# ---------------------------------------------------------------- what was issued


@dataclass
class CertRecord:
    name: str
    role: str
    serial: int
    not_after: datetime
    source: Path
    from_this_ca: bool
    revoked: bool | None  # None: no CRL could be read here

    @property
    def days_left(self) -> int:
        return (self.not_after - datetime.now(timezone.utc)).days


@dataclass
class Inventory:
    records: list[CertRecord]
    crl: Path | None
    warnings: list[str] = field(default_factory=list)


def _certificate_files(layout: FederationLayout) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    issued = layout.ca / ISSUED_DIR
    found += [(path.stem, path) for path in sorted(issued.glob("*.crt"))]
    found += [(path.name.split(".", 1)[0], path) for path in sorted((issued / ARCHIVED_DIR).glob("*.crt"))]
    if layout.workspaces.is_dir():
        for workspace in sorted(p for p in layout.workspaces.iterdir() if p.is_dir()):
            # Whatever certificates a workspace holds, whoever's folder it is: the file names say whose.
            cert_dir = layout.participant(workspace.name).cert_dir
            found += [(path.stem[len("col_"):], path) for path in sorted((cert_dir / "client").glob("col_*.crt"))]
            found += [(AGGREGATOR, path) for path in sorted((cert_dir / "server").glob("agg_*.crt"))]
    return found


def _chain_for(layout: FederationLayout, path: Path) -> bytes | None:
    """The CA's chain where the CA is; otherwise the chain of the workspace the certificate sits in."""
    candidates = [layout.ca / CHAIN]
    try:
        workspace = path.relative_to(layout.workspaces).parts[0]
        candidates.append(layout.participant(workspace).chain)
    except ValueError:  # a sign record under ca/
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_bytes()
    return None


def inventory(layout: FederationLayout) -> Inventory:
    """Every certificate this directory knows of (sign records and workspaces), newest facts first."""
    warnings: list[str] = []
    if ca_crl_path(layout).is_file() or (layout.ca / CHAIN).is_file():
        crl_path, crl_chain = ca_crl_path(layout), layout.ca / CHAIN
    else:
        crl_path, crl_chain = layout.aggregator().crl_file, layout.aggregator().chain
    revoked: frozenset[int] | None = None
    if crl_path.is_file():
        try:
            revoked = load_revoked_serials(crl_path, crl_chain.read_bytes() if crl_chain.is_file() else b"")
        except CofeError as error:
            warnings.append(f"revocations unknown: {error.message}")
    elif crl_chain.parent == layout.ca:
        revoked = frozenset()  # the CA is here and has never revoked anything
    records: list[CertRecord] = []
    seen: set[tuple[bytes, int]] = set()
    for name, path in _certificate_files(layout):
        try:
            cert = certificate_or_none(path.read_bytes())
        except OSError:
            cert = None
        if cert is None:
            warnings.append(f"{path} is not a readable certificate")
            continue
        identity = (cert.issuer.public_bytes(), cert.serial_number)
        if identity in seen:
            continue
        seen.add(identity)
        records.append(CertRecord(name, role_of(name), cert.serial_number, cert.not_valid_after_utc, path,
                                  issued_by_chain(cert, _chain_for(layout, path)),
                                  None if revoked is None else cert.serial_number in revoked))
    return Inventory(records, crl_path if crl_path.is_file() else None, warnings)


# ---------------------------------------------------------------- revoking


@dataclass
class RevokeResult:
    name: str
    added: list[int]
    already: list[int]
    crl: Path
    copies: list[Path]


def _existing_entries(path: Path, ca: CertificateAuthority) -> tuple[list[x509.RevokedCertificate], int]:
    if not path.is_file():
        return [], 0
    crl = _parse_crl(path.read_bytes(), str(path))
    try:
        _verified(crl, ca.chain_pem(), str(path))
    except CofeError:
        raise CofeError(f"{path} was not signed by this CA (left from a CA replaced with --force?)",
                        hint=f"move {path} away; the old CA's certificates no longer verify anyway") from None
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return list(crl), number


def build_crl(ca: CertificateAuthority, entries: list[x509.RevokedCertificate], number: int) -> bytes:
    now = datetime.now(timezone.utc)
    ski = ca.signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.signing_cert.subject)
        .last_update(now)
        .next_update(max(ca.signing_cert.not_valid_after_utc, now))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    return ca.sign_crl(builder).public_bytes(serialization.Encoding.PEM)


def revoke(layout: FederationLayout, name: str, *, reason: str = "unspecified") -> RevokeResult:
    if reason not in REASONS:
        raise CofeError(f"unknown revocation reason {reason!r}", hint=f"choose one of: {', '.join(REASONS)}")
    ca = CertificateAuthority.load(layout.ca)
    serials: list[int] = []
    for record_name, path in _certificate_files(layout):
        if record_name != name:
            continue
        try:
            cert = certificate_or_none(path.read_bytes())
        except OSError:
            continue
        if cert is not None and ca.issued(cert) and cert.serial_number not in serials:
            serials.append(cert.serial_number)
    if not serials:
        raise CofeError(f"no certificate of this CA issued to {name!r} is on record here",
                        hint=f"`cofe certify status --dir {layout.root}` lists the certificates issued")
    crl_path = ca_crl_path(layout)
    entries, number = _existing_entries(crl_path, ca)
    listed = {entry.serial_number for entry in entries}
    added = [serial for serial in serials if serial not in listed]
    if added:
        now = datetime.now(timezone.utc)
        for serial in added:
            builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            if REASONS[reason] is not None:
                builder = builder.add_extension(x509.CRLReason(REASONS[reason]), critical=False)
            entries.append(builder.build())
        atomic_write_bytes(crl_path, build_crl(ca, entries, number + 1))
    copies = []
    aggregator = layout.aggregator()
    if aggregator.workspace.is_dir():
        copy = aggregator.crl_file
        crl_pem = crl_path.read_bytes()
        if not copy.is_file() or copy.read_bytes() != crl_pem:
            atomic_write_bytes(copy, crl_pem)
        copies.append(copy)
    return RevokeResult(name, added, [serial for serial in serials if serial in listed], crl_path, copies)
