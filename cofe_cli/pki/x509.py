"""Reading X.509 material: the one place cofe parses certificates, keys, requests and CA chains, names
them, fingerprints them and checks who issued them. Only stdlib and `cryptography`: cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from cofe_cli.errors import CofeError

REISSUE_HINT = "issue it again from this federation's CA (`cofe certify`)"
# The names a TLS peer is checked against; a site has no business getting e-mail or URI identities.
HOST_NAME_TYPES = (x509.DNSName, x509.IPAddress)
_CHAIN_HINT = "pass the CA's cert_chain.crt"


# ---------------------------------------------------------------- parsing


def parse_certificate(cert_pem: bytes, source: str = "the certificate", hint: str = REISSUE_HINT) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CofeError(f"{source} is not a PEM certificate", hint=hint) from None


def certificate_or_none(cert_pem: bytes) -> x509.Certificate | None:
    """The certificate, or None where the bytes are not a PEM certificate (for scans that skip such files)."""
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None


def parse_private_key(key_pem: bytes, source: str = "the private key", hint: str = REISSUE_HINT) -> rsa.RSAPrivateKey:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CofeError(f"{source} is not an unencrypted PEM private key", hint=hint) from None


def parse_csr(csr_pem: bytes, message: str, hint: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CofeError(message, hint=hint) from None


def parse_chain(chain_pem: bytes, hint: str = _CHAIN_HINT) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise CofeError("the CA chain is not PEM certificates", hint=hint) from None


def split_chain(chain: list[x509.Certificate]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(roots, intermediates): the self-signed certificates of a chain, and the others."""
    roots = [cert for cert in chain if cert.subject == cert.issuer]
    return roots, [cert for cert in chain if cert.subject != cert.issuer]


def chain_root(chain_pem: bytes) -> x509.Certificate:
    hint = "the chain must be the CA's cert_chain.crt"
    roots, _ = split_chain(parse_chain(chain_pem, hint))
    if len(roots) != 1:
        raise CofeError(f"the CA chain holds {len(roots)} root certificates, not 1", hint=hint)
    return roots[0]


def chain_signers(chain_pem: bytes, hint: str = _CHAIN_HINT) -> list[x509.Certificate]:
    """The certificates of a chain that sign leaves and CRLs: its signing CA (the root only when alone)."""
    chain = parse_chain(chain_pem, hint)
    _, intermediates = split_chain(chain)
    return intermediates or chain


# ---------------------------------------------------------------- names and fingerprints


def common_names(name: x509.Name) -> list[str]:
    return [str(attribute.value) for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def common_name(name: x509.Name) -> str:
    """The first common name, or "" where there is none."""
    names = common_names(name)
    return names[0] if names else ""


def san_names(extensions: x509.Extensions) -> list[str]:
    """The DNS names, then the IP addresses, of a certificate's or request's subject alternative names."""
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def same_host(a: str, b: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower().rstrip(".") == b.lower().rstrip(".")


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as cofe prints it everywhere (`AB:CD:...`)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def chain_root_fingerprint(chain_pem: bytes) -> str:
    return certificate_fingerprint(chain_root(chain_pem))


@dataclass
class CertInfo:
    common_name: str
    san_dns: list[str]
    san_ips: list[str]
    not_before: datetime
    not_after: datetime
    issuer_common_name: str
    fingerprint: str


def describe_certificate(cert_pem: bytes) -> CertInfo:
    cert = parse_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_dns = san.get_values_for_type(x509.DNSName)
        san_ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        san_dns, san_ips = [], []
    return CertInfo(
        common_name=common_name(cert.subject),
        san_dns=san_dns,
        san_ips=san_ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer_common_name=common_name(cert.issuer),
        fingerprint=certificate_fingerprint(cert),
    )


# ---------------------------------------------------------------- who issued it, whose key it holds


def directly_issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer` signed `cert` (name and signature); a wrong issuer, signature or key type is False."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def issued_by_chain(cert: x509.Certificate, chain_pem: bytes | None) -> bool:
    """True if the signing CA of `chain_pem` signed `cert`; False without a readable chain."""
    if chain_pem is None:
        return False
    try:
        signers = chain_signers(chain_pem)
    except CofeError:
        return False
    return any(directly_issued(cert, signer) for signer in signers)


def same_public_key(a, b) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def check_key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    return same_public_key(parse_private_key(key_pem).public_key(), parse_certificate(cert_pem).public_key())


def verify_issued_by(cert_pem: bytes, chain_pem: bytes) -> None:
    """Raise CofeError unless the cert chains to the root in chain_pem and is fit for its TLS role."""
    leaf = parse_certificate(cert_pem)
    roots, intermediates = split_chain(parse_chain(chain_pem))
    if not roots:
        raise CofeError("the CA chain holds no root certificate", hint=_CHAIN_HINT)
    policy = PolicyBuilder().store(Store(roots))
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CofeError(
            f"certificate {common_name(leaf.subject)!r} lacks subject alternative names or extended key usage",
            hint=REISSUE_HINT,
        ) from None
    try:
        host_names = [entry for entry in san if isinstance(entry, HOST_NAME_TYPES)]
        if ExtendedKeyUsageOID.SERVER_AUTH in usages and host_names:
            # Checked as a TLS client would: against the server's first name.
            policy.build_server_verifier(host_names[0]).verify(leaf, intermediates)
        else:
            policy.build_client_verifier().verify(leaf, intermediates)
    except VerificationError as error:
        raise CofeError(
            f"certificate {common_name(leaf.subject)!r} is not valid under this CA: {error}", hint=REISSUE_HINT
        ) from None
