"""The federation CA: file layout, certificate contents, chain checks, and a real mutual-TLS handshake."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from cofe_cli.errors import CofeError
from cofe_cli.pki import (
    DEFAULT_VALIDITY_DAYS,
    CertificateAuthority,
    check_key_matches_cert,
    describe_certificate,
    make_private_key_and_csr,
    verify_issued_by,
)
from cofe_cli.pki.x509 import (
    certificate_or_none,
    chain_root,
    chain_root_fingerprint,
    chain_signers,
    common_name,
    common_names,
    directly_issued,
    issued_by_chain,
    parse_certificate,
    parse_chain,
    parse_private_key,
    same_host,
    san_names,
)

CA_FILES = ("root-ca.crt", "signing-ca.crt", "cert_chain.crt", "private/root-ca.key", "private/signing-ca.key")

# RSA-3072 key generation costs ~0.5 s each, so every key below is made once per module.


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki") / "ca", name="other")


@pytest.fixture(scope="module")
def server(ca):
    return ca.issue_server_cert("localhost", extra_names=["agg.example.org", "10.1.2.3"])


@pytest.fixture(scope="module")
def client(ca):
    return ca.issue_client_cert("site-a")


@pytest.fixture(scope="module")
def foreign_client(other_ca):
    return other_ca.issue_client_cert("site-a")


@pytest.fixture(scope="module")
def site_key_and_csr():
    return make_private_key_and_csr("site-b", san=["site-b.example.org", "192.168.1.10"])


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _ext(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def _snapshot(ca_dir: Path) -> dict[str, bytes]:
    return {name: (ca_dir / name).read_bytes() for name in CA_FILES}


def test_ca_layout_permissions_and_extensions(ca):
    for name in CA_FILES:
        assert (ca.ca_dir / name).is_file(), name
    assert stat.S_IMODE((ca.ca_dir / "private").stat().st_mode) == 0o700
    for key in ("private/root-ca.key", "private/signing-ca.key"):
        assert stat.S_IMODE((ca.ca_dir / key).stat().st_mode) == 0o600

    root = _cert((ca.ca_dir / "root-ca.crt").read_bytes())
    signing = _cert((ca.ca_dir / "signing-ca.crt").read_bytes())
    assert (ca.ca_dir / "cert_chain.crt").read_bytes() == ca.chain_pem()
    assert x509.load_pem_x509_certificates(ca.chain_pem()) == [signing, root]

    root_bc = _ext(root, x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length == 1
    root_ku = _ext(root, x509.KeyUsage).value
    assert root_ku.key_cert_sign and root_ku.crl_sign
    signing_bc = _ext(signing, x509.BasicConstraints).value
    assert signing_bc.ca and signing_bc.path_length == 0
    assert signing.issuer == root.subject
    assert (
        _ext(signing, x509.AuthorityKeyIdentifier).value.key_identifier
        == _ext(root, x509.SubjectKeyIdentifier).value.digest
    )
    for cert in (root, signing):
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
        assert cert.public_key().key_size == 3072


def test_server_and_client_certs_chain_to_root(ca, server, client):
    verify_issued_by(server.cert_pem, ca.chain_pem())
    verify_issued_by(client.cert_pem, ca.chain_pem())
    assert describe_certificate(client.cert_pem).issuer_common_name == "cofe Signing CA"


def test_server_cert_names_and_usages(server):
    info = describe_certificate(server.cert_pem)
    assert info.common_name == "localhost"
    assert info.san_dns == ["localhost", "agg.example.org"]
    assert set(info.san_ips) == {"10.1.2.3", "127.0.0.1", "::1"}
    cert = _cert(server.cert_pem)
    assert ExtendedKeyUsageOID.SERVER_AUTH in _ext(cert, x509.ExtendedKeyUsage).value
    key_usage = _ext(cert, x509.KeyUsage).value
    assert key_usage.digital_signature and key_usage.key_encipherment and not key_usage.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca


def test_server_cert_for_an_ip_address_has_no_loopback_names(ca):
    info = describe_certificate(ca.issue_server_cert("10.0.0.7").cert_pem)
    assert info.common_name == "10.0.0.7"
    assert info.san_ips == ["10.0.0.7"] and info.san_dns == []


def test_client_cert_names_and_usages(client):
    info = describe_certificate(client.cert_pem)
    assert info.common_name == "site-a" and info.san_dns == ["site-a"] and info.san_ips == []
    assert list(_ext(_cert(client.cert_pem), x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_key_matches_only_its_own_cert(server, client):
    assert check_key_matches_cert(client.key_pem, client.cert_pem)
    assert not check_key_matches_cert(server.key_pem, client.cert_pem)
    with pytest.raises(CofeError):
        check_key_matches_cert(b"not a key", client.cert_pem)


def test_issued_cert_write_is_private(tmp_path, client):
    client.write(tmp_path / "c.crt", tmp_path / "keys" / "c.key")
    assert (tmp_path / "c.crt").read_bytes() == client.cert_pem
    assert stat.S_IMODE((tmp_path / "keys" / "c.key").stat().st_mode) == 0o600


def test_create_without_force_refuses_and_changes_nothing(ca):
    before = _snapshot(ca.ca_dir)
    with pytest.raises(CofeError, match="a CA already exists") as caught:
        CertificateAuthority.create(ca.ca_dir)
    assert "--force" in caught.value.hint
    assert _snapshot(ca.ca_dir) == before


def test_create_with_force_replaces(ca, server, tmp_path):
    ca_dir = tmp_path / "ca"
    shutil.copytree(ca.ca_dir, ca_dir)
    replaced = CertificateAuthority.create(ca_dir, force=True)
    assert replaced.root_fingerprint() != ca.root_fingerprint()
    assert CertificateAuthority.load(ca_dir).root_fingerprint() == replaced.root_fingerprint()
    with pytest.raises(CofeError):
        verify_issued_by(server.cert_pem, replaced.chain_pem())


def test_cert_from_another_ca_is_refused(ca, other_ca, foreign_client):
    with pytest.raises(CofeError, match="not valid under this CA"):
        verify_issued_by(foreign_client.cert_pem, ca.chain_pem())
    # Same CN, different CA: the name alone must never be enough.
    verify_issued_by(foreign_client.cert_pem, other_ca.chain_pem())


def test_sign_csr_server_keeps_requested_names(ca, site_key_and_csr):
    key_pem, csr_pem = site_key_and_csr
    cert_pem = ca.sign_csr(csr_pem, kind="server", expected_name="site-b")
    verify_issued_by(cert_pem, ca.chain_pem())
    info = describe_certificate(cert_pem)
    assert info.common_name == "site-b"
    assert info.san_dns == ["site-b.example.org"] and info.san_ips == ["192.168.1.10"]
    assert check_key_matches_cert(key_pem, cert_pem)


def test_sign_csr_client(ca, site_key_and_csr):
    key_pem, csr_pem = site_key_and_csr
    cert_pem = CertificateAuthority.load(ca.ca_dir).sign_csr(csr_pem, kind="client")
    verify_issued_by(cert_pem, ca.chain_pem())
    assert describe_certificate(cert_pem).san_dns == ["site-b"]
    assert check_key_matches_cert(key_pem, cert_pem)


def test_sign_csr_refuses_other_name(ca, site_key_and_csr):
    with pytest.raises(CofeError, match="expected 'site-c'"):
        ca.sign_csr(site_key_and_csr[1], kind="client", expected_name="site-c")


def test_sign_csr_refuses_tampered_request(ca, site_key_and_csr):
    der = x509.load_pem_x509_csr(site_key_and_csr[1]).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"site-b", b"site-x", 1)
    assert tampered != der
    tampered_pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CofeError, match="signature does not verify"):
        ca.sign_csr(tampered_pem, kind="client")
    with pytest.raises(CofeError):
        ca.sign_csr(b"garbage", kind="client")


def test_load_missing_ca(tmp_path):
    assert not CertificateAuthority.exists(tmp_path / "nope")
    with pytest.raises(CofeError) as caught:
        CertificateAuthority.load(tmp_path / "nope")
    assert "cofe certify" in caught.value.hint


def test_load_refuses_corrupt_or_mixed_files(ca, other_ca, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ca.ca_dir, corrupt)
    (corrupt / "signing-ca.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
    with pytest.raises(CofeError, match="not a PEM certificate"):
        CertificateAuthority.load(corrupt)

    mixed = tmp_path / "mixed"
    shutil.copytree(ca.ca_dir, mixed)
    shutil.copy(other_ca.ca_dir / "private/signing-ca.key", mixed / "private/signing-ca.key")
    with pytest.raises(CofeError, match="do not belong together"):
        CertificateAuthority.load(mixed)

    partial = tmp_path / "partial"
    shutil.copytree(ca.ca_dir, partial)
    (partial / "cert_chain.crt").unlink()
    assert CertificateAuthority.exists(partial)
    with pytest.raises(CofeError, match="incomplete"):
        CertificateAuthority.load(partial)


def test_root_fingerprint_format(ca):
    fingerprint = ca.root_fingerprint()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)
    assert fingerprint.replace(":", "").lower() == ca.root_cert.fingerprint(hashes.SHA256()).hex()


def test_x509_names_of_a_certificate(server):
    cert = _cert(server.cert_pem)
    assert common_name(cert.subject) == "localhost" and common_names(cert.subject) == ["localhost"]
    assert common_name(cert.issuer) == "cofe Signing CA"
    assert san_names(cert.extensions) == ["localhost", "agg.example.org", "10.1.2.3", "127.0.0.1", "::1"]
    assert common_name(x509.Name([])) == "" and common_names(x509.Name([])) == []


def test_x509_chain_root_and_signers(ca, other_ca):
    assert chain_root(ca.chain_pem()) == ca.root_cert
    assert chain_root_fingerprint(ca.chain_pem()) == ca.root_fingerprint()
    assert chain_signers(ca.chain_pem()) == [ca.signing_cert]
    root_only = ca.root_cert.public_bytes(serialization.Encoding.PEM)
    assert chain_signers(root_only) == [ca.root_cert]  # the root signs when it is alone
    with pytest.raises(CofeError, match="holds 2 root certificates, not 1"):
        chain_root(ca.chain_pem() + other_ca.chain_pem())
    with pytest.raises(CofeError, match="the CA chain is not PEM certificates"):
        parse_chain(b"not a chain")


def test_x509_who_issued_a_certificate(ca, other_ca, server, foreign_client):
    cert, foreign = _cert(server.cert_pem), _cert(foreign_client.cert_pem)
    assert directly_issued(cert, ca.signing_cert) and ca.issued(cert)
    assert not directly_issued(cert, ca.root_cert)  # the root signed the signing CA, not the leaf
    assert not directly_issued(foreign, ca.signing_cert) and not ca.issued(foreign)
    assert directly_issued(ca.signing_cert, ca.root_cert)
    assert issued_by_chain(cert, ca.chain_pem()) and not issued_by_chain(cert, other_ca.chain_pem())
    assert not issued_by_chain(cert, None) and not issued_by_chain(cert, b"damaged")


def test_x509_unreadable_input(server):
    assert certificate_or_none(b"garbage") is None
    assert certificate_or_none(server.cert_pem).serial_number == _cert(server.cert_pem).serial_number
    with pytest.raises(CofeError, match="cert.pem is not a PEM certificate"):
        parse_certificate(b"garbage", "cert.pem")
    with pytest.raises(CofeError, match="the private key is not an unencrypted PEM private key"):
        parse_private_key(server.cert_pem)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Agg.Example.org.", "agg.example.org", True),
    ("::1", "0:0:0:0:0:0:0:1", True),
    ("10.0.0.1", "10.0.0.2", False),
    ("localhost", "127.0.0.1", False),  # a name is not resolved
])
def test_x509_same_host(a, b, same):
    assert same_host(a, b) is same


def test_default_validity_is_at_least_three_years(ca, server):
    assert DEFAULT_VALIDITY_DAYS >= 3 * 365
    three_years_from_now = datetime.now(timezone.utc) + timedelta(days=3 * 365)
    for cert in (ca.root_cert, ca.signing_cert, _cert(server.cert_pem)):
        assert cert.not_valid_after_utc >= three_years_from_now - timedelta(days=1)
        assert cert.not_valid_before_utc <= datetime.now(timezone.utc)
    # A leaf never claims to outlive the CA that vouches for it.
    assert _cert(server.cert_pem).not_valid_after_utc <= ca.signing_cert.not_valid_after_utc
    with pytest.raises(CofeError):
        ca.issue_client_cert("x", validity_days=0)
    with pytest.raises(CofeError, match="is out of range"):  # was an OverflowError from the dates
        ca.issue_client_cert("x", validity_days=1_000_000_000)


# --- the files work for real mutual TLS (what gRPC does with them) ---------------------------


def _tls_context(side: int, chain: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(side)
    context.load_verify_locations(cafile=chain)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED  # the server side too: client certificates are mandatory
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # RFC 5280 checks, as newer Pythons do by default
    return context


def _serve_once(listener: socket.socket, context: ssl.SSLContext):
    """Accept one connection; return the client's CN, or the TLS error that refused it."""
    connection, _ = listener.accept()
    with connection:
        connection.settimeout(5)
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                subject = dict(field for rdn in tls.getpeercert()["subject"] for field in rdn)
                tls.recv(16)
                tls.sendall(subject["commonName"].encode())
                return subject["commonName"]
        except ssl.SSLError as error:
            return error


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str):
    """One loopback connection; (what the server saw, what the client got back)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, ThreadPoolExecutor(1) as pool:
        listener.settimeout(5)
        served = pool.submit(_serve_once, listener, server_context)
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    tls.sendall(b"ping")
                    reply = tls.recv(16)
        except OSError as error:  # ssl.SSLError included: the server may refuse after the handshake
            reply = error
        return served.result(timeout=10), reply


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_mutual_tls_handshake_over_loopback(ca, server, client, foreign_client, tmp_path, server_hostname):
    chain = tmp_path / "cert_chain.crt"
    chain.write_bytes(ca.chain_pem())
    server.write(tmp_path / "server.crt", tmp_path / "server.key")
    client.write(tmp_path / "client.crt", tmp_path / "client.key")
    foreign_client.write(tmp_path / "foreign.crt", tmp_path / "foreign.key")
    server_context = _tls_context(ssl.PROTOCOL_TLS_SERVER, chain, tmp_path / "server.crt", tmp_path / "server.key")

    client_context = _tls_context(ssl.PROTOCOL_TLS_CLIENT, chain, tmp_path / "client.crt", tmp_path / "client.key")
    assert _handshake(server_context, client_context, server_hostname) == ("site-a", b"site-a")

    foreign_context = _tls_context(ssl.PROTOCOL_TLS_CLIENT, chain, tmp_path / "foreign.crt", tmp_path / "foreign.key")
    seen_by_server, reply = _handshake(server_context, foreign_context, server_hostname)
    assert isinstance(seen_by_server, ssl.SSLError) and "certificate verify failed" in str(seen_by_server)
    assert reply != b"site-a"
