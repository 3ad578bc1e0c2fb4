"""OpenFL's gRPC aggregator server, plus certificate revocation, which OpenFL does not have.

Every RPC a collaborator makes passes validate_collaborator; a certificate whose serial is on
the federation's CRL (cert/crl.pem, written by `cofe certify revoke`) is refused from the next
RPC on, without restarting the aggregator or the other collaborators.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
from cryptography import x509
from openfl.transport.grpc.aggregator_server import AggregatorGRPCServer

logger = logging.getLogger("cofe")


class RevokedCertificates:
    """The serials on a CRL file, re-read whenever the file changes."""

    def __init__(self, crl_path: Path, chain_path: Path):
        self.crl_path = Path(crl_path)
        self.chain_path = Path(chain_path)
        self._lock = threading.Lock()
        self._stamp = None
        self._serials: frozenset[int] = frozenset()

    def serials(self) -> frozenset[int]:
        try:
            stat = self.crl_path.stat()
        except FileNotFoundError:
            return frozenset()
        with self._lock:
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                from cofe_cli.pki.revocation import load_revoked_serials

                # A CRL that fails its signature check is an error worth stopping for, not ignoring.
                self._serials = load_revoked_serials(self.crl_path, self.chain_path.read_bytes())
                self._stamp = stamp
                logger.info("certificate revocation list loaded: %d revoked", len(self._serials))
            return self._serials


class RevocationCheckingServer(AggregatorGRPCServer):
    def __init__(self, *, revoked: RevokedCertificates, **kwargs):
        super().__init__(**kwargs)
        self.revoked = revoked

    def validate_collaborator(self, request, context):
        super().validate_collaborator(request, context)
        if not (self.use_tls and self.require_client_auth):
            return
        pem = context.auth_context().get("x509_pem_cert", [b""])[0]
        serial = x509.load_pem_x509_certificate(pem).serial_number
        if serial in self.revoked.serials():
            logger.warning("refused revoked certificate of %s (serial %x)", request.header.sender, serial)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate of {request.header.sender} is revoked")
