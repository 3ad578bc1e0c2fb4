"""The federation's PKI: a root + signing CA and the TLS certificates it issues."""

from cofe_cli.pki.authority import (
    DEFAULT_VALIDITY_DAYS,
    CertificateAuthority,
    IssuedCert,
    make_private_key_and_csr,
)
from cofe_cli.pki.x509 import CertInfo, check_key_matches_cert, describe_certificate, verify_issued_by

__all__ = [
    "DEFAULT_VALIDITY_DAYS",
    "CertificateAuthority",
    "CertInfo",
    "IssuedCert",
    "check_key_matches_cert",
    "describe_certificate",
    "make_private_key_and_csr",
    "verify_issued_by",
]
