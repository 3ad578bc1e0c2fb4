"""`cofe certify`: the federation's CA and each participant's certificate.

Bare `cofe certify` does everything in one step at one party (keys made where the CA is). The
subcommands split it across machines so that a site's private key never leaves the site:
`ca` at the coordinator, `request` at the site, `sign` at the coordinator, `install` at the site;
`revoke` and `status` at the coordinator.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cofe_cli.console import console, warn_exposed_private_keys
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.locks import federation_locked
from cofe_cli.participant import is_aggregator
from cofe_cli.pki.authority import DEFAULT_VALIDITY_DAYS, CertificateAuthority, check_validity_days
from cofe_cli.pki.local_issuing import certify_aggregator_here, certify_locally

app = typer.Typer(
    help="Create the federation's CA and certificates: in one step (no subcommand), or with keys that never "
         "leave their site (ca, request, sign, install; revoke, status).",
    no_args_is_help=False,
)

_DIR = typer.Option(Path("."), "--dir", "-d", help="Federation (or site) directory.")
_VALIDITY = typer.Option(DEFAULT_VALIDITY_DAYS, "--validity-days", help="Certificate lifetime in days.")
_OUT = typer.Option(None, "--output", "-o", help="File to write (default: in the current folder).")


@app.callback(invoke_without_command=True)
def certify(
    ctx: typer.Context,
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory."),
    force: bool = typer.Option(False, "--force", help="Replace the CA, keys and certificates that exist."),
    validity_days: int = typer.Option(DEFAULT_VALIDITY_DAYS, "--validity-days", help="Certificate lifetime in days."),
    reissue: list[str] = typer.Option(None, "--reissue", help="A new key and certificate for this participant from the existing CA (the CA and the others stay). Repeat."),
) -> None:
    """For a federation run by one party: a CA and every participant's certificate in one step."""
    if ctx.invoked_subcommand is not None:
        # By name: typer may bring its own copy of click, whose ParameterSource is another enum.
        given = [f"--{name.replace('_', '-')}" for name in ("dir", "force", "validity_days", "reissue")
                 if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
        if given:  # `cofe certify --dir FED status` would otherwise act on the current folder
            sub = ctx.invoked_subcommand
            raise CofeError(f"{' '.join(given)} given before `{sub}`: there it is an option of the one-step certify",
                            hint=f"put the options after the subcommand: `cofe certify {sub} --dir DIR ...`")
        return
    check_validity_days(validity_days)
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    with federation_locked(layout):
        actions = certify_locally(layout, manifest, force=force, validity_days=validity_days, reissue=reissue or ())
    table = Table("participant", "certificate", title="Certificates")
    for participant, action in actions:
        table.add_row(participant, action)
    console.print(table)
    _say(f"Root CA fingerprint (SHA-256): {CertificateAuthority.load(layout.ca).root_fingerprint()}")
    warn_exposed_private_keys(layout, manifest)


def _say(text: str) -> None:
    console.print(text, soft_wrap=True)


def _load_ca(layout: FederationLayout) -> CertificateAuthority:
    if not CertificateAuthority.exists(layout.ca):
        raise CofeError(f"{layout.root} has no CA", hint=f"make it at the coordinator: `cofe certify ca --dir {layout.root}`")
    return CertificateAuthority.load(layout.ca)


# ---------------------------------------------------------------- ca


@app.command("ca")
def ca(
    dir: Path = _DIR,
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (every certificate it signed stops working)."),
    validity_days: int = typer.Option(DEFAULT_VALIDITY_DAYS, "--validity-days", help="CA lifetime in days."),
    aggregator: bool = typer.Option(False, "--aggregator", help="Also certify the aggregator on this host (when the coordinator runs it)."),
) -> None:
    """At the coordinator: the federation's root and signing CA, without any participant's key."""
    from cofe_cli.pki.revocation import ca_crl_path

    check_validity_days(validity_days)
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    with federation_locked(layout):
        if CertificateAuthority.exists(layout.ca) and not force:
            authority, action = CertificateAuthority.load(layout.ca), "kept (pass --force to replace it)"
        else:
            authority = CertificateAuthority.create(layout.ca, force=force, validity_days=validity_days, name=manifest.name)
            action = "created"
            # A CRL of a replaced CA no longer verifies: an aggregator would refuse everyone.
            for stale in (ca_crl_path(layout), layout.aggregator().crl_file):
                stale.unlink(missing_ok=True)
        _say(f"CA {action}: {escape(str(layout.ca))} (valid until {authority.root_cert.not_valid_after_utc:%Y-%m-%d})")
        if aggregator:
            done = certify_aggregator_here(layout, manifest, authority, force=force, validity_days=validity_days)
            _say(f"Aggregator certificate ({escape(manifest.aggregator_address)}): {done}")
    _say(f"Root CA fingerprint (SHA-256): [bold]{authority.root_fingerprint()}[/]")
    _say("Read it out to every site (by phone, not in the e-mail that carries their kit): they check it with "
         "`cofe certify install --expect-root-fingerprint`.")
    _say(f"Next: [bold]cofe export collaborator NAME --dir {escape(str(layout.root))}[/] for each site.")
    warn_exposed_private_keys(layout, manifest)


# ---------------------------------------------------------------- request (at the site)


@app.command("request")
def request(
    name: str = typer.Argument(None, help="Participant (default: the only one in --dir)."),
    dir: Path = _DIR,
    san: list[str] = typer.Option(None, "--san", help="Aggregator only: another DNS name or IP sites may dial. Repeat."),
    out: Path = _OUT,
    force: bool = typer.Option(False, "--force", help="Replace this participant's private key (its certificate must be signed again)."),
) -> None:
    """At a site: make this participant's private key (it stays here, mode 0600) and a request for the coordinator."""
    from cofe_cli.archive import group_hex
    from cofe_cli.pki.certificate_requests import create_request

    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    with federation_locked(layout):
        result = create_request(layout, manifest, name, out=out, extra_san=san or (), force=force)
    _say(f"Private key of {result.name}: {escape(str(result.key))} (mode 0600; it never leaves this machine)")
    if result.replaced_certificate:
        _say("The certificate of the old key was removed; install the one signed from this request.")
    if result.role == "aggregator":
        _say(f"Names in the certificate: {escape(', '.join(result.subject_alt_names))}")
    _say(f"Request: [bold]{escape(str(result.archive))}[/] (no secret inside): send it to the coordinator.")
    _say("Request hash (read it out to the coordinator, who checks it before signing):")
    _say(f"  [bold]{group_hex(result.sha256)}[/]")


# ---------------------------------------------------------------- sign (at the coordinator)


@app.command("sign")
def sign(
    request_file: Path = typer.Argument(..., help="The <name>.csr.tar.gz a site sent."),
    dir: Path = _DIR,
    expect_hash: str = typer.Option(None, "--expect-hash", help="The request hash the site read out (else asked interactively)."),
    out: Path = _OUT,
    force: bool = typer.Option(False, "--force", help="Sign even though this name already has a certificate; replace --output."),
    validity_days: int = _VALIDITY,
    allow_other_plan: bool = typer.Option(False, "--allow-other-plan", help="Sign a request made for another version of the plan."),
) -> None:
    """At the coordinator: check a site's request and sign it; writes <name>-signed.tar.gz for the site."""
    from cofe_cli.archive import group_hex
    from cofe_cli.pki.certificate_requests import (
        check_expected_hash,
        check_request,
        load_request,
        parse_expected_hash,
        sign_request,
    )

    check_validity_days(validity_days)
    if expect_hash is not None:
        parse_expected_hash(expect_hash)  # a mistyped hash is refused before anything is read
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    authority = _load_ca(layout)
    pending = load_request(request_file)
    for warning in check_request(layout, manifest, authority, pending, force=force, allow_other_plan=allow_other_plan):
        _say(f"[yellow]warning:[/] {escape(warning)}")
    names = f", host names {', '.join(pending.subject_alt_names)}" if pending.role == "aggregator" else ""
    _say(escape(f"Request from {pending.name} ({pending.role}) for the certificate name {pending.common_name}{names}"))
    if expect_hash is not None:
        check_expected_hash(pending, expect_hash)
    elif sys.stdin.isatty():
        _say(f"Request hash: [bold]{group_hex(pending.sha256)}[/]")
        if not typer.confirm("Is it the hash the site reads out to you?", default=False):
            raise CofeError("not signed: the request's hash was not confirmed",
                            hint="sign only the request whose hash the site reads out to you")
    else:
        raise CofeError("no --expect-hash, and no terminal to confirm the request's hash",
                        hint="pass --expect-hash 'XXXX XXXX ...' with the hash the site read out")
    result = sign_request(layout, manifest, authority, pending, out=out, force=force, validity_days=validity_days)
    _say(f"[green]Signed[/] {escape(result.name)}'s certificate: serial {result.serial:x}, "
         f"valid until {result.not_after:%Y-%m-%d} (record: {escape(str(result.record))})")
    _say(f"Send [bold]{escape(str(result.archive))}[/] to the site; it installs it with "
         f"`cofe certify install {escape(result.archive.name)} --dir SITE --expect-root-fingerprint FINGERPRINT`,")
    _say(f"FINGERPRINT being the root fingerprint you read out: {result.root_fingerprint}")


# ---------------------------------------------------------------- install (at the site)


@app.command("install")
def install(
    signed_file: Path = typer.Argument(..., help="The <name>-signed.tar.gz the coordinator sent."),
    dir: Path = _DIR,
    expect_root_fingerprint: str = typer.Option(None, "--expect-root-fingerprint", help="The root CA fingerprint the coordinator read out (required)."),
) -> None:
    """At a site: check the signed certificate against the expected root and the local key, then install it."""
    from cofe_cli.pki.certificate_requests import install_signed

    if not expect_root_fingerprint:
        raise CofeError("--expect-root-fingerprint is required",
                        hint="ask the coordinator to read out the root CA fingerprint `cofe certify ca` printed")
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    with federation_locked(layout):
        result = install_signed(layout, manifest, signed_file, expected_root_fingerprint=expect_root_fingerprint)
    what = "already installed" if result.unchanged else "installed"
    _say(f"[green]{escape(result.name)}'s certificate {what}[/]: {escape(str(result.cert))} "
         f"(serial {result.serial:x}, valid until {result.not_after:%Y-%m-%d}); CA chain: {escape(str(result.chain))}")
    start = shlex.join(["cofe", *layout.participant(result.name).start_command()])
    _say(f"Next: [bold]{escape(start)}[/]")


# ---------------------------------------------------------------- revoke, status (at the coordinator)


@app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The participant whose certificates to revoke."),
    dir: Path = _DIR,
    reason: str = typer.Option("unspecified", "--reason", help="unspecified, key-compromise, affiliation-changed, superseded or cessation-of-operation."),
) -> None:
    """Put every certificate issued to NAME on the federation's CRL (ca/crl.pem, copied to the aggregator)."""
    from cofe_cli.pki.revocation import revoke as revoke_name

    layout = FederationLayout(dir)
    layout.load_manifest()
    _load_ca(layout)
    result = revoke_name(layout, name, reason=reason)
    if result.added:
        _say(f"Revoked {len(result.added)} certificate(s) of {escape(name)}: serial "
             f"{', '.join(format(s, 'x') for s in result.added)}")
    if result.already:
        _say(f"Already revoked: serial {', '.join(format(s, 'x') for s in result.already)}")
    _say(f"CRL: {escape(str(result.crl))}" + "".join(f"; copied to {escape(str(copy))}" for copy in result.copies))
    _say("The aggregator reads workspaces/aggregator/cert/crl.pem at every connection. If it runs on another "
         f"host, copy {escape(str(result.crl))} there as SITE/workspaces/aggregator/cert/crl.pem (it holds no secret).")


@app.command("status")
def status(dir: Path = _DIR) -> None:
    """Every certificate issued (sign records and workspaces): expiry, serial, revoked or not."""
    from cofe_cli.pki.revocation import inventory

    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    warn_exposed_private_keys(layout, manifest)
    found = inventory(layout)
    if CertificateAuthority.exists(layout.ca):
        authority = CertificateAuthority.load(layout.ca)
        _say(f"CA {escape(str(layout.ca))}: root fingerprint {authority.root_fingerprint()}, "
             f"valid until {authority.signing_cert.not_valid_after_utc:%Y-%m-%d}")
    for warning in found.warnings:
        _say(f"[yellow]warning:[/] {escape(warning)}")
    if not found.records:
        _say("No certificate issued yet.")
        return
    records = sorted(found.records, key=lambda r: (not is_aggregator(r.name), r.name, r.not_after))
    rows = []
    for record in records:
        days = record.days_left
        days_text = "expired" if days < 0 else str(days)
        if days < 30:
            days_text = f"[bold red]{days_text}[/]"
        revoked = {True: "[bold red]revoked[/]", False: "no", None: "unknown"}[record.revoked]
        where = record.source.relative_to(layout.root) if record.source.is_relative_to(layout.root) else record.source
        rows.append((escape(record.name), record.role, format(record.serial, "x"), f"{record.not_after:%Y-%m-%d}",
                     days_text, revoked, "this" if record.from_this_ca else "[yellow]other[/]", escape(str(where))))
    # A narrow terminal (or a pipe: 80 columns) squeezes the table. Nothing is cut short (hospital_a and
    # hospital_b both read "hospit…" otherwise): names, roles, dates and states keep their width, serials
    # and paths fold onto more lines, and a table that still does not fit is printed wider, not cropped.
    table, needed = Table(title="Certificates"), 1
    for index, title in enumerate(("participant", "role", "serial", "expires", "days left", "revoked", "CA", "file")):
        if title in ("serial", "file"):
            width = 12
            table.add_column(title, overflow="fold", min_width=width)
        else:
            width = max(len(title), *(Text.from_markup(row[index]).cell_len for row in rows))
            table.add_column(title, no_wrap=True, min_width=width)
        needed += width + 3  # the cell's padding and its right border
    for row in rows:
        table.add_row(*row)
    if needed > console.width:
        table.width = needed  # wider than the console: the lines wrap there, but nothing is cut
    console.print(table, crop=False)
    if found.crl is not None:
        _say(f"Revocations from {escape(str(found.crl))}")
