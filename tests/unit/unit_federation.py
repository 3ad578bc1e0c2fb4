"""A federation on disk as `cofe init` leaves it (plans/ and the workspaces), made without torch:
no GaNDLF check, and a few stand-in bytes as the initial model (recorded in federation.yaml as
`cofe init` records the real one). Shared by the unit tests of kits, requests and doctor."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, plan_hash
from cofe_cli.pki import CertificateAuthority
from cofe_cli.pki.workspace_certs import CertPaths
from cofe_cli.plan.builder import INIT_STATE_PATH, PlanOptions, build_plan, dump_yaml
from cofe_cli.plan.workspaces import INIT_MODEL, CollaboratorData, build_federation

INIT_MODEL_BYTES = b"\x08\x01initial-model-bytes"


def gandlf_config(channels: int = 1) -> dict:
    return {
        "model": {"architecture": "resunet", "dimension": 3, "final_layer": "sigmoid", "class_list": [0, 1],
                  "num_channels": channels, "base_filters": 4},
        "patch_size": [16, 16, 16],
        "loss_function": "dc",
        "metrics": ["dice"],
    }


def write_federation(root: Path, *, config: dict, address: str, port: int = 50051, rounds: int = 2,
                     collaborators: list[CollaboratorData], name: str = "unit-fed",
                     versions: dict | None = None) -> FederationLayout:
    plan_yaml = dump_yaml(build_plan(config, PlanOptions(rounds=rounds, aggregator_address=address, aggregator_port=port)))
    manifest = Manifest(name=name, collaborators=tuple(c.name for c in collaborators), rounds=rounds,
                        aggregator_address=address, aggregator_port=port, algorithm="fedavg",
                        plan_sha384=plan_hash(plan_yaml), versions=versions or {"cofe": "test"},
                        init_model_sha384=hashlib.sha384(INIT_MODEL_BYTES).hexdigest())
    layout = FederationLayout(root)
    build_federation(layout, plan_yaml, config, manifest, collaborators)
    for model in (layout.plans / INIT_MODEL, layout.workspace(AGGREGATOR) / INIT_STATE_PATH):
        model.write_bytes(INIT_MODEL_BYTES)
    return layout


EXPIRED = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def expired_copy(paths: CertPaths, ca: CertificateAuthority, not_after: datetime) -> bytes:
    """The participant's certificate as the CA would have signed it for its key, but valid until `not_after`."""
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    current = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    builder = (x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca.signing_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_after - timedelta(days=365)).not_valid_after(not_after))
    for extension in current.extensions:
        if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(ca._signing_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)
