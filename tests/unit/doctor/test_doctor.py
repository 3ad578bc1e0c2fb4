"""`cofe doctor`'s checks that need no aggregator: certificates, clock, data, versions, and the network
steps against loopback sockets (a TLS server) opened here. The gRPC Ping is only mapped here; it runs
against a real aggregator in tests/integration/test_multihost.py."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cli_assertions import refused
from unit_federation import gandlf_config, write_federation
from volumes import write_volume
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cofe_cli.doctor.certificates import check_certificate, check_clock, issued_at, kernel_clock_state
from cofe_cli.doctor.data import check_data
from cofe_cli.doctor.grpc_ping import describe_ping
from cofe_cli.doctor.network_tls import check_address, check_port, tls_handshake
from cofe_cli.doctor.plan_and_versions import RECORDED_PACKAGES, check_environment, installed_version
from cofe_cli.doctor.result import FAIL, PASS, SKIP
from cofe_cli.doctor.runner import run_checks
from cofe_cli.federation import AGGREGATOR, FederationLayout
from cofe_cli.pki import CertificateAuthority
from cofe_cli.pki.local_issuing import certify_locally
from cofe_cli.plan.workspaces import CollaboratorData

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)
GANDLF_CONFIG = gandlf_config(channels=1)


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca") / "ca", name="doctor")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("other") / "ca", name="stranger")


@pytest.fixture(scope="module")
def client(ca):
    return ca.issue_client_cert("hospital_a")


def _cert_between(ca: CertificateAuthority, name: str, not_before: datetime, not_after: datetime) -> tuple[bytes, bytes]:
    """Signed by the federation's signing CA, with the validity given (expired, not yet valid, ...)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.signing_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca._signing_key, hashes.SHA384()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# ---------------------------------------------------------------- certificate


def test_a_valid_certificate_passes(ca, client):
    check, cert = check_certificate(client.cert_pem, client.key_pem, ca.chain_pem(), participant="hospital_a",
                                    expected_cn="hospital_a", min_days=30)
    assert check.status == PASS, check
    assert cert.serial_number == _load(client.cert_pem).serial_number
    assert "hospital_a" in check.detail and "days left" in check.detail


def test_a_certificate_expiring_within_min_days_fails(ca):
    short = ca.issue_client_cert("hospital_a", validity_days=10)
    check, _ = check_certificate(short.cert_pem, short.key_pem, ca.chain_pem(), participant="hospital_a",
                                 expected_cn="hospital_a", min_days=30)
    assert check.status == FAIL and "fewer than 30 days" in check.detail and "request" in check.fix
    relaxed, _ = check_certificate(short.cert_pem, short.key_pem, ca.chain_pem(), participant="hospital_a",
                                   expected_cn="hospital_a", min_days=5)
    assert relaxed.status == PASS, relaxed


def test_expired_and_not_yet_valid_certificates_fail(ca):
    now = datetime.now(timezone.utc)
    expired = _cert_between(ca, "hospital_a", now - timedelta(days=40), now - timedelta(days=1))
    check, _ = check_certificate(*expired, ca.chain_pem(), participant="hospital_a", expected_cn="hospital_a",
                                 min_days=30)
    assert check.status == FAIL and "expired on" in check.detail
    future = _cert_between(ca, "hospital_a", now + timedelta(hours=2), now + timedelta(days=400))
    check, _ = check_certificate(*future, ca.chain_pem(), participant="hospital_a", expected_cn="hospital_a",
                                 min_days=30)
    assert check.status == FAIL and "not valid before" in check.detail and "NTP" in check.fix


def test_certificate_problems_are_named(ca, other_ca, client):
    chain = ca.chain_pem()

    def check(cert, key, chain_pem=chain, cn="hospital_a"):
        result, _ = check_certificate(cert, key, chain_pem, participant="hospital_a", expected_cn=cn, min_days=30)
        assert result.status == FAIL and result.fix, result
        return result.detail

    assert "no private key" in check(None, None)
    assert "no certificate yet" in check(None, client.key_pem)
    assert "CA chain" in check(client.cert_pem, client.key_pem, chain_pem=None)
    assert "not 'hospital_b'" in check(client.cert_pem, client.key_pem, cn="hospital_b")
    assert "does not match" in check(client.cert_pem, ca.issue_client_cert("hospital_a").key_pem)
    foreign = other_ca.issue_client_cert("hospital_a")
    assert "does not chain" in check(foreign.cert_pem, foreign.key_pem)


def test_an_aggregator_certificate_must_name_the_plan_address(ca):
    server = ca.issue_server_cert("fl.example.org")
    good, _ = check_certificate(server.cert_pem, server.key_pem, ca.chain_pem(), participant=AGGREGATOR,
                                expected_cn="fl.example.org", expected_san="fl.example.org", min_days=30)
    assert good.status == PASS, good
    other = ca.issue_server_cert("other.example.org")
    bad, _ = check_certificate(other.cert_pem, other.key_pem, ca.chain_pem(), participant=AGGREGATOR,
                               expected_cn="fl.example.org", expected_san="fl.example.org", min_days=30)
    assert bad.status == FAIL


# ---------------------------------------------------------------- clock


def test_clock_passes_when_no_timestamp_lies_in_the_future_and_says_what_it_compared(ca, client):
    now = datetime.now(timezone.utc)
    check = check_clock(now=now, server_cert=_load(client.cert_pem), own_cert=_load(client.cert_pem),
                        kit_created=now - timedelta(minutes=5), kernel="the kernel says X")
    assert check.status == PASS, check
    for words in ("aggregator's certificate", "this site's certificate", "kit.json", "cannot be read",
                  "ahead cannot be seen", "the kernel says X"):
        assert words in check.detail


def test_clock_behind_the_coordinator_fails():
    check = check_clock(now=NOW, kit_created=NOW + timedelta(minutes=3))
    assert check.status == FAIL and "behind" in check.detail and "3 min" in check.detail
    within = check_clock(now=NOW, kit_created=NOW + timedelta(seconds=30))
    assert within.status == PASS, within


def test_clock_fails_when_the_server_certificate_is_not_valid_yet(ca):
    now = datetime.now(timezone.utc)
    future, _ = _cert_between(ca, "fl.example.org", now + timedelta(minutes=10), now + timedelta(days=10))
    check = check_clock(now=now, server_cert=_load(future))
    assert check.status == FAIL and "not valid before" in check.detail


def test_signing_time_is_read_from_cofe_back_dated_not_before(ca):
    cert = _load(ca.issue_client_cert("hospital_a").cert_pem)
    assert abs(issued_at(cert) - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_clock_without_anything_to_compare_says_so():
    check = check_clock(now=NOW)
    assert check.status == PASS and "nothing to compare" in check.detail


def test_kernel_clock_state_is_a_phrase_or_none():
    state = kernel_clock_state()
    assert state is None or "NTP" in state


# ---------------------------------------------------------------- environment, data


def test_environment_matches_the_recorded_versions():
    installed = {"cofe": "0.1.0", "openfl": "1.9", "gandlf": "0.1.5", "torch": "2.7.1+cpu"}.get
    recorded = {"cofe": "0.1.0", "openfl": "1.9", "gandlf": "0.1.5", "torch": "2.7.1"}
    assert check_environment(recorded, installed).status == PASS
    wrong = check_environment({**recorded, "openfl": "1.8"}, installed)
    assert wrong.status == FAIL and "openfl 1.9 here, the plan has 1.8" in wrong.detail
    assert "openfl==1.8" in wrong.fix
    missing = check_environment(recorded, {"cofe": "0.1.0"}.get)
    assert missing.status == FAIL and "torch is not installed" in missing.detail
    assert check_environment({}, installed).status == PASS


def _data_folder(root: Path, *, rows: int = 2, missing_file: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "valid.csv"):
        lines = ["SubjectID,Channel_0,Label"]
        for i in range(rows):
            image, label = root / f"{name}-{i}-img.nii.gz", root / f"{name}-{i}-lbl.nii.gz"
            write_volume(image)
            if not missing_file:
                write_volume(label)
            lines.append(f"{i},{image.name},{label.name}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_data_check(tmp_path):
    good = check_data(_data_folder(tmp_path / "good"), GANDLF_CONFIG, participant="hospital_a")
    assert good.status == PASS and "2 subject(s)" in good.detail
    broken = check_data(_data_folder(tmp_path / "broken", missing_file=True), GANDLF_CONFIG, participant="hospital_a")
    assert broken.status == FAIL and "does not exist" in broken.detail
    two_channels = {**GANDLF_CONFIG, "model": {**GANDLF_CONFIG["model"], "num_channels": 2}}
    channels = check_data(tmp_path / "good", two_channels, participant="hospital_a")
    assert channels.status == FAIL and "channel" in channels.detail
    none = check_data(None, GANDLF_CONFIG, participant="hospital_a")
    assert none.status == FAIL and "--data" in none.fix


def test_data_check_reads_every_image_header(tmp_path):
    """A text file named .nii.gz, and /etc/passwd, used to PASS: only their existence was checked."""
    folder = _data_folder(tmp_path / "site")
    (folder / "train.csv-0-img.nii.gz").write_text("not an image\n")
    text = check_data(folder, GANDLF_CONFIG, participant="hospital_a")
    assert text.status == FAIL and "Channel_0 is not an image file that can be read: train.csv-0-img.nii.gz" in text.detail
    (folder / "train.csv").write_text(f"SubjectID,Channel_0,Label\n0,/etc/passwd,{folder / 'train.csv-0-lbl.nii.gz'}\n")
    passwd = check_data(folder, GANDLF_CONFIG, participant="hospital_a")
    assert passwd.status == FAIL and "is not an image file that can be read: /etc/passwd" in passwd.detail


def test_data_check_refuses_a_label_of_another_size_and_a_patch_larger_than_the_volumes(tmp_path):
    folder = _data_folder(tmp_path / "site")
    write_volume(folder / "valid.csv-1-lbl.nii.gz", (16, 16, 12))
    mismatch = check_data(folder, GANDLF_CONFIG, participant="hospital_a")
    assert mismatch.status == FAIL and "Label is 16x16x12 voxels but Channel_0 is 16x16x16" in mismatch.detail
    write_volume(folder / "valid.csv-1-lbl.nii.gz")
    large_patch = {**GANDLF_CONFIG, "patch_size": [32, 32, 32]}
    patch = check_data(folder, large_patch, participant="hospital_a")
    assert patch.status == FAIL and "patch_size [32, 32, 32] is larger than 4 of the 4 volume(s)" in patch.detail
    assert "at most [16, 16, 16]" in patch.fix


# ---------------------------------------------------------------- address, port


def test_address_checks():
    ip, addresses = check_address("127.0.0.1", 50051)
    assert ip.status == PASS and "IP address" in ip.detail and addresses
    name, addresses = check_address("localhost", 50051)
    assert name.status == PASS and addresses

    def unknown(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    failed, addresses = check_address("fl.example.invalid", 50051, resolver=unknown)
    assert failed.status == FAIL and "does not resolve" in failed.detail and not addresses

    def hangs(*args, **kwargs):
        time.sleep(2)
        return []

    started = time.monotonic()
    slow, _ = check_address("fl.example.org", 50051, timeout=0.2, resolver=hangs)
    assert slow.status == FAIL and "within 0.2 s" in slow.detail
    assert time.monotonic() - started < 1.5


def test_port_open_and_refused():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        _, addresses = check_address("127.0.0.1", port)
        check, target = check_port(addresses, "127.0.0.1", port, timeout=2)
        assert check.status == PASS and target is not None
    check, target = check_port(addresses, "127.0.0.1", port, timeout=2)  # closed now
    assert check.status == FAIL and "refused" in check.detail and "cofe start aggregator" in check.fix
    assert target is None


# ---------------------------------------------------------------- TLS against a loopback server


class TlsServer:
    """A TLS server on 127.0.0.1 that asks for a client certificate, as the aggregator does, and
    answers the HTTP/2 preface with a SETTINGS frame."""

    def __init__(self, tmp: Path, server_cert, trusted_chain: bytes, *, tls: bool = True):
        self.context = None
        if tls:
            server_cert.write(tmp / "server.crt", tmp / "server.key")
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cadata=trusted_chain.decode())
            self.context.load_cert_chain(str(tmp / "server.crt"), str(tmp / "server.key"))
            self.context.set_alpn_protocols(["h2"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                if self.context is None:
                    conn.recv(64)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                else:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(64)
                        tls.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    def __enter__(self) -> "TlsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def _handshake(tmp: Path, server: TlsServer, ca: CertificateAuthority, client, host: str = "localhost"):
    client.write(tmp / "client.crt", tmp / "client.key")
    return tls_handshake(host, server.port, (socket.AF_INET, ("127.0.0.1", server.port)),
                         chain_pem=ca.chain_pem(), cert_file=tmp / "client.crt", key_file=tmp / "client.key",
                         timeout=5)


def test_tls_with_the_federation_ca_on_both_sides_passes(tmp_path, ca, client):
    with TlsServer(tmp_path, ca.issue_server_cert("localhost"), ca.chain_pem()) as server:
        result = _handshake(tmp_path, server, ca, client)
    assert result.check.status == PASS, result.check
    assert "answered the HTTP/2 preface" in result.check.detail
    assert result.server_cert is not None and issued_at(result.server_cert) <= datetime.now(timezone.utc)


def test_tls_to_a_server_of_another_ca_fails(tmp_path, ca, other_ca, client):
    with TlsServer(tmp_path, other_ca.issue_server_cert("localhost"), ca.chain_pem()) as server:
        result = _handshake(tmp_path, server, ca, client)
    assert result.check.status == FAIL and "not signed by this federation's CA" in result.check.detail


def test_tls_to_a_server_that_refuses_this_sites_ca_fails(tmp_path, ca, other_ca, client):
    with TlsServer(tmp_path, ca.issue_server_cert("localhost"), other_ca.chain_pem()) as server:
        result = _handshake(tmp_path, server, ca, client)
    assert result.check.status == FAIL, result.check
    assert "refused this site's certificate" in result.check.detail


def test_tls_to_a_server_with_another_name_fails(tmp_path, ca, client):
    with TlsServer(tmp_path, ca.issue_server_cert("fl.example.org"), ca.chain_pem()) as server:
        result = _handshake(tmp_path, server, ca, client)
    assert result.check.status == FAIL and "does not name" in result.check.detail
    assert "--san" in result.check.fix


def test_tls_to_a_plain_text_server_fails(tmp_path, ca, client):
    with TlsServer(tmp_path, None, b"", tls=False) as server:
        result = _handshake(tmp_path, server, ca, client)
    assert result.check.status == FAIL and result.check.fix


# ---------------------------------------------------------------- the Ping's answers


@pytest.mark.parametrize("code, words", [
    ("UNAVAILABLE", "wrong CA"),
    ("UNAUTHENTICATED", "not in the aggregator's plan"),
    ("PERMISSION_DENIED", "revoked"),
    ("UNKNOWN", "another plan"),
    ("DEADLINE_EXCEEDED", "did not answer"),
    ("INTERNAL", "the Ping failed"),
])
def test_ping_failures_are_explained(code, words):
    check = describe_ping(code, "details " * 100, sender="hospital_a", target="fl:50051")
    assert check.status == FAIL and code in check.detail and words in check.detail and check.fix
    assert len(check.detail) < 600


def test_a_ping_answered_passes():
    check = describe_ping(None, "", sender="hospital_a", target="fl:50051", answered_by="aggregator_x")
    assert check.status == PASS and "aggregator_x" in check.detail


# ---------------------------------------------------------------- the whole command, without an aggregator


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _federation(root: Path, port: int, versions: dict) -> FederationLayout:
    layout = write_federation(root, config=GANDLF_CONFIG, address="127.0.0.1", port=port, rounds=1, name="doctor-fed",
                              versions=versions, collaborators=[CollaboratorData("hospital_a", _data_folder(root.parent / "data")),
                                                                CollaboratorData("hospital_b", None)])
    certify_locally(layout, layout.load_manifest())
    return layout


def _run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "cofe_cli", "doctor", *map(str, args)], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> FederationLayout:
    versions = {package: installed_version(package) for package in RECORDED_PACKAGES}
    return _federation(tmp_path_factory.mktemp("fed") / "fed", _closed_port(), {k: v for k, v in versions.items() if v})


def test_without_an_aggregator_the_network_checks_fail_and_the_rest_is_checked(federation):
    manifest = federation.load_manifest()
    checks = {check.name: check for check in run_checks(federation, manifest, "hospital_a", min_days=30,
                                                                 timeout=2)}
    assert list(checks) == ["plan", "address", "port", "tls", "aggregator", "certificate", "keys", "clock", "data",
                            "environment"]
    assert checks["port"].status == FAIL
    assert checks["tls"].status == checks["aggregator"].status == SKIP
    for name in ("plan", "address", "certificate", "keys", "clock", "data", "environment"):
        assert checks[name].status == PASS, checks[name]


def test_doctor_command_exit_codes(federation):
    failed = _run("--dir", federation.root, "--participant", "hospital_a", "--timeout", 2)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stdout.splitlines()
    assert any(line.startswith("FAIL port") and "fix:" in line for line in lines), failed.stdout
    assert any(line.startswith("PASS certificate") for line in lines), failed.stdout
    assert "1 of 10 checks failed" in failed.stdout
    assert "Traceback" not in failed.stdout + failed.stderr

    several = _run("--dir", federation.root)
    assert several.returncode == 2 and "--participant" in several.stderr
    assert _run("--dir", federation.root, "--participant", "hospital_z").returncode == 2
    assert _run("--dir", federation.root, "--participant", "hospital_a", "--min-days", -1).returncode == 2
    assert _run("--dir", federation.root.parent / "nowhere").returncode == 2


def test_doctor_at_the_aggregator_checks_what_it_can(federation):
    result = _run("--dir", federation.root, "--participant", AGGREGATOR, "--min-days", 5000)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL certificate" in result.stdout and "fewer than 5000 days" in result.stdout
    assert "PASS model" in result.stdout and "has the SHA-384 federation.yaml records" in result.stdout
    assert "PASS port" in result.stdout and "PASS environment" in result.stdout


def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_a_swapped_initial_model_fails_the_doctor_and_start_refuses_it(federation, tmp_path):
    """The aggregator serves save/init.pbuf in round 0: weights swapped there must not go unnoticed."""
    copy = FederationLayout(tmp_path / "fed")
    shutil.copytree(federation.root, copy.root)
    (copy.workspace(AGGREGATOR) / "save" / "init.pbuf").write_bytes(b"\x08\x01weights chosen by someone else")
    result = _run("--dir", copy.root, "--participant", AGGREGATOR)
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAIL model"))
    assert "is not the federation's" in line and "fix: do not start from it" in line, line
    refused(_cli("start", "aggregator", "--dir", copy.root), "is not the federation's")

    (copy.workspace(AGGREGATOR) / "save" / "init.pbuf").unlink()
    refused(_cli("start", "aggregator", "--dir", copy.root), "the initial model")
    assert "FAIL model" in _run("--dir", copy.root, "--participant", AGGREGATOR).stdout


def test_a_manifest_without_the_initial_model_hash_needs_a_new_init(federation, tmp_path):
    """An older cofe's federation.yaml: the model cannot be checked, so neither doctor nor start accept it."""
    copy = FederationLayout(tmp_path / "fed")
    shutil.copytree(federation.root, copy.root)
    recorded = yaml.safe_load(copy.manifest_file.read_text())
    del recorded["init_model_sha384"]
    copy.manifest_file.write_text(yaml.safe_dump(recorded))
    result = _run("--dir", copy.root, "--participant", AGGREGATOR)
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAIL model"))
    assert "records no hash of the initial model" in line and "cofe init --force" in line, line
    refused(_cli("start", "aggregator", "--dir", copy.root), "records no hash of the initial model")


def test_doctor_data_option_and_missing_data(federation, tmp_path):
    result = _run("--dir", federation.root, "--participant", "hospital_b", "--timeout", 2)
    assert result.returncode == 1 and "FAIL data" in result.stdout and "no data folder" in result.stdout
    given = _run("--dir", federation.root, "--participant", "hospital_b", "--timeout", 2,
                 "--data", _data_folder(tmp_path / "b"))
    assert "PASS data" in given.stdout, given.stdout


def test_private_keys_open_to_others_fail_the_doctor_and_every_certify_and_start_warns(federation, tmp_path):
    """Keys chmod 0644 (and ca/private 0755) used to go unnoticed by certify, certify status, start and doctor."""
    copy = FederationLayout(tmp_path / "fed")
    shutil.copytree(federation.root, copy.root)
    exposed = [copy.ca / "private", copy.ca / "private" / "root-ca.key", copy.ca / "private" / "signing-ca.key",
               copy.workspace("hospital_a") / "cert" / "client" / "col_hospital_a.key"]
    for path in exposed:
        path.chmod(0o755 if path.is_dir() else 0o644)
    files = " ".join(str(path) for path in exposed[1:])
    fix = f"chmod 600 {files} && chmod 700 {exposed[0]}"

    result = _run("--dir", copy.root, "--participant", "hospital_a", "--timeout", 2)
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAIL keys"))
    assert all(f"{path} (mode 0" in line for path in exposed) and f"fix: {fix}" in line, line
    for command in (["certify"], ["certify", "status"], ["start", "collaborator", "hospital_b"]):
        said = _cli(*command, "--dir", copy.root)
        warnings = [line for line in said.stdout.splitlines() if line.startswith("warning: private keys readable")]
        assert len(warnings) == 1 and f"fix: {fix}" in warnings[0], (command, said.stdout, said.stderr)

    subprocess.run(fix.split(" (")[0], shell=True, check=True)
    assert "PASS keys" in _run("--dir", copy.root, "--participant", "hospital_a", "--timeout", 2).stdout
    for command in (["certify"], ["certify", "status"]):
        assert "warning:" not in _cli(*command, "--dir", copy.root).stdout
