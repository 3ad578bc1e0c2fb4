"""The CA's record of what it issued: FED/ca/issued/<name>.crt for the current certificate of each
participant, and FED/ca/issued/archive/<name>.<serial>.crt for those replaced since. `certify status`
lists them and `certify revoke` revokes them, also once a certificate is no longer in any workspace.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki.authority import CertificateAuthority
from cofe_cli.pki.x509 import certificate_or_none

ISSUED_DIR = "issued"  # under FED/ca: one <name>.crt per participant signed from a request
ARCHIVED_DIR = "archive"  # under FED/ca/issued: earlier certificates replaced with --force


def issued_record(layout: FederationLayout, name: str) -> Path:
    return layout.ca / ISSUED_DIR / f"{name}.crt"


def current_certificate(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority,
                        name: str) -> Path | None:
    """A certificate of this CA already issued to `name`: the sign record, or (one-step certify) the workspace's."""
    candidates = [issued_record(layout, name)]
    if name in manifest.participant_names():
        candidates.append(layout.participant(name, manifest).cert)
    for path in candidates:
        if path.is_file():
            cert = certificate_or_none(path.read_bytes())
            if cert is not None and ca.issued(cert) and cert.not_valid_after_utc > datetime.now(timezone.utc):
                return path
    return None


def archive_old_record(record: Path) -> None:
    """A replaced certificate stays on record (ca/issued/archive/<name>.<serial>.crt) for status and revoke."""
    if not record.is_file():
        return
    target = _archived_path(record.parent, record.stem, record.read_bytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(record, target)


def _archived_path(issued: Path, name: str, cert_pem: bytes) -> Path:
    cert = certificate_or_none(cert_pem)
    serial = format(cert.serial_number, "x") if cert is not None else "damaged"
    return issued / ARCHIVED_DIR / f"{name}.{serial}.crt"


def keep_on_record(layout: FederationLayout, name: str, cert_pem: bytes, ca: CertificateAuthority) -> None:
    """A certificate of this CA about to be replaced in a workspace stays on record, as a replaced sign
    record does: `certify status` still lists it and `certify revoke` can still revoke it."""
    cert = certificate_or_none(cert_pem)
    if cert is None or not ca.issued(cert):
        return  # not this CA's: nothing it could revoke
    atomic_write_bytes(_archived_path(layout.ca / ISSUED_DIR, name, cert_pem), cert_pem)


def record_issued(layout: FederationLayout, name: str, cert_pem: bytes) -> Path:
    record = issued_record(layout, name)
    if record.is_file() and record.read_bytes() == cert_pem:
        return record
    archive_old_record(record)
    atomic_write_bytes(record, cert_pem)
    return record
