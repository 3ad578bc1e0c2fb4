"""Keys and certificates made where the CA is: the one-step `cofe certify` for a federation run by one
party, and `cofe certify ca --aggregator` for a coordinator that also runs the aggregator.

A key is never overwritten without being asked to, and a certificate of this CA that is current is
kept; what keeps one from being current is said in words (`certificate_problem`).
"""

from __future__ import annotations

from typing import Sequence

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.participant import Participant
from cofe_cli.pki.authority import DEFAULT_VALIDITY_DAYS, CertificateAuthority, IssuedCert, check_validity_days
from cofe_cli.pki.issue_records import current_certificate, keep_on_record, record_issued
from cofe_cli.pki.workspace_certs import CertPaths, certificate_problem, refresh_chain


def certify_locally(layout: FederationLayout, manifest: Manifest, *, force: bool = False,
                    validity_days: int = DEFAULT_VALIDITY_DAYS, reissue: Sequence[str] = ()) -> list[tuple[str, str]]:
    """For a federation run by one party: a CA and every participant's certificate, in one step.

    Returns (participant, action) pairs. Keys are never overwritten without `force` (a new CA and
    everything) or `reissue` (a new key and certificate for the participants named, from this CA),
    and a refusal is decided before anything is written; a valid certificate from this CA is kept."""
    check_validity_days(validity_days)
    participants = manifest.participant_names()
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
    for this in layout.participants(manifest):
        participant, paths = this.name, CertPaths.of(this)
        if force or participant in reissue or not paths.key.exists():
            to_issue.append(this)
            continue
        if existing is None:
            raise CofeError(f"{participant} already has a private key ({paths.key}) but there is no CA here that "
                            "could have certified it", hint="pass --force to make a CA and every key and certificate")
        problem = certificate_problem(paths, existing, this.common_name)
        if problem is not None:
            raise CofeError(f"{participant} {problem}",
                            hint=f"re-issue {participant}'s key and certificate from this CA, leaving the CA and the "
                                 f"other participants as they are: `cofe certify --dir {layout.root} --reissue "
                                 f"{participant}` (--force would replace the CA and every participant's certificate)")
        refresh_chain(paths, existing.chain_pem())
        actions.append((participant, "kept"))
    ca = existing or CertificateAuthority.create(layout.ca, force=force, validity_days=validity_days, name=manifest.name)
    for this in to_issue:
        if this.name in reissue and this.cert.is_file():
            keep_on_record(layout, this.name, this.cert.read_bytes(), ca)
        _issue(ca, this, validity_days)
        actions.append((this.name, "re-issued" if this.name in reissue else "issued"))
    return actions


def certify_aggregator_here(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority, *,
                            force: bool, validity_days: int) -> str:
    """The aggregator's key and certificate on the coordinator's host, on record like a signed request's;
    returns "kept" or "issued"."""
    aggregator = layout.aggregator(manifest)
    paths = CertPaths.of(aggregator)
    if paths.key.exists() and not force:
        problem = certificate_problem(paths, ca, aggregator.common_name)
        if problem is not None:
            # Not --force: with `ca` it would replace the CA, and every site's certificate with it.
            raise CofeError(f"the aggregator {problem}",
                            hint=f"for a new key and certificate from this CA, move {paths.key} away and run "
                                 f"`cofe certify ca --dir {layout.root} --aggregator` again")
        refresh_chain(paths, ca.chain_pem())
        record_issued(layout, aggregator.name, paths.cert.read_bytes())
        return "kept"
    signed = current_certificate(layout, manifest, ca, aggregator.name)
    if signed is not None and not force:
        raise CofeError(f"the aggregator already has a certificate from this CA ({signed}), signed from its request",
                        hint="pass --force to certify an aggregator on this host instead (then revoke the other one)")
    issued = _issue(ca, aggregator, validity_days)
    record_issued(layout, aggregator.name, issued.cert_pem)
    return "issued"


def _issue(ca: CertificateAuthority, participant: Participant, validity_days: int) -> IssuedCert:
    """A new key and certificate for `participant`, written with the CA's chain into its workspace."""
    issue = ca.issue_server_cert if participant.is_aggregator else ca.issue_client_cert
    issued = issue(participant.common_name, validity_days=validity_days)
    issued.write(participant.cert, participant.key)
    refresh_chain(CertPaths.of(participant), ca.chain_pem())
    return issued
