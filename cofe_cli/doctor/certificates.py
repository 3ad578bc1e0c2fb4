"""This participant's certificate (here, matching its key, chaining to the federation's CA, naming it,
valid long enough), the private keys' permissions, and whether this machine's clock is behind."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography import x509

from cofe_cli.doctor.result import Check, duration, fail, ok, utc_time
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest

CLOCK_TOLERANCE = timedelta(minutes=1)
DEFAULT_MIN_DAYS = 30


def check_certificate(cert_pem: bytes | None, key_pem: bytes | None, chain_pem: bytes | None, *, participant: str,
                      expected_cn: str, min_days: int, now: datetime | None = None,
                      expected_san: str | None = None) -> tuple[Check, x509.Certificate | None]:
    from cofe_cli.pki.x509 import (
        certificate_or_none,
        chain_root_fingerprint,
        check_key_matches_cert,
        common_name,
        same_host,
        san_names,
        verify_issued_by,
    )

    now = now or datetime.now(timezone.utc)
    if chain_pem is None:
        return fail("certificate", "the federation's CA chain (cert/cert_chain.crt) is missing",
                    "import the site kit (`cofe import KIT --dir SITE`)"), None
    if key_pem is None:
        return fail("certificate", f"{participant} has no private key here yet",
                    "make it and a request: `cofe certify request --dir SITE`, then have the request signed"), None
    if cert_pem is None:
        return fail("certificate", f"{participant} has a key but no certificate yet",
                    "install the certificate the coordinator signed from this site's request: "
                    "`cofe certify install NAME-signed.tar.gz --dir SITE --expect-root-fingerprint ...`"), None
    cert = certificate_or_none(cert_pem)
    if cert is None:
        return fail("certificate", "the certificate file is not a PEM certificate",
                    "install it again (`cofe certify install`)"), None
    name = common_name(cert.subject)
    if name != expected_cn:
        return fail("certificate", f"the certificate is for {name!r}, not {expected_cn!r}",
                    "install the certificate signed for this participant (`cofe certify install`)"), cert
    if expected_san is not None and not any(same_host(entry, expected_san) for entry in san_names(cert.extensions)):
        return fail("certificate", f"the certificate does not name the plan's aggregator address {expected_san!r}",
                    "make a new request (`cofe certify request --force`) and have it signed"), cert
    try:
        matches = check_key_matches_cert(key_pem, cert_pem)
    except CofeError as error:
        return fail("certificate", f"the key or certificate cannot be read ({error.message})",
                    "make a new request (`cofe certify request --force`) and have it signed"), cert
    if not matches:
        return fail("certificate", "the certificate does not match this participant's private key",
                    "install the certificate signed from this site's latest request"), cert
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if before > now:
        return fail("certificate", f"not valid before {utc_time(before)} ({duration(before - now)} from now): this "
                                   "machine's clock is behind the coordinator's", "synchronise the clock (NTP)"), cert
    if after <= now:
        return fail("certificate", f"expired on {utc_time(after)}",
                    "make a new request (`cofe certify request --force`), have it signed and install it"), cert
    left = after - now
    if left < timedelta(days=min_days):
        return fail("certificate", f"expires on {utc_time(after)}, in {duration(left)}: fewer than {min_days} days",
                    "make a new request now (`cofe certify request --force`), have it signed and install it"), cert
    try:
        verify_issued_by(cert_pem, chain_pem)
        root = chain_root_fingerprint(chain_pem)
    except CofeError as error:
        return fail("certificate", f"it does not chain to this site's CA chain ({error.message})",
                    "install the certificate this federation's coordinator signed, with its chain"), cert
    return ok("certificate", f"CN={name}, serial {cert.serial_number:x}, valid since {before:%Y-%m-%d}, until "
                               f"{after:%Y-%m-%d} ({left.days} days left, at least {min_days}), matches the key, "
                               f"chains to the root {root[:11]}..."), cert


def check_private_keys(layout: FederationLayout, manifest: Manifest) -> Check:
    from cofe_cli.pki.workspace_certs import exposed_private_keys

    exposure = exposed_private_keys(layout, manifest)
    if exposure is not None:
        return fail("keys", exposure.message, exposure.fix)
    return ok("keys", "every private key here (and the CA's key folder, if any) is readable by its owner only")


def issued_at(cert: x509.Certificate) -> datetime:
    """When the coordinator signed a cofe certificate, by its clock (cofe back-dates not_before by an hour)."""
    from cofe_cli.pki.authority import _CLOCK_SKEW

    return min(cert.not_valid_before_utc + _CLOCK_SKEW, cert.not_valid_after_utc)


def kernel_clock_state() -> str | None:
    """The kernel's NTP discipline (Linux adjtimex, read only): a phrase, or None where it cannot be asked."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None

    class Timex(ctypes.Structure):  # the leading fields of struct timex; the rest is room to spare
        _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                    ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                    ("_rest", ctypes.c_byte * 512)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    if state == 5 or timex.status & 0x40:  # TIME_ERROR, STA_UNSYNC
        return "the kernel says this clock is not NTP-synchronised"
    return f"the kernel says this clock is NTP-synchronised (max error {timex.maxerror / 1000:.0f} ms)"


def check_clock(*, now: datetime | None = None, server_cert: x509.Certificate | None = None,
                own_cert: x509.Certificate | None = None, kit_created: datetime | None = None,
                kernel: str | None = None, tolerance: timedelta = CLOCK_TOLERANCE, at_aggregator: bool = False) -> Check:
    now = now or datetime.now(timezone.utc)
    marks: list[tuple[str, datetime]] = []
    if server_cert is not None:
        marks.append(("the aggregator's certificate (from the TLS handshake) was signed", issued_at(server_cert)))
    if own_cert is not None:
        marks.append(("this site's certificate was signed", issued_at(own_cert)))
    if kit_created is not None:
        marks.append(("kit.json was exported", kit_created))
    note = "" if at_aggregator else "; the aggregator's own clock cannot be read through OpenFL's protocol"
    if kernel:
        note += f"; {kernel}"
    if server_cert is not None and server_cert.not_valid_before_utc > now:
        begins = server_cert.not_valid_before_utc
        return fail("clock", f"the aggregator's certificate is not valid before {utc_time(begins)}, "
                             f"{duration(begins - now)} after this machine's time {utc_time(now)}: this clock is behind"
                             + note, "synchronise this machine's clock (NTP)")
    ahead = [(what, when) for what, when in marks if when - now > tolerance]
    if ahead:
        what, when = max(ahead, key=lambda mark: mark[1])
        return fail("clock", f"{what} at {utc_time(when)} by the coordinator's clock, {duration(when - now)} after "
                             f"this machine's time {utc_time(now)}: this clock is behind the coordinator's by at least "
                             "that" + note, "synchronise this machine's clock (NTP); then check again")
    if not marks:
        return ok("clock", "nothing to compare this machine's clock with (no certificate, no kit.json)" + note)
    compared = "; ".join(f"{what} {duration(now - when)} ago" for what, when in marks)
    return ok("clock", f"{compared} (by the coordinator's clock): none lies more than {duration(tolerance)} in this "
                       f"machine's future, so this clock is not behind by more; a clock that runs ahead cannot be "
                       f"seen this way" + note)
