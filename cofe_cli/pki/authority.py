"""A two-level CA (root -> signing CA -> leaf) laid out and signed the way OpenFL's own PKI is.

RSA-3072 keys and SHA-384 signatures as OpenFL uses; the files feed gRPC mutual TLS directly.
Only stdlib and `cryptography` here: this module must stay cheap to import.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cofe_cli.errors import CofeError
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.participant import CHAIN_FILE
from cofe_cli.pki.x509 import (
    HOST_NAME_TYPES,
    certificate_fingerprint,
    common_name,
    directly_issued,
    parse_certificate,
    parse_csr,
    parse_private_key,
    same_public_key,
)

# A study must not expire mid-way; OpenFL's 365 days is too short for a multi-site study.
DEFAULT_VALIDITY_DAYS = 3 * 365
MAX_VALIDITY_DAYS = 30 * 365

ROOT_CERT = "root-ca.crt"
SIGNING_CERT = "signing-ca.crt"
CHAIN = CHAIN_FILE  # ca/cert_chain.crt: the same file every workspace's cert/ holds
ROOT_KEY = "private/root-ca.key"
SIGNING_KEY = "private/signing-ca.key"
_CA_FILES = (ROOT_CERT, SIGNING_CERT, CHAIN, ROOT_KEY, SIGNING_KEY)

# Sites' clocks differ; a certificate must already be valid when it arrives at a slower one.
_CLOCK_SKEW = timedelta(hours=1)
_KEY_BITS = 3072
_HASH = hashes.SHA384
_RECREATE_HINT = "recreate it with `cofe certify --force`; every certificate it signed will stop working"


@dataclass
class IssuedCert:
    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        atomic_write_bytes(Path(key_path), self.key_pem, mode=0o600)
        atomic_write_bytes(Path(cert_path), self.cert_pem)


class CertificateAuthority:
    def __init__(
        self,
        ca_dir: Path,
        root_cert: x509.Certificate,
        signing_cert: x509.Certificate,
        signing_key: rsa.RSAPrivateKey,
    ):
        self.ca_dir = Path(ca_dir)
        self.root_cert = root_cert
        self.signing_cert = signing_cert
        self._signing_key = signing_key

    @staticmethod
    def exists(ca_dir: Path) -> bool:
        """True if any CA file is there: a partial CA must not be overwritten silently either."""
        return any((Path(ca_dir) / name).exists() for name in _CA_FILES)

    @classmethod
    def create(
        cls,
        ca_dir: Path,
        *,
        force: bool = False,
        validity_days: int = DEFAULT_VALIDITY_DAYS,
        name: str = "cofe",
    ) -> CertificateAuthority:
        ca_dir = Path(ca_dir)
        if not force and cls.exists(ca_dir):
            raise CofeError(
                f"a CA already exists in {ca_dir}",
                hint="use --force to replace it; every certificate it signed will stop working",
            )
        check_validity_days(validity_days)
        root_key = _new_key()
        root_cert = _certificate(
            subject=_name(f"{name} Root CA"),
            public_key=root_key.public_key(),
            issuer=None,
            issuer_key=root_key,
            validity_days=validity_days,
            extensions=[
                (x509.BasicConstraints(ca=True, path_length=1), True),
                (_key_usage(key_cert_sign=True, crl_sign=True), True),
            ],
        )
        signing_key = _new_key()
        signing_cert = _certificate(
            subject=_name(f"{name} Signing CA"),
            public_key=signing_key.public_key(),
            issuer=root_cert,
            issuer_key=root_key,
            validity_days=validity_days,
            extensions=[
                (x509.BasicConstraints(ca=True, path_length=0), True),
                (_key_usage(key_cert_sign=True, crl_sign=True), True),
            ],
        )
        ca = cls(ca_dir, root_cert, signing_cert, signing_key)

        private_dir = ca_dir / "private"
        private_dir.mkdir(parents=True, exist_ok=True)
        private_dir.chmod(0o700)  # explicit: mkdir's mode is filtered by the umask
        # Everything is generated before the first write, so a failure leaves the old CA intact.
        atomic_write_bytes(ca_dir / ROOT_KEY, _key_pem(root_key), mode=0o600)
        atomic_write_bytes(ca_dir / SIGNING_KEY, _key_pem(signing_key), mode=0o600)
        atomic_write_bytes(ca_dir / ROOT_CERT, _cert_pem(root_cert))
        atomic_write_bytes(ca_dir / SIGNING_CERT, _cert_pem(signing_cert))
        atomic_write_bytes(ca_dir / CHAIN, ca.chain_pem())
        return ca

    @classmethod
    def load(cls, ca_dir: Path) -> CertificateAuthority:
        ca_dir = Path(ca_dir)
        if not cls.exists(ca_dir):
            raise CofeError(f"no CA in {ca_dir}", hint="run `cofe certify` first")
        missing = [name for name in _CA_FILES if not (ca_dir / name).is_file()]
        if missing:
            raise CofeError(f"the CA in {ca_dir} is incomplete: {', '.join(missing)} missing", hint=_RECREATE_HINT)
        root_cert, signing_cert = (
            parse_certificate((ca_dir / name).read_bytes(), str(ca_dir / name), _RECREATE_HINT)
            for name in (ROOT_CERT, SIGNING_CERT)
        )
        root_key, signing_key = (
            parse_private_key((ca_dir / name).read_bytes(), str(ca_dir / name), _RECREATE_HINT)
            for name in (ROOT_KEY, SIGNING_KEY)
        )
        # Files from two different CAs (a crash mid --force, a hand copy) must not sign anything.
        consistent = (
            same_public_key(root_key.public_key(), root_cert.public_key())
            and same_public_key(signing_key.public_key(), signing_cert.public_key())
            and directly_issued(signing_cert, root_cert)
        )
        if not consistent:
            raise CofeError(f"the CA files in {ca_dir} do not belong together", hint=_RECREATE_HINT)
        return cls(ca_dir, root_cert, signing_cert, signing_key)

    def chain_pem(self) -> bytes:
        return _cert_pem(self.signing_cert) + _cert_pem(self.root_cert)

    def root_fingerprint(self) -> str:
        return certificate_fingerprint(self.root_cert)

    def issued(self, cert: x509.Certificate) -> bool:
        """True if this CA's signing CA signed `cert` (a certificate of another CA, or changed, is not)."""
        return directly_issued(cert, self.signing_cert)

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return builder.sign(self._signing_key, _HASH())

    def issue_server_cert(
        self,
        address: str,
        *,
        extra_names: Sequence[str] = (),
        validity_days: int = DEFAULT_VALIDITY_DAYS,
    ) -> IssuedCert:
        names = [address, *extra_names]
        if address == "localhost":
            # Clients often dial 127.0.0.1 or ::1 for a local aggregator; the name check must pass.
            names += ["127.0.0.1", "::1"]
        key = _new_key()
        cert = self._issue_leaf(address, key.public_key(), _subject_alt_names(names), "server", validity_days)
        return IssuedCert(_cert_pem(cert), _key_pem(key))

    def issue_client_cert(self, name: str, *, validity_days: int = DEFAULT_VALIDITY_DAYS) -> IssuedCert:
        key = _new_key()
        cert = self._issue_leaf(name, key.public_key(), _subject_alt_names([name]), "client", validity_days)
        return IssuedCert(_cert_pem(cert), _key_pem(key))

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        kind: Literal["server", "client"],
        expected_name: str | None = None,
        validity_days: int = DEFAULT_VALIDITY_DAYS,
    ) -> bytes:
        if kind not in ("server", "client"):
            raise ValueError(f"kind must be 'server' or 'client', not {kind!r}")
        csr = parse_csr(csr_pem, "not a PEM certificate signing request", "pass the .csr file the site generated")
        if not csr.is_signature_valid:
            raise CofeError(
                "the certificate request's signature does not verify (changed after it was made?)",
                hint="generate a new request at the site",
            )
        requested_name = common_name(csr.subject)
        if not requested_name:
            raise CofeError("the certificate request has no common name", hint="generate a new request at the site")
        if expected_name is not None and requested_name != expected_name:
            raise CofeError(
                f"the certificate request is for {requested_name!r}, expected {expected_name!r}",
                hint="check which site sent this request",
            )
        public_key = csr.public_key()
        _check_public_key(public_key)
        san = _subject_alt_names([requested_name])
        if kind == "server":
            try:
                requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                requested = []
            # Host names and IPs only: a site has no business getting e-mail or URI identities.
            host_names = [entry for entry in requested if isinstance(entry, HOST_NAME_TYPES)]
            san = x509.SubjectAlternativeName(host_names) if host_names else san
        # Only the SAN comes from the request (OpenFL also drops the CSR's key usages): the CA sets the rest.
        return _cert_pem(self._issue_leaf(requested_name, public_key, san, kind, validity_days))

    def _issue_leaf(
        self,
        leaf_name: str,
        public_key,
        san: x509.SubjectAlternativeName,
        kind: Literal["server", "client"],
        validity_days: int,
    ) -> x509.Certificate:
        check_validity_days(validity_days)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if kind == "server":
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        return _certificate(
            subject=_name(leaf_name),
            public_key=public_key,
            issuer=self.signing_cert,
            issuer_key=self._signing_key,
            validity_days=validity_days,
            extensions=[
                (x509.BasicConstraints(ca=False, path_length=None), True),
                (_key_usage(digital_signature=True, key_encipherment=True), True),
                (x509.ExtendedKeyUsage(usages), False),
                (san, False),
            ],
        )


def make_private_key_and_csr(name: str, *, san: Sequence[str] = ()) -> tuple[bytes, bytes]:
    """A site's key and the request to send to the CA: the key never leaves the site."""
    key = _new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(name))
    if san:
        builder = builder.add_extension(_subject_alt_names(san), critical=False)
    csr = builder.sign(key, _HASH())
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def _certificate(
    *,
    subject: x509.Name,
    public_key,
    issuer: x509.Certificate | None,
    issuer_key,
    validity_days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """Sign a certificate; issuer=None makes it self-signed (the root)."""
    now = datetime.now(timezone.utc)
    not_after = now + timedelta(days=validity_days)
    if issuer is not None:
        # A certificate that outlives its CA would only look valid; say the true end date.
        not_after = min(not_after, issuer.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, _HASH())


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    fields = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    )  # fmt: skip
    return x509.KeyUsage(**{field: enabled.get(field, False) for field in fields})


def _subject_alt_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # de-duplicated, order kept
        if not name or name != name.strip():
            raise CofeError(f"{name!r} is not a host name or IP address", hint="check the address and names given")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            try:
                entries.append(x509.DNSName(name))
            except ValueError as error:  # e.g. non-ASCII: must be given as an IDNA A-label
                raise CofeError(f"{name!r} is not a valid DNS name: {error}", hint="use the punycode form") from None
    return x509.SubjectAlternativeName(entries)


def _name(subject_name: str) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_name)])
    except ValueError as error:  # length limits of X.509: 1-64 characters
        hint = "use 1 to 64 characters"
        raise CofeError(f"{subject_name!r} cannot be a certificate name: {error}", hint=hint) from None


def check_validity_days(validity_days: int) -> None:
    """Refuse a lifetime before any key is made: 0 or less is no certificate, and far beyond a study's
    length it is a typo (and past year 9999 no date can hold it)."""
    if not 1 <= validity_days <= MAX_VALIDITY_DAYS:
        raise CofeError(f"--validity-days {validity_days} is out of range: a certificate lives 1 to "
                        f"{MAX_VALIDITY_DAYS} days (30 years)",
                        hint=f"e.g. --validity-days {DEFAULT_VALIDITY_DAYS} (3 years, the default)")


def _check_public_key(public_key) -> None:
    # The TLS stacks (and cryptography's own verifier) refuse weaker keys later, with worse errors.
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
        hint = "generate a new request at the site"
        raise CofeError("the certificate request's key is not RSA >= 2048 bits or EC", hint=hint)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
