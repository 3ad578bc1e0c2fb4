"""From a collaborator to its aggregator, step by step: the address resolves, the port takes a TCP
connection, a TLS handshake as gRPC makes it is accepted both ways. At the aggregator: its port is free."""

from __future__ import annotations

import errno
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509

from cofe_cli.doctor.result import Check, fail, ok
from cofe_cli.ports import listen_error

DEFAULT_TIMEOUT = 5.0
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers with its SETTINGS.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


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
        return fail("address", f"the aggregator address {host!r} does not resolve here ({reason})",
                    "check the name with the coordinator; make it resolvable here (DNS, or an /etc/hosts entry "
                    "with the aggregator's IP), or ask for a plan that names an address this site can resolve"), []
    if not addresses:
        return fail("address", f"the aggregator address {host!r} resolves to no address",
                    "check the DNS entry of the aggregator's host"), []
    shown = ", ".join(dict.fromkeys(str(sockaddr[0]) for _, sockaddr in addresses))
    try:
        ipaddress.ip_address(host)
        detail = f"{host} is an IP address (no name to resolve)"
    except ValueError:
        detail = f"{host} resolves to {shown}"
    return ok("address", detail), addresses


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
        return ok("port", f"TCP connection to {sockaddr[0]} port {port} opened"), (family, sockaddr)
    where, error = failures[-1] if failures else (host, OSError("no address"))
    if isinstance(error, ConnectionRefusedError):
        return fail("port", f"{where} port {port} refused the connection: nothing listens there",
                    "start the aggregator (`cofe start aggregator` on its host), or check the port with the "
                    "coordinator"), None
    if isinstance(error, (socket.timeout, TimeoutError)):
        return fail("port", f"no answer from {where} port {port} within {timeout:g} s (a firewall drops the "
                            "packets, or the address is wrong)",
                    f"ask the aggregator's host to open TCP port {port} to this site, and allow outgoing TCP to "
                    f"{host}:{port} here"), None
    if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return fail("port", f"no route from here to {where} ({error.strerror})",
                    "check this machine's network route (or VPN) to the aggregator"), None
    return fail("port", f"cannot connect to {where} port {port}: {error.strerror or error}",
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
        return TlsResult(fail("tls", f"this site's certificate, key or CA chain cannot be loaded ({error})",
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
                return TlsResult(fail("tls", f"{where}: {text}", fix), server_cert)
            except (socket.timeout, TimeoutError):
                answer = None
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
    except ssl.SSLCertVerificationError as error:
        text, fix = _VERIFY_CAUSES.get(error.verify_code, _WRONG_CA)
        return TlsResult(fail("tls", f"{where}: {text} ({error.verify_message})", fix), None)
    except ssl.SSLError as error:
        text, fix = _refusal(error)
        return TlsResult(fail("tls", f"{where}: {text}", fix), None)
    except (socket.timeout, TimeoutError):
        return TlsResult(fail("tls", f"{where}: the TLS handshake did not finish within {timeout:g} s",
                              "check that the port is the aggregator's (not another service's)"), None)
    except OSError as error:
        return TlsResult(fail("tls", f"{where}: the connection broke during the TLS handshake "
                                     f"({error.strerror or error})",
                              "the server closed it: it may refuse this site's certificate, or not speak TLS"), None)
    finally:
        raw.close()
    if answer == b"":
        return TlsResult(fail("tls", f"{where}: the aggregator closed the connection right after the handshake: it "
                                     "refused this site's certificate (not signed by the CA it trusts, or expired or "
                                     "not yet valid by its clock)",
                              "install the certificate this federation's coordinator signed (`cofe certify "
                              "install`); see the `certificate` line"), server_cert)
    heard = "answered the HTTP/2 preface" if answer else "raised no objection"
    return TlsResult(ok("tls", f"{version} handshake with {where} (ALPN {alpn or 'none'}): the aggregator's "
                               f"certificate chains to the federation's CA and names {host}; the server {heard} "
                               "with this site's certificate"), server_cert)


def check_listen_port(port: int) -> Check:
    error = listen_error(port)
    if error is not None:
        return fail("port", f"port {port} cannot be listened on here ({error.strerror or error}); an aggregator "
                            "already running here holds it too",
                    "stop what uses it (or ignore this if it is this federation's aggregator)")
    return ok("port", f"port {port} is free to listen on; the sites must be able to reach it over TCP")
