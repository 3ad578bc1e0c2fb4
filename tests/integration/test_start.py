"""The multi-terminal path (`cofe start` per participant), and an aggregator that refuses every
stranger (no, self-signed, foreign, expired or revoked certificate; a CN that is not the name it
claims; a name not in the plan) while the federation still finishes."""

from __future__ import annotations

import shutil
import socket
import time

from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki import CertificateAuthority
from cofe_cli.pki.revocation import build_crl
from federation_helpers import cofe, cofe_background, collaborator_args, free_port, processes_using, wait_for_port

pytestmark = pytest.mark.federation


def _ping(port: int, chain: bytes, cert: bytes | None, key: bytes | None, plan, sender: str) -> grpc.StatusCode | None:
    from openfl.protocols import aggregator_pb2, aggregator_pb2_grpc
    from openfl.transport.grpc.common import create_header

    credentials = grpc.ssl_channel_credentials(root_certificates=chain, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        header = create_header(sender=sender, receiver=plan.aggregator_uuid, federation_uuid=plan.federation_uuid,
                               single_col_cert_common_name="")
        try:
            aggregator_pb2_grpc.AggregatorStub(channel).Ping(aggregator_pb2.PingRequest(header=header), timeout=20)
            return None
        except grpc.RpcError as error:
            return error.code()


def _pair(issued) -> tuple[bytes, bytes]:
    return issued.cert_pem, issued.key_pem


def _pem_pair(cert: x509.Certificate, key) -> tuple[bytes, bytes]:
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _client_cert(subject: str, issuer: x509.Name, issuer_key, public_key, not_before, not_after) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer_key, hashes.SHA384()))


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    return _pem_pair(_client_cert(name, subject, key, key.public_key(), now - timedelta(hours=1), now + timedelta(days=30)), key)


def _expired_from(ca_dir: Path, name: str) -> tuple[bytes, bytes]:
    """Signed by the federation's real signing CA, but its validity ended yesterday."""
    signing_cert = x509.load_pem_x509_certificate((ca_dir / "signing-ca.crt").read_bytes())
    signing_key = serialization.load_pem_private_key((ca_dir / "private" / "signing-ca.key").read_bytes(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    cert = _client_cert(name, signing_cert.subject, signing_key, key.public_key(), now - timedelta(days=30), now - timedelta(days=1))
    return _pem_pair(cert, key)


def _revoke_serials(ca: CertificateAuthority, crl_path: Path, *cert_pems: bytes) -> None:
    now = datetime.now(timezone.utc)
    entries = [x509.RevokedCertificateBuilder().serial_number(x509.load_pem_x509_certificate(pem).serial_number)
               .revocation_date(now).build() for pem in cert_pems]
    atomic_write_bytes(crl_path, build_crl(ca, entries, 1))


def test_start_commands_finish_and_refuse_strangers(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    port = free_port()
    # site_b's data is named only at the site, when it starts (a coordinator never sees it).
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, "--collaborator", f"site_a={site_data['site_a']}",
         "--collaborator", "site_b", "--rounds", 2, "--port", port, check=True)
    start_early = cofe("start", "aggregator", "--dir", fed)
    assert start_early.returncode == 2 and "cofe certify" in start_early.stderr
    cofe("certify", "--dir", fed, check=True)
    # The initial model `cofe init` recorded is the one the aggregator must serve in round 0.
    served = fed / "workspaces" / "aggregator" / "save" / "init.pbuf"
    genuine = served.read_bytes()
    served.write_bytes(genuine[:-1] + bytes([genuine[-1] ^ 1]))
    swapped = cofe("start", "aggregator", "--dir", fed)
    assert swapped.returncode == 2 and "is not the federation's" in swapped.stderr, swapped.stderr
    served.write_bytes(genuine)
    unknown = cofe("start", "collaborator", "site_z", "--dir", fed)
    assert unknown.returncode == 2 and "no collaborator 'site_z'" in unknown.stderr
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        busy = cofe("start", "aggregator", "--dir", fed)
    assert busy.returncode == 2 and f"port {port} is already in use" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr
    assert len((busy.stdout + busy.stderr).splitlines()) == 2, "one error line and its hint, no plan dump before them"

    aggregator = cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / "aggregator.out")
    wait_for_port(port)

    from openfl.federated import Plan

    workspace = fed / "workspaces" / "site_a"
    plan = Plan.parse(plan_config_path=workspace / "plan" / "plan.yaml", cols_config_path=workspace / "plan" / "cols.yaml")
    chain = (workspace / "cert" / "cert_chain.crt").read_bytes()
    own = (workspace / "cert" / "client" / "col_site_a.crt").read_bytes(), (workspace / "cert" / "client" / "col_site_a.key").read_bytes()
    ca = CertificateAuthority.load(fed / "ca")

    def ping(cert_and_key, sender="site_a"):
        return _ping(port, chain, *(cert_and_key or (None, None)), plan, sender)

    assert ping(own) is None  # the control: a real member gets through
    refused_at_handshake = {
        "no certificate": None,
        "self-signed": _self_signed("site_a"),
        "another CA": _pair(CertificateAuthority.create(tmp_path / "other-ca").issue_client_cert("site_a")),
        "expired": _expired_from(fed / "ca", "site_a"),
    }
    for case, cert_and_key in refused_at_handshake.items():
        assert ping(cert_and_key) == grpc.StatusCode.UNAVAILABLE, case
    assert ping(own, sender="site_b") == grpc.StatusCode.UNAUTHENTICATED  # CN is not the name it claims
    assert ping(_pair(ca.issue_client_cert("site_z")), sender="site_z") == grpc.StatusCode.UNAUTHENTICATED  # not in the plan

    second = ca.issue_client_cert("site_a")  # a second, valid certificate of site_a, revoked while the aggregator runs
    assert ping(_pair(second)) is None
    _revoke_serials(ca, fed / "workspaces" / "aggregator" / "cert" / "crl.pem", second.cert_pem)
    assert ping(_pair(second)) == grpc.StatusCode.PERMISSION_DENIED
    assert ping(own) is None  # everyone else is unaffected

    # A revoked collaborator is told so and stops, instead of retrying forever as OpenFL's client would.
    _revoke_serials(ca, fed / "workspaces" / "aggregator" / "cert" / "crl.pem", second.cert_pem, own[0])
    revoked_run = cofe("start", "collaborator", "site_a", "--dir", fed, timeout=300)
    assert revoked_run.returncode == 1, revoked_run.stdout + revoked_run.stderr
    assert "the aggregator refused site_a: its certificate is revoked" in revoked_run.stderr
    assert "Traceback" not in revoked_run.stdout + revoked_run.stderr
    assert revoked_run.stderr.splitlines()[-1].startswith("hint: ask the coordinator"), revoked_run.stderr
    _revoke_serials(ca, fed / "workspaces" / "aggregator" / "cert" / "crl.pem", second.cert_pem)

    no_data = cofe("start", "collaborator", "site_b", "--dir", fed)
    assert no_data.returncode == 2 and "--data" in no_data.stderr
    collaborators = [
        cofe_background("start", "collaborator", "site_a", "--dir", fed, log=tmp_path / "site_a.out"),
        cofe_background("start", "collaborator", "site_b", "--dir", fed, "--data", site_data["site_b"], log=tmp_path / "site_b.out"),
    ]
    deadline = time.monotonic() + 900
    for proc in [aggregator, *collaborators]:
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.out")}
    assert aggregator.returncode == 0, logs
    assert all(proc.returncode == 0 for proc in collaborators), logs
    assert (fed / "workspaces" / "aggregator" / "save" / "last.pt").is_file()
    assert processes_using(fed) == []

    restarted = cofe("start", "aggregator", "--dir", fed)
    assert restarted.returncode == 2 and "already finished" in restarted.stderr


def test_one_aggregator_per_directory_and_per_port(tmp_path, site_data, fast_config):
    first, second = tmp_path / "first", tmp_path / "second"
    port = free_port()
    cofe("init", "--dir", first, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 1,
         "--port", port, check=True)
    cofe("certify", "--dir", first, check=True)
    shutil.copytree(first, second)  # another federation on the same port

    # Started together, both may pass the port check before either binds: gRPC would then let both
    # bind (SO_REUSEPORT) and share the collaborators out between them. One must fail, in one line.
    aggregators = {fed: cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / f"{fed.name}.out")
                   for fed in (first, second)}
    wait_for_port(port)
    deadline = time.monotonic() + 120
    while all(proc.poll() is None for proc in aggregators.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    exited = {fed: proc for fed, proc in aggregators.items() if proc.poll() is not None}
    outputs = {fed.name: (tmp_path / f"{fed.name}.out").read_text(errors="replace") for fed in aggregators}
    assert len(exited) == 1, outputs
    (loser_fed, loser), = exited.items()
    (fed, aggregator), = ((f, p) for f, p in aggregators.items() if f != loser_fed)
    assert loser.returncode == 2, outputs
    assert f"error: port {port} is already in use" in outputs[loser_fed.name] and "Traceback" not in outputs[loser_fed.name]
    assert "[blue]" not in outputs[fed.name], "OpenFL's plan dump belongs in the log file only"

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sharer:
        sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            sharer.bind(("::", port))  # the aggregator's port is its own

    # On the same directory, whatever else would write to it is refused, naming the aggregator.
    for args in (("start", "aggregator"), ("run",)):
        refused = cofe(*args, "--dir", fed, timeout=120)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"is in use by pid {aggregator.pid} (`cofe start aggregator --dir {fed}`" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    aggregator.terminate()
    assert aggregator.wait(timeout=60) == 130
    assert processes_using(tmp_path) == []


def test_aggregator_server_stops_once_every_site_was_told_to_quit(tmp_path):
    """OpenFL's serve() asked every 5 s whether to stop, so each federation (and `cofe run`) ended up to
    5 s after its last site was told to quit (issue 12); cofe's server stops within a fraction of a second.
    The real gRPC server on a real port; of the aggregator, serve() only asks all_quit_jobs_sent()."""
    import threading

    from cofe_cli.engine.openfl_server import RevocationCheckingServer, RevokedCertificates

    class AggregatorDoneAt:
        connector = None  # (no interop)

        def __init__(self, done_at: float):
            self.done_at = done_at

        def all_quit_jobs_sent(self) -> bool:
            return time.monotonic() >= self.done_at

    started = time.monotonic()
    server = RevocationCheckingServer(aggregator=AggregatorDoneAt(started + 0.5), agg_port=free_port(), use_tls=False,
                                      revoked=RevokedCertificates(tmp_path / "crl.pem", tmp_path / "chain.pem"))
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    serving.join(timeout=10)
    assert not serving.is_alive()
    assert time.monotonic() - started < 1.5  # OpenFL's loop: 5 s
