"""OpenFL's gRPC aggregator server, plus certificate revocation, which OpenFL does not have, and a
port of its own.

Every RPC a collaborator makes passes validate_collaborator; a certificate whose serial is on
the federation's CRL (cert/crl.pem, written by `cofe certify revoke`) is refused from the next
RPC on, without restarting the aggregator or the other collaborators.

gRPC binds its servers with SO_REUSEPORT unless told otherwise: a second aggregator on the same
port then starts without error and the kernel deals the collaborators' connections out between
the two, so neither federation finishes. This server's bind fails instead, with a clear error.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
from cryptography import x509
from openfl.protocols import aggregator_pb2_grpc
from openfl.transport.grpc import common as openfl_grpc
from openfl.transport.grpc.aggregator_server import AggregatorGRPCServer

from cofe_cli.ports import port_in_use

logger = logging.getLogger("cofe")
NO_PORT_SHARING = ("grpc.so_reuseport", 0)
# OpenFL's serve() asks every 5 s whether to stop (`while not all_quit_jobs_sent(): sleep(5)`), so every
# federation ended 0-5 s (2.5 s on average) after its last site was told to quit, with `cofe run` waiting
# (issue 12). Asking four times a second costs a few comparisons under the aggregator's lock.
STOP_CHECK_SECONDS = 0.25


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
        self.aggregator.heard_from(request.header.sender)
        if not (self.use_tls and self.require_client_auth):
            return
        pem = context.auth_context().get("x509_pem_cert", [b""])[0]
        serial = x509.load_pem_x509_certificate(pem).serial_number
        if serial in self.revoked.serials():
            logger.warning("refused revoked certificate of %s (serial %x)", request.header.sender, serial)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate of {request.header.sender} is revoked")

    def serve(self):
        # OpenFL's serve() builds its gRPC server with these options and no way to add one; this
        # process serves one aggregator and dials nothing, so extending them here touches nothing else.
        if NO_PORT_SHARING not in openfl_grpc.DEFAULT_CHANNEL_OPTIONS:
            openfl_grpc.DEFAULT_CHANNEL_OPTIONS.append(NO_PORT_SHARING)
        try:
            self._serve_until_done()
        except RuntimeError as error:
            if not str(error).startswith("Failed to bind"):
                raise
            raise port_in_use(int(self.uri.rpartition(":")[2])) from None

    def _serve_until_done(self) -> None:
        """OpenFL's AggregatorGRPCServer.serve() (openfl 1.9), but it checks every STOP_CHECK_SECONDS."""
        if self.interop_mode:
            self.aggregator.connector.start()
        server = openfl_grpc.create_grpc_server(self.uri, self.use_tls, self.private_key, self.certificate,
                                                self.root_certificate, self.require_client_auth,
                                                self.root_certificate_refresher_cb)
        aggregator_pb2_grpc.add_AggregatorServicer_to_server(self, server)
        logger.info("Starting Aggregator gRPC Server")
        server.start()
        while not self.aggregator.all_quit_jobs_sent():
            time.sleep(STOP_CHECK_SECONDS)
        if self.interop_mode:
            self.aggregator.connector.stop()
        server.stop(0)
