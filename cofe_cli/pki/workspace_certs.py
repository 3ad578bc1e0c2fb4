"""Where each participant's certificates live inside its OpenFL workspace, and issuing them locally.

OpenFL reads `cert/cert_chain.crt`, `cert/server/agg_<address>.{crt,key}` and
`cert/client/col_<name>.{crt,key}`, relative to the workspace (see Plan.get_server_args/get_client_args).
"""

from __future__ import annotations

import shlex
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from cryptography import x509

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki.authority import (
    DEFAULT_VALIDITY_DAYS,
    CertificateAuthority,
    check_key_matches_cert,
    check_validity_days,
    verify_issued_by,
)


@dataclass(frozen=True)
class CertPaths:
    chain: Path
    cert: Path
    key: Path

    def present(self) -> bool:
        return self.chain.is_file() and self.cert.is_file() and self.key.is_file()


def aggregator_cert_paths(workspace: Path, address: str) -> CertPaths:
    common_name = address.lower()  # OpenFL lowercases the address when it looks for the files
    return CertPaths(workspace / "cert" / "cert_chain.crt",
                     workspace / "cert" / "server" / f"agg_{common_name}.crt",
                     workspace / "cert" / "server" / f"agg_{common_name}.key")


def collaborator_cert_paths(workspace: Path, name: str) -> CertPaths:
    return CertPaths(workspace / "cert" / "cert_chain.crt",
                     workspace / "cert" / "client" / f"col_{name}.crt",
                     workspace / "cert" / "client" / f"col_{name}.key")


def participant_cert_paths(layout: FederationLayout, manifest: Manifest, participant: str) -> CertPaths:
    workspace = layout.workspace(participant)
    if participant == AGGREGATOR:
        return aggregator_cert_paths(workspace, manifest.aggregator_address)
    return collaborator_cert_paths(workspace, participant)


@dataclass(frozen=True)
class KeyExposure:
    """Private keys (and the CA's key folder) that group or others may read, and the chmod that closes them."""

    paths: list[tuple[Path, int]]  # (path, its permission bits)

    @property
    def message(self) -> str:
        shown = ", ".join(f"{path} (mode {mode:04o})" for path, mode in self.paths)
        return f"private keys readable by group or others: {shown}"

    @property
    def fix(self) -> str:
        files = [str(path) for path, _ in self.paths if not path.is_dir()]
        folders = [str(path) for path, _ in self.paths if path.is_dir()]
        commands = ([shlex.join(["chmod", "600", *files])] if files else []) + \
                   ([shlex.join(["chmod", "700", *folders])] if folders else [])
        return " && ".join(commands) + " (only their owner may read private keys)"


def exposed_private_keys(layout: FederationLayout, manifest: Manifest) -> KeyExposure | None:
    """Every private key in this directory (the CA's, every participant's) open to group or others; None if none is."""
    from cofe_cli.pki.authority import ROOT_KEY

    private = (layout.ca / ROOT_KEY).parent
    candidates = [private, *sorted(private.glob("*"))] if private.is_dir() else []
    candidates += [participant_cert_paths(layout, manifest, participant).key
                   for participant in (AGGREGATOR, *manifest.collaborators)]
    exposed = []
    for path in candidates:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except OSError:  # not there: nothing to expose
            continue
        if mode & 0o077:
            exposed.append((path, mode))
    return KeyExposure(exposed) if exposed else None


def require_certificates(layout: FederationLayout, manifest: Manifest, participant: str) -> None:
    paths = participant_cert_paths(layout, manifest, participant)
    if not paths.present():
        missing = next(p for p in (paths.chain, paths.cert, paths.key) if not p.is_file())
        raise CofeError(f"{participant} has no certificate yet ({missing.relative_to(layout.root)} is missing)",
                        hint=f"run `cofe certify --dir {layout.root}` first")


def certificate_problem(paths: CertPaths, ca: CertificateAuthority, expected_name: str, *,
                        now: datetime | None = None) -> str | None:
    """What keeps a participant's certificate (whose key is here) from being current under this CA, in
    words a user can act on; None when it is current. A stale chain file is not a problem of the certificate."""
    if not paths.cert.is_file():
        return f"has a private key ({paths.key}) but no certificate ({paths.cert})"
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    except ValueError:
        return f"has a certificate file that is not a PEM certificate ({paths.cert})"
    if not issued_by(cert, ca):
        return f"has a certificate that this federation's CA did not sign (changed, or from another CA: {paths.cert})"
    names = [str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [expected_name]:
        return f"has a certificate issued to {', '.join(names) or 'no name'}, not to {expected_name} ({paths.cert})"
    now = now or datetime.now(timezone.utc)
    if cert.not_valid_after_utc <= now:
        return f"has a certificate that expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({paths.cert})"
    if cert.not_valid_before_utc > now:
        return f"has a certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC ({paths.cert})"
    try:
        if not check_key_matches_cert(paths.key.read_bytes(), paths.cert.read_bytes()):
            return f"has a certificate that does not match its private key ({paths.key})"
        verify_issued_by(paths.cert.read_bytes(), ca.chain_pem())
    except CofeError as error:
        return f"has a key or certificate that cannot be used: {error.message}"
    return None


def issued_by(cert: x509.Certificate, ca: CertificateAuthority) -> bool:
    try:
        cert.verify_directly_issued_by(ca.signing_cert)
    except Exception:  # wrong issuer name, signature or key type: not ours
        return False
    return True


def certify_locally(layout: FederationLayout, manifest: Manifest, *, force: bool = False,
                    validity_days: int = DEFAULT_VALIDITY_DAYS, reissue: Sequence[str] = ()) -> list[tuple[str, str]]:
    """For a federation run by one party: a CA and every participant's certificate, in one step.

    Returns (participant, action) pairs. Keys are never overwritten without `force` (a new CA and
    everything) or `reissue` (a new key and certificate for the participants named, from this CA),
    and a refusal is decided before anything is written; a valid certificate from this CA is kept."""
    check_validity_days(validity_days)
    participants = (AGGREGATOR, *manifest.collaborators)
    reissue = list(dict.fromkeys(reissue))
    if reissue:
        if force:
            raise CofeError("--reissue keeps the CA and --force replaces it: give one of them",
                            hint="--reissue NAME re-issues NAME's certificate only; --force re-issues everything")
        unknown = [name for name in reissue if name not in participants]
        if unknown:
            raise CofeError(f"cannot re-issue {', '.join(unknown)}: not a participant of this federation "
                            f"(it has: {', '.join(participants)})", hint="check the spelling")
        if not CertificateAuthority.exists(layout.ca):
            raise CofeError(f"{layout.root} has no CA to re-issue from", hint=f"run `cofe certify --dir {layout.root}`")
    existing = CertificateAuthority.load(layout.ca) if CertificateAuthority.exists(layout.ca) and not force else None
    actions, to_issue = [("CA", "kept" if existing else "created")], []
    for participant in participants:
        paths = participant_cert_paths(layout, manifest, participant)
        if force or participant in reissue or not paths.key.exists():
            to_issue.append((participant, paths))
            continue
        if existing is None:
            raise CofeError(f"{participant} already has a private key ({paths.key}) but there is no CA here that "
                            "could have certified it", hint="pass --force to make a CA and every key and certificate")
        problem = certificate_problem(paths, existing,
                                      manifest.aggregator_address if participant == AGGREGATOR else participant)
        if problem is not None:
            raise CofeError(f"{participant} {problem}",
                            hint=f"re-issue {participant}'s key and certificate from this CA, leaving the CA and the "
                                 f"other participants as they are: `cofe certify --dir {layout.root} --reissue "
                                 f"{participant}` (--force would replace the CA and every participant's certificate)")
        if not paths.chain.is_file() or paths.chain.read_bytes() != existing.chain_pem():
            atomic_write_bytes(paths.chain, existing.chain_pem())
        actions.append((participant, "kept"))
    ca = existing or CertificateAuthority.create(layout.ca, force=force, validity_days=validity_days, name=manifest.name)
    chain = ca.chain_pem()
    for participant, paths in to_issue:
        replaced = participant in reissue and paths.cert.is_file()
        if replaced:
            from cofe_cli.pki.requests import keep_on_record

            keep_on_record(layout, participant, paths.cert.read_bytes(), ca)
        if participant == AGGREGATOR:
            issued = ca.issue_server_cert(manifest.aggregator_address, validity_days=validity_days)
        else:
            issued = ca.issue_client_cert(participant, validity_days=validity_days)
        issued.write(paths.cert, paths.key)
        atomic_write_bytes(paths.chain, chain)
        actions.append((participant, "re-issued" if participant in reissue else "issued"))
    return actions
