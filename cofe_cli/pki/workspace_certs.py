"""Each participant's certificates inside its OpenFL workspace, and whether they can be used.

Where they are is the Participant's to say (cofe_cli/participant.py): OpenFL reads `cert/cert_chain.crt`,
`cert/server/agg_<address>.{crt,key}` and `cert/client/col_<name>.{crt,key}`, relative to the
workspace (see Plan.get_server_args/get_client_args).
"""

from __future__ import annotations

import shlex
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.participant import Participant
from cofe_cli.pki.authority import ROOT_KEY, CertificateAuthority
from cofe_cli.pki.x509 import certificate_or_none, check_key_matches_cert, common_names, verify_issued_by


@dataclass(frozen=True)
class CertPaths:
    chain: Path
    cert: Path
    key: Path

    def present(self) -> bool:
        return self.chain.is_file() and self.cert.is_file() and self.key.is_file()

    @classmethod
    def of(cls, participant: Participant) -> "CertPaths":
        return cls(participant.chain, participant.cert, participant.key)


def participant_cert_paths(layout: FederationLayout, manifest: Manifest, participant: str) -> CertPaths:
    return CertPaths.of(layout.participant(participant, manifest))


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
    private = (layout.ca / ROOT_KEY).parent
    candidates = [private, *sorted(private.glob("*"))] if private.is_dir() else []
    candidates += [participant.key for participant in layout.participants(manifest)]
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
    cert = certificate_or_none(paths.cert.read_bytes())
    if cert is None:
        return f"has a certificate file that is not a PEM certificate ({paths.cert})"
    if not ca.issued(cert):
        return f"has a certificate that this federation's CA did not sign (changed, or from another CA: {paths.cert})"
    names = common_names(cert.subject)
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


def refresh_chain(paths: CertPaths, chain_pem: bytes) -> None:
    """Put the CA's current chain beside a certificate that is kept (written only when it differs)."""
    if not paths.chain.is_file() or paths.chain.read_bytes() != chain_pem:
        atomic_write_bytes(paths.chain, chain_pem)
