"""`cofe doctor`: at a site, before round 0, check that this participant can join the federation.

One line per check: PASS, FAIL with the fix, or SKIP when an earlier failure leaves nothing to check.
Exit 0 when every check passed, 1 when one failed (the federation would not start: not bad input),
2 for bad input (no federation in --dir, an unknown participant, ...).

What each check really verifies, and what it cannot:

- plan: plans/plan.yaml hashes to the federation's plan SHA-384 (federation.yaml) and the workspace's
  plan/ is that plan. It cannot tell whether the aggregator runs the same plan; `aggregator` can.
- address: the plan's aggregator address resolves here (an IP needs no DNS).
- port: a TCP connection to it opens within --timeout (something listens, no firewall drops it).
  It does not say what listens: `tls` does.
- tls: a TLS handshake (ALPN h2, as gRPC) with this site's certificate: the server's certificate
  chains to this federation's CA and names the address dialled, and the server does not refuse this
  site's certificate (the HTTP/2 preface is sent and answered). Python's TLS stack, not gRPC's.
- aggregator: a real gRPC Ping as OpenFL's collaborator makes it (header from OpenFL's Plan.parse of
  this workspace). The aggregator itself checks the certificate, the name, the plan's UUIDs and
  cofe's CRL; it changes nothing there. Only for collaborators: the aggregator pings nobody.
- certificate: this participant's certificate is here, matches its key, chains to the federation's
  CA, carries its name (the aggregator's: the plan address), is valid already and for --min-days more.
- keys: no private key here (this participant's, any other's in a federation directory, the CA's and
  its ca/private folder) is open to group or others; the fix is the chmod.
- clock: the aggregator's clock cannot be read through OpenFL's protocol (no time in its messages).
  What is compared, with the coordinator's clock at the time it made them: the aggregator's
  certificate (presented in the handshake), this site's certificate and kit.json's export time. A
  timestamp more than a minute in this machine's future means this clock is behind. A clock that is
  ahead cannot be seen this way; the kernel's NTP state (Linux) is shown as well.
- model (aggregator): the initial model its plan loads (save/init.pbuf) has the SHA-384 federation.yaml
  records, which the federation fingerprint read back at import covers.
- data: collaborators' train.csv/valid.csv load as `cofe start` checks them (columns, channels, files).
- environment: cofe, openfl, gandlf and torch here are the versions the plan recorded (federation.yaml).
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import typer
import yaml
from cryptography import x509
from rich.markup import escape

from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.ports import listen_error

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
CLOCK_TOLERANCE = timedelta(minutes=1)
DEFAULT_MIN_DAYS = 30
DEFAULT_TIMEOUT = 5.0
RECORDED_PACKAGES = ("cofe", "openfl", "gandlf", "torch")
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers with its SETTINGS.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def _pass(name: str, detail: str) -> Check:
    return Check(name, PASS, detail)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


def _skip(name: str, why: str) -> Check:
    return Check(name, SKIP, why)


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _span(delta: timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


# ---------------------------------------------------------------- network


def resolve(host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT,
            resolver: Callable = socket.getaddrinfo) -> list[tuple[int, tuple]]:
    """(family, sockaddr) for TCP to host:port; a resolver that hangs counts as a failure after `timeout`."""
    found: dict = {}

    def work() -> None:
        try:
            found["infos"] = resolver(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:  # socket.gaierror is an OSError
            found["error"] = error

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer from the name resolver within {timeout:g} s")
    if "error" in found:
        raise found["error"]
    return list(dict.fromkeys((info[0], info[4]) for info in found["infos"]))


def check_address(host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT,
                  resolver: Callable = socket.getaddrinfo) -> tuple[Check, list[tuple[int, tuple]]]:
    import ipaddress

    try:
        addresses = resolve(host, port, timeout=timeout, resolver=resolver)
    except (OSError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return _fail("address", f"the aggregator address {host!r} does not resolve here ({reason})",
                     "check the name with the coordinator; make it resolvable here (DNS, or an /etc/hosts entry "
                     "with the aggregator's IP), or ask for a plan that names an address this site can resolve"), []
    if not addresses:
        return _fail("address", f"the aggregator address {host!r} resolves to no address",
                     "check the DNS entry of the aggregator's host"), []
    shown = ", ".join(dict.fromkeys(str(sockaddr[0]) for _, sockaddr in addresses))
    try:
        ipaddress.ip_address(host)
        detail = f"{host} is an IP address (no name to resolve)"
    except ValueError:
        detail = f"{host} resolves to {shown}"
    return _pass("address", detail), addresses


def check_port(addresses: list[tuple[int, tuple]], host: str, port: int, *,
               timeout: float = DEFAULT_TIMEOUT) -> tuple[Check, tuple[int, tuple] | None]:
    """A TCP connection to the first address that takes one; the reason of the last failure otherwise."""
    failures = []
    for family, sockaddr in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            try:
                probe.connect(sockaddr)
            except OSError as error:
                failures.append((sockaddr[0], error))
                continue
        return _pass("port", f"TCP connection to {sockaddr[0]} port {port} opened"), (family, sockaddr)
    where, error = failures[-1] if failures else (host, OSError("no address"))
    if isinstance(error, ConnectionRefusedError):
        return _fail("port", f"{where} port {port} refused the connection: nothing listens there",
                     "start the aggregator (`cofe start aggregator` on its host), or check the port with the "
                     "coordinator"), None
    if isinstance(error, (socket.timeout, TimeoutError)):
        return _fail("port", f"no answer from {where} port {port} within {timeout:g} s (a firewall drops the "
                             "packets, or the address is wrong)",
                     f"ask the aggregator's host to open TCP port {port} to this site, and allow outgoing TCP to "
                     f"{host}:{port} here"), None
    if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return _fail("port", f"no route from here to {where} ({error.strerror})",
                     "check this machine's network route (or VPN) to the aggregator"), None
    return _fail("port", f"cannot connect to {where} port {port}: {error.strerror or error}",
                 "check the network between this site and the aggregator"), None


@dataclass(frozen=True)
class TlsResult:
    check: Check
    server_cert: x509.Certificate | None  # the aggregator's certificate, when the handshake verified it


_VERIFY_CAUSES = {
    9: ("the aggregator's certificate is not valid yet by this machine's clock",
        "check this machine's clock (NTP); the coordinator signed that certificate on a clock ahead of this one"),
    10: ("the aggregator's certificate has expired",
         "the aggregator's host has a new certificate signed (`cofe certify request --force`, sign, install)"),
    62: ("the aggregator's certificate does not name the address dialled",
         "the aggregator's host makes a new request naming it (`cofe certify request --force --san NAME`), or "
         "something else than this federation's aggregator answers at that address"),
    64: ("the aggregator's certificate does not name the IP address dialled",
         "the aggregator's host makes a new request naming it (`cofe certify request --force --san IP`), or "
         "something else than this federation's aggregator answers at that address"),
}
_WRONG_CA = ("the server's certificate is not signed by this federation's CA (another federation's aggregator, "
             "or another service on that port)",
             "check the address and port with the coordinator; this site's CA chain is "
             "workspaces/NAME/cert/cert_chain.crt from the kit (`cofe import`)")
_REFUSED = {
    "UNKNOWN_CA": ("the aggregator refused this site's certificate: it does not trust its CA (wrong CA: another "
                   "federation's, or a self-signed one)",
                   "install the certificate this federation's coordinator signed (`cofe certify install`), and "
                   "check that the root fingerprints agree"),
    "CERTIFICATE_EXPIRED": ("the aggregator refused this site's certificate as expired or not yet valid (by the "
                            "aggregator's clock)",
                            "have a new certificate signed if it expired; otherwise the aggregator's clock is wrong"),
    "CERTIFICATE_REVOKED": ("the aggregator refused this site's certificate as revoked",
                            "ask the coordinator why; a new request must be made and signed"),
    "CERTIFICATE_REQUIRED": ("the aggregator wanted a client certificate and got none",
                             "install this site's certificate (`cofe certify install`)"),
    "NO_APPLICATION_PROTOCOL": ("the server does not speak HTTP/2 (ALPN h2): it is not a gRPC server",
                                "check the address and port with the coordinator"),
    "WRONG_VERSION_NUMBER": ("the server does not speak TLS (a plain-text service, or a gRPC server without TLS)",
                             "check the address and port with the coordinator"),
}
_REFUSED_OTHER = ("the aggregator refused this site's certificate",
                  "install the certificate this federation's coordinator signed (`cofe certify install`)")


def _refusal(error: ssl.SSLError) -> tuple[str, str]:
    reason = (getattr(error, "reason", None) or "").upper()
    for marker, cause in _REFUSED.items():
        if marker in reason:
            return cause
    text, fix = _REFUSED_OTHER
    return f"{text} ({reason or error})", fix


def tls_handshake(host: str, port: int, target: tuple[int, tuple], *, chain_pem: bytes, cert_file: Path,
                  key_file: Path, timeout: float = DEFAULT_TIMEOUT) -> TlsResult:
    """Handshake as a gRPC client would (TLS >= 1.2, ALPN h2, the plan's address as the expected name),
    then the HTTP/2 preface: with TLS 1.3 a server tells that it refuses the client's certificate only
    after the client's side of the handshake is done."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_verify_locations(cadata=chain_pem.decode("ascii", errors="replace"))
        context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, ValueError, OSError) as error:
        return TlsResult(_fail("tls", f"this site's certificate, key or CA chain cannot be loaded ({error})",
                               "install the certificate again (`cofe certify install`)"), None)
    family, sockaddr = target
    where = f"{host}:{port}"
    raw = socket.socket(family, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    try:
        raw.connect(sockaddr)
        with context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls:
            server_cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            version, alpn = tls.version(), tls.selected_alpn_protocol()
            tls.settimeout(min(timeout, 3.0))
            try:
                tls.sendall(_HTTP2_PREFACE)
                answer = tls.recv(64)
            except ssl.SSLError as error:
                text, fix = _refusal(error)
                return TlsResult(_fail("tls", f"{where}: {text}", fix), server_cert)
            except (socket.timeout, TimeoutError):
                answer = None
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
    except ssl.SSLCertVerificationError as error:
        text, fix = _VERIFY_CAUSES.get(error.verify_code, _WRONG_CA)
        return TlsResult(_fail("tls", f"{where}: {text} ({error.verify_message})", fix), None)
    except ssl.SSLError as error:
        text, fix = _refusal(error)
        return TlsResult(_fail("tls", f"{where}: {text}", fix), None)
    except (socket.timeout, TimeoutError):
        return TlsResult(_fail("tls", f"{where}: the TLS handshake did not finish within {timeout:g} s",
                               "check that the port is the aggregator's (not another service's)"), None)
    except OSError as error:
        return TlsResult(_fail("tls", f"{where}: the connection broke during the TLS handshake "
                                      f"({error.strerror or error})",
                               "the server closed it: it may refuse this site's certificate, or not speak TLS"), None)
    finally:
        raw.close()
    if answer == b"":
        return TlsResult(_fail("tls", f"{where}: the aggregator closed the connection right after the handshake: it "
                                      "refused this site's certificate (not signed by the CA it trusts, or expired or "
                                      "not yet valid by its clock)",
                               "install the certificate this federation's coordinator signed (`cofe certify "
                               "install`); see the `certificate` line"), server_cert)
    heard = "answered the HTTP/2 preface" if answer else "raised no objection"
    return TlsResult(_pass("tls", f"{version} handshake with {where} (ALPN {alpn or 'none'}): the aggregator's "
                                  f"certificate chains to the federation's CA and names {host}; the server {heard} "
                                  "with this site's certificate"), server_cert)


_PING_CAUSES = {
    "UNAVAILABLE": ("the TLS connection was refused (wrong CA, an expired or not yet valid certificate, or the "
                    "aggregator stopped)",
                    "install the certificate this federation's coordinator signed (`cofe certify install`); check "
                    "the `certificate` and `tls` lines"),
    "UNAUTHENTICATED": ("the aggregator does not accept this name with this certificate: the name is not in the "
                        "aggregator's plan, or the certificate's CN is not the name",
                        "check with the coordinator that the aggregator runs the plan that lists this site, and that "
                        "this site's certificate was signed for its name"),
    "PERMISSION_DENIED": ("the aggregator refuses this site's certificate: it is revoked",
                          "ask the coordinator: make a new request (`cofe certify request --force`), have it signed "
                          "and install it"),
    "UNKNOWN": ("the aggregator rejected the request's header: it runs another plan (another federation UUID) than "
                "this site's",
                "compare the plan hash with the coordinator; import the current kit (`cofe import KIT --force`)"),
    "DEADLINE_EXCEEDED": ("the aggregator did not answer in time",
                          "the aggregator may be overloaded or starting; run `cofe doctor` again in a minute"),
}


def describe_ping(code: str | None, details: str, *, sender: str, target: str, answered_by: str = "") -> Check:
    if code is None:
        who = f" as {answered_by}" if answered_by else ""
        return _pass("aggregator", f"{target} answered a gRPC Ping from {sender}{who}: it accepts this site's "
                                   "certificate, name and plan")
    text, fix = _PING_CAUSES.get(code, ("the Ping failed", "check the aggregator's log"))
    shown = " ".join(details.split())
    if len(shown) > 240:
        shown = shown[:237] + "..."
    return _fail("aggregator", f"Ping to {target} failed with {code}: {text}" + (f" [{shown}]" if shown else ""), fix)


# ---------------------------------------------------------------- certificate, clock


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
        return _fail("certificate", "the federation's CA chain (cert/cert_chain.crt) is missing",
                     "import the site kit (`cofe import KIT --dir SITE`)"), None
    if key_pem is None:
        return _fail("certificate", f"{participant} has no private key here yet",
                     "make it and a request: `cofe certify request --dir SITE`, then have the request signed"), None
    if cert_pem is None:
        return _fail("certificate", f"{participant} has a key but no certificate yet",
                     "install the certificate the coordinator signed from this site's request: "
                     "`cofe certify install NAME-signed.tar.gz --dir SITE --expect-root-fingerprint ...`"), None
    cert = certificate_or_none(cert_pem)
    if cert is None:
        return _fail("certificate", "the certificate file is not a PEM certificate",
                     "install it again (`cofe certify install`)"), None
    name = common_name(cert.subject)
    if name != expected_cn:
        return _fail("certificate", f"the certificate is for {name!r}, not {expected_cn!r}",
                     "install the certificate signed for this participant (`cofe certify install`)"), cert
    if expected_san is not None and not any(same_host(entry, expected_san) for entry in san_names(cert.extensions)):
        return _fail("certificate", f"the certificate does not name the plan's aggregator address {expected_san!r}",
                     "make a new request (`cofe certify request --force`) and have it signed"), cert
    try:
        matches = check_key_matches_cert(key_pem, cert_pem)
    except CofeError as error:
        return _fail("certificate", f"the key or certificate cannot be read ({error.message})",
                     "make a new request (`cofe certify request --force`) and have it signed"), cert
    if not matches:
        return _fail("certificate", "the certificate does not match this participant's private key",
                     "install the certificate signed from this site's latest request"), cert
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if before > now:
        return _fail("certificate", f"not valid before {_when(before)} ({_span(before - now)} from now): this "
                                    "machine's clock is behind the coordinator's", "synchronise the clock (NTP)"), cert
    if after <= now:
        return _fail("certificate", f"expired on {_when(after)}",
                     "make a new request (`cofe certify request --force`), have it signed and install it"), cert
    left = after - now
    if left < timedelta(days=min_days):
        return _fail("certificate", f"expires on {_when(after)}, in {_span(left)}: fewer than {min_days} days",
                     "make a new request now (`cofe certify request --force`), have it signed and install it"), cert
    try:
        verify_issued_by(cert_pem, chain_pem)
        root = chain_root_fingerprint(chain_pem)
    except CofeError as error:
        return _fail("certificate", f"it does not chain to this site's CA chain ({error.message})",
                     "install the certificate this federation's coordinator signed, with its chain"), cert
    return _pass("certificate", f"CN={name}, serial {cert.serial_number:x}, valid since {before:%Y-%m-%d}, until "
                               f"{after:%Y-%m-%d} ({left.days} days left, at least {min_days}), matches the key, "
                               f"chains to the root {root[:11]}..."), cert


def check_private_keys(layout: FederationLayout, manifest: Manifest) -> Check:
    from cofe_cli.pki.workspace_certs import exposed_private_keys

    exposure = exposed_private_keys(layout, manifest)
    if exposure is not None:
        return _fail("keys", exposure.message, exposure.fix)
    return _pass("keys", "every private key here (and the CA's key folder, if any) is readable by its owner only")


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
        return _fail("clock", f"the aggregator's certificate is not valid before {_when(begins)}, "
                              f"{_span(begins - now)} after this machine's time {_when(now)}: this clock is behind"
                              + note, "synchronise this machine's clock (NTP)")
    ahead = [(what, when) for what, when in marks if when - now > tolerance]
    if ahead:
        what, when = max(ahead, key=lambda mark: mark[1])
        return _fail("clock", f"{what} at {_when(when)} by the coordinator's clock, {_span(when - now)} after this "
                              f"machine's time {_when(now)}: this clock is behind the coordinator's by at least that"
                              + note, "synchronise this machine's clock (NTP); then check again")
    if not marks:
        return _pass("clock", "nothing to compare this machine's clock with (no certificate, no kit.json)" + note)
    compared = "; ".join(f"{what} {_span(now - when)} ago" for what, when in marks)
    return _pass("clock", f"{compared} (by the coordinator's clock): none lies more than {_span(tolerance)} in this "
                          f"machine's future, so this clock is not behind by more; a clock that runs ahead cannot be "
                          f"seen this way" + note)


# ---------------------------------------------------------------- data, environment, plan


def check_data(folder: Path | None, gandlf_config: dict, *, participant: str) -> Check:
    from cofe_cli.plan.data import check_site_data

    if folder is None:
        return _fail("data", f"{participant} has no data folder yet",
                     f"name it: `cofe doctor --data PATH`, then `cofe start collaborator {participant} --data PATH`")
    try:
        summary = check_site_data(folder, gandlf_config)
    except CofeError as error:
        return _fail("data", error.message, error.hint or "fix the CSVs")
    return _pass("data", f"{summary.folder}: train.csv {summary.train_subjects} subject(s), valid.csv "
                         f"{summary.valid_subjects}, {summary.channels} channel(s), every listed file an image")


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _public(version: str) -> str:
    return version.split("+", 1)[0].strip()  # 2.7.1+cpu is 2.7.1 built for CPU


def check_environment(recorded: dict, installed: Callable[[str], str | None] = installed_version) -> Check:
    wanted = {package: str(recorded[package]) for package in RECORDED_PACKAGES if recorded.get(package)}
    if not wanted:
        return _pass("environment", "the plan records no versions to compare with (made by an older cofe)")
    mismatches, same = [], []
    for package, version in wanted.items():
        here = installed(package)
        if here is None:
            mismatches.append(f"{package} is not installed (the plan has {version})")
        elif _public(here) != _public(version):
            mismatches.append(f"{package} {here} here, the plan has {version}")
        else:
            same.append(f"{package} {here}")
    if mismatches:
        pins = " ".join(f"'{package}=={_public(version)}'" for package, version in wanted.items() if package != "cofe")
        return _fail("environment", "; ".join(mismatches),
                     f"install the federation's versions (`pip install {pins}`, and cofe {wanted.get('cofe', '')} "
                     "as the coordinator has it), or ask the coordinator to re-create the plan")
    return _pass("environment", ", ".join(same) + ": as the plan recorded")


def check_plan(layout: FederationLayout, manifest: Manifest, participant: str) -> Check:
    from cofe_cli.federation import plan_hash
    from cofe_cli.plan.workspaces import COLS_FILE, PLAN_FILE

    plan_file = layout.plans / PLAN_FILE
    try:
        text = plan_file.read_text(encoding="utf-8")
    except OSError:
        return _fail("plan", f"{plan_file} is missing", "import the site kit again (`cofe import KIT --force`)")
    if plan_hash(text) != manifest.plan_sha384:
        return _fail("plan", f"{plan_file} was changed: its hash is not the federation's plan hash",
                     "import the kit again (`cofe import KIT --dir SITE --force`)")
    workspace_plan = layout.workspace(participant) / "plan"
    for name in (PLAN_FILE, COLS_FILE):
        copy = workspace_plan / name
        if not copy.is_file() or copy.read_bytes() != (layout.plans / name).read_bytes():
            return _fail("plan", f"{copy} is not the federation's {name}",
                         "import the kit again (`cofe import KIT --dir SITE --force`)")
    return _pass("plan", f"plan SHA-384 {manifest.plan_sha384[:16]}... as federation.yaml records; {participant}'s "
                         "workspace holds that plan")


def check_initial_model_file(workspace: Path, manifest: Manifest) -> Check:
    from cofe_cli.federation import check_initial_model
    from cofe_cli.plan.workspaces import aggregator_init_model

    model = aggregator_init_model(workspace)
    try:
        check_initial_model(model, manifest)
    except CofeError as error:
        return _fail("model", error.message, error.hint or "import the aggregator's kit again")
    return _pass("model", f"the initial model {model} has the SHA-384 federation.yaml records "
                          f"({manifest.init_model_sha384[:16]}...)")


def check_listen_port(port: int) -> Check:
    error = listen_error(port)
    if error is not None:
        return _fail("port", f"port {port} cannot be listened on here ({error.strerror or error}); an aggregator "
                             "already running here holds it too",
                     "stop what uses it (or ignore this if it is this federation's aggregator)")
    return _pass("port", f"port {port} is free to listen on; the sites must be able to reach it over TCP")


# ---------------------------------------------------------------- the command


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _kit_created(workspace: Path) -> datetime | None:
    try:
        created = json.loads((workspace / "kit.json").read_text()).get("created")
        moment = datetime.fromisoformat(str(created))
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def select_participant(layout: FederationLayout, manifest: Manifest, name: str | None) -> str:
    from cofe_cli.federation import local_participant

    if name is not None:
        return local_participant(layout, manifest, name)
    present = [p for p in (AGGREGATOR, *manifest.collaborators) if layout.workspace(p).is_dir()]
    if len(present) > 1:
        raise CofeError(f"{layout.root} holds several participants ({', '.join(present)}); which one?",
                        hint="name it: `cofe doctor --dir DIR --participant NAME`")
    return local_participant(layout, manifest, None)


def run_checks(layout: FederationLayout, manifest: Manifest, participant: str, *, min_days: int,
               data: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
               report: Callable[[Check], None] = lambda check: None) -> list[Check]:
    from cofe_cli.plan.workspaces import GANDLF_FILE, collaborator_data_folder
    from cofe_cli.pki.workspace_certs import participant_cert_paths

    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        report(check)

    host, port = manifest.aggregator_address, manifest.aggregator_port
    workspace = layout.workspace(participant)
    paths = participant_cert_paths(layout, manifest, participant)
    chain, cert_pem, key_pem = _read(paths.chain), _read(paths.cert), _read(paths.key)
    is_aggregator = participant == AGGREGATOR
    add(check_plan(layout, manifest, participant))
    certificate, own_cert = check_certificate(
        cert_pem, key_pem, chain, participant=participant, expected_cn=host if is_aggregator else participant,
        min_days=min_days, expected_san=host if is_aggregator else None)
    server_cert = None
    if is_aggregator:
        add(check_listen_port(port))
    else:
        address, addresses = check_address(host, port, timeout=timeout)
        add(address)
        target = None
        if addresses:
            connected, target = check_port(addresses, host, port, timeout=timeout)
            add(connected)
        else:
            add(_skip("port", "the address does not resolve"))
        have_files = chain is not None and cert_pem is not None and key_pem is not None
        if target is None:
            add(_skip("tls", "no TCP connection to the aggregator"))
            add(_skip("aggregator", "no TCP connection to the aggregator"))
        elif not have_files:
            add(_skip("tls", "this site has no certificate yet (see the `certificate` line)"))
            add(_skip("aggregator", "this site has no certificate yet"))
        else:
            tls = tls_handshake(host, port, target, chain_pem=chain, cert_file=paths.cert, key_file=paths.key,
                                timeout=timeout)
            add(tls.check)
            server_cert = tls.server_cert
            add(_ping_check(workspace, host, port, chain=chain, cert=cert_pem, key=key_pem, sender=participant,
                            timeout=max(20.0, timeout)))
    add(certificate)
    add(check_private_keys(layout, manifest))
    add(check_clock(server_cert=server_cert, own_cert=own_cert, kit_created=_kit_created(workspace),
                    kernel=kernel_clock_state(), at_aggregator=is_aggregator))
    gandlf_config = yaml.safe_load((layout.plans / GANDLF_FILE).read_text()) if (layout.plans / GANDLF_FILE).is_file() else {}
    if is_aggregator:
        add(check_initial_model_file(workspace, manifest))
    else:
        folder = Path(data).expanduser().resolve() if data else collaborator_data_folder(layout, participant)
        add(check_data(folder, gandlf_config or {}, participant=participant))
    add(check_environment(manifest.versions))
    return checks


def _ping_check(workspace: Path, host: str, port: int, *, chain: bytes, cert: bytes, key: bytes, sender: str,
                timeout: float) -> Check:
    from cofe_cli.engine.aggregator_ping import grpc_target, ping, plan_identity

    try:
        identity = plan_identity(workspace)
    except Exception as error:  # OpenFL raises bare exceptions for any plan problem
        return _fail("aggregator", f"OpenFL cannot parse this workspace's plan ({type(error).__name__}: {error})",
                     "import the kit again (`cofe import KIT --force`)")
    outcome = ping(host, port, chain=chain, cert=cert, key=key, sender=sender, identity=identity, timeout=timeout)
    return describe_ping(outcome.code, outcome.details, sender=sender, target=grpc_target(host, port),
                         answered_by=outcome.answered_by)


def print_check(check: Check) -> None:
    colour = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}[check.status]
    line = f"[{colour}]{check.status}[/] {check.name:<12} {escape(check.detail)}"
    if check.fix:
        line += f" [yellow]fix:[/] {escape(check.fix)}"
    console.print(line, soft_wrap=True)


def doctor(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Site directory (made by `cofe import`) or federation directory."),
    participant: str = typer.Option(None, "--participant", "-p", help="The participant to check (needed when --dir holds several)."),
    min_days: int = typer.Option(DEFAULT_MIN_DAYS, "--min-days", help="Fail when the certificate expires within this many days."),
    data: Path = typer.Option(None, "--data", help="Collaborator: check this data folder instead of the one recorded."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Seconds to wait for each network step."),
) -> None:
    """At a site, before round 0: can this participant join? One line per check; exit 1 if any fails."""
    if min_days < 0:
        raise CofeError(f"--min-days must be 0 or more, got {min_days}", hint="e.g. --min-days 30")
    if not 0 < timeout <= 300:
        raise CofeError(f"--timeout must be between 0 and 300 seconds, got {timeout:g}", hint="e.g. --timeout 5")
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    name = select_participant(layout, manifest, participant)
    if data is not None and name == AGGREGATOR:
        raise CofeError("the aggregator has no data of its own; --data is for a collaborator", hint="drop --data")
    console.print(f"Checking {escape(name)} in {escape(str(layout.root))} (federation {escape(manifest.name)}, "
                  f"aggregator {escape(manifest.aggregator_address)}:{manifest.aggregator_port})", soft_wrap=True)
    checks = run_checks(layout, manifest, name, min_days=min_days, data=data, timeout=timeout, report=print_check)
    failed = [check.name for check in checks if check.failed]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} checks failed[/] ({', '.join(failed)}): "
                      "fix them before the federation starts.", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]All {len(checks)} checks passed[/]: {escape(name)} is ready for round 0.", soft_wrap=True)
