"""Where each participant's certificates live inside its OpenFL workspace, and issuing them locally.

OpenFL reads `cert/cert_chain.crt`, `cert/server/agg_<address>.{crt,key}` and
`cert/client/col_<name>.{crt,key}`, relative to the workspace (see Plan.get_server_args/get_client_args).
"""

from __future__ import annotations

import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki.authority import DEFAULT_VALIDITY_DAYS, CertificateAuthority, check_key_matches_cert, verify_issued_by


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


def _is_current(paths: CertPaths, chain_pem: bytes) -> bool:
    if not paths.present() or paths.chain.read_bytes() != chain_pem:
        return False
    try:
        verify_issued_by(paths.cert.read_bytes(), chain_pem)
        return check_key_matches_cert(paths.key.read_bytes(), paths.cert.read_bytes())
    except CofeError:  # unreadable or foreign: not current
        return False


def certify_locally(layout: FederationLayout, manifest: Manifest, *, force: bool = False,
                    validity_days: int = DEFAULT_VALIDITY_DAYS) -> list[tuple[str, str]]:
    """For a federation run by one party: a CA and every participant's certificate, in one step.

    Returns (participant, action) pairs. Keys are never overwritten without `force`, and a refusal
    is decided before anything is written; a valid certificate from this CA is kept as it is."""
    existing = CertificateAuthority.load(layout.ca) if CertificateAuthority.exists(layout.ca) and not force else None
    chain = existing.chain_pem() if existing else None
    actions, to_issue = [("CA", "kept" if existing else "created")], []
    for participant in (AGGREGATOR, *manifest.collaborators):
        paths = participant_cert_paths(layout, manifest, participant)
        if chain is not None and _is_current(paths, chain):
            actions.append((participant, "kept"))
        elif paths.key.exists() and not force:
            raise CofeError(f"{participant} already has a private key that this CA did not certify ({paths.key})",
                            hint="pass --force to replace it with a new key and certificate")
        else:
            to_issue.append((participant, paths))
    ca = existing or CertificateAuthority.create(layout.ca, force=force, validity_days=validity_days, name=manifest.name)
    chain = ca.chain_pem()
    for participant, paths in to_issue:
        if participant == AGGREGATOR:
            issued = ca.issue_server_cert(manifest.aggregator_address, validity_days=validity_days)
        else:
            issued = ca.issue_client_cert(participant, validity_days=validity_days)
        issued.write(paths.cert, paths.key)
        atomic_write_bytes(paths.chain, chain)
        actions.append((participant, "issued"))
    return actions
