"""`cofe certify` (mostly without the CLI): the CA and every participant's files where OpenFL looks for them; no torch.

RSA-3072 key generation costs about half a second per key, so one certified federation is made per
module and the tests that change files work on a copy of it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import cli_assertions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from unit_federation import EXPIRED, expired_copy

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.pki import CertificateAuthority, check_key_matches_cert, describe_certificate, verify_issued_by
from cofe_cli.pki.local_issuing import certify_locally
from cofe_cli.participant import Participant
from cofe_cli.pki.workspace_certs import CertPaths, participant_cert_paths, require_certificates

COLLABORATORS = ("hospital_a", "hospital_b")
ADDRESS = "localhost"


def make_federation(root: Path, collaborators: tuple[str, ...] = COLLABORATORS) -> tuple[FederationLayout, Manifest]:
    """The layout `cofe init` leaves, as far as certify cares: a manifest and empty workspaces."""
    manifest = Manifest(name="unit-fed", collaborators=collaborators, rounds=2, aggregator_address=ADDRESS,
                        aggregator_port=50051, algorithm="fedavg", plan_sha384="0" * 96, versions={"cofe": "test"})
    layout = FederationLayout(root)
    layout.plans.mkdir(parents=True)
    layout.manifest_file.write_text(yaml.safe_dump(manifest.to_dict(), sort_keys=False))
    for participant in (AGGREGATOR, *collaborators):
        for sub in ("plan", "cert", "save", "logs"):
            (layout.workspace(participant) / sub).mkdir(parents=True)
    return layout, layout.load_manifest()


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    layout, manifest = make_federation(tmp_path_factory.mktemp("certify") / "fed")
    actions = certify_locally(layout, manifest)
    return layout, manifest, actions


@pytest.fixture
def copy_of_certified(certified, tmp_path: Path) -> tuple[FederationLayout, Manifest]:
    layout, _, _ = certified
    shutil.copytree(layout.root, tmp_path / "fed")  # copy2 keeps the 0600 modes
    copied = FederationLayout(tmp_path / "fed")
    return copied, copied.load_manifest()


# ---------------------------------------------------------------- a first certify


def test_first_run_creates_the_ca_and_issues_everyone(certified) -> None:
    _, _, actions = certified
    assert actions == [("CA", "created"), (AGGREGATOR, "issued"), ("hospital_a", "issued"), ("hospital_b", "issued")]


def test_ca_files_and_modes(certified) -> None:
    layout = certified[0]
    for name in ("root-ca.crt", "signing-ca.crt", "cert_chain.crt", "private/root-ca.key", "private/signing-ca.key"):
        assert (layout.ca / name).is_file(), name
    assert mode(layout.ca / "private") == 0o700
    assert mode(layout.ca / "private" / "root-ca.key") == mode(layout.ca / "private" / "signing-ca.key") == 0o600


def test_every_workspace_holds_the_ca_chain(certified) -> None:
    layout, manifest, _ = certified
    chain = CertificateAuthority.load(layout.ca).chain_pem()
    for participant in (AGGREGATOR, *manifest.collaborators):
        assert (layout.workspace(participant) / "cert" / "cert_chain.crt").read_bytes() == chain


def test_aggregator_server_certificate(certified) -> None:
    layout, _, _ = certified
    cert_dir = layout.workspace(AGGREGATOR) / "cert"
    cert, key = cert_dir / "server" / f"agg_{ADDRESS}.crt", cert_dir / "server" / f"agg_{ADDRESS}.key"
    info = describe_certificate(cert.read_bytes())
    assert info.common_name == ADDRESS
    assert ADDRESS in info.san_dns and "127.0.0.1" in info.san_ips
    assert info.issuer_common_name == "unit-fed Signing CA"
    verify_issued_by(cert.read_bytes(), (cert_dir / "cert_chain.crt").read_bytes())
    assert check_key_matches_cert(key.read_bytes(), cert.read_bytes())
    assert mode(key) == 0o600
    assert not (cert_dir / "client").exists(), "the aggregator holds no collaborator's key"


@pytest.mark.parametrize("name", COLLABORATORS)
def test_collaborator_client_certificate(certified, name: str) -> None:
    layout, _, _ = certified
    cert_dir = layout.workspace(name) / "cert"
    cert, key = cert_dir / "client" / f"col_{name}.crt", cert_dir / "client" / f"col_{name}.key"
    info = describe_certificate(cert.read_bytes())
    assert info.common_name == name and info.san_dns == [name]
    verify_issued_by(cert.read_bytes(), (cert_dir / "cert_chain.crt").read_bytes())
    assert check_key_matches_cert(key.read_bytes(), cert.read_bytes())
    assert mode(key) == 0o600
    # A site holds its own key only.
    assert sorted(p.name for p in (cert_dir / "client").iterdir()) == [f"col_{name}.crt", f"col_{name}.key"]
    assert not (cert_dir / "server").exists()


def test_require_certificates_passes_once_certified(certified) -> None:
    layout, manifest, _ = certified
    for participant in (AGGREGATOR, *manifest.collaborators):
        require_certificates(layout, manifest, participant)
        assert participant_cert_paths(layout, manifest, participant).present()


# ---------------------------------------------------------------- running it again


def test_second_run_keeps_everything_byte_identical(copy_of_certified) -> None:
    layout, manifest = copy_of_certified
    before = snapshot(layout.root)
    actions = certify_locally(layout, manifest)
    assert actions == [("CA", "kept"), (AGGREGATOR, "kept"), ("hospital_a", "kept"), ("hospital_b", "kept")]
    assert snapshot(layout.root) == before


def test_a_missing_certificate_without_its_key_is_issued_and_the_rest_kept(copy_of_certified) -> None:
    layout, manifest = copy_of_certified
    paths = participant_cert_paths(layout, manifest, "hospital_b")
    paths.cert.unlink()
    paths.key.unlink()
    before = snapshot(layout.root)
    actions = certify_locally(layout, manifest)
    assert actions == [("CA", "kept"), (AGGREGATOR, "kept"), ("hospital_a", "kept"), ("hospital_b", "issued")]
    after = snapshot(layout.root)
    assert {k: v for k, v in after.items() if "hospital_b" not in k} == {k: v for k, v in before.items() if "hospital_b" not in k}
    verify_issued_by(paths.cert.read_bytes(), paths.chain.read_bytes())


def _drop_cert(paths, other, ca) -> None:
    paths.cert.unlink()


def _foreign_key(paths, other, ca) -> None:
    paths.key.write_bytes(other.key.read_bytes())


def _garbage_cert(paths, other, ca) -> None:
    paths.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")


def _cert_of_another_site(paths, other, ca) -> None:
    paths.cert.write_bytes(other.cert.read_bytes())


def _unreadable_key(paths, other, ca) -> None:
    paths.key.write_bytes(b"garbage")


def _tampered_cert(paths, other, ca) -> None:
    """The certificate's bytes changed after the CA signed it (here: one bit of its signature)."""
    der = bytearray(x509.load_pem_x509_certificate(paths.cert.read_bytes()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1
    paths.cert.write_bytes(x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM))


def _expired_cert(paths, other, ca) -> None:
    paths.cert.write_bytes(expired_copy(paths, ca, EXPIRED))


@pytest.mark.parametrize(("damage", "problem"), [
    (_drop_cert, "hospital_b has a private key (" ),
    (_foreign_key, "hospital_b has a certificate that does not match its private key"),
    (_garbage_cert, "hospital_b has a certificate file that is not a PEM certificate"),
    (_cert_of_another_site, "hospital_b has a certificate issued to hospital_a, not to hospital_b"),
    (_unreadable_key, "hospital_b has a key or certificate that cannot be used"),
    (_tampered_cert, "hospital_b has a certificate that this federation's CA did not sign"),
    (_expired_cert, "hospital_b has a certificate that expired on 2024-03-01 12:00 UTC"),
], ids=["key-without-cert", "foreign-key", "garbage-cert", "cert-of-another-site", "unreadable-key", "tampered-cert",
        "expired-cert"])
def test_a_key_without_a_valid_certificate_is_named_and_reissue_is_offered(copy_of_certified, damage, problem) -> None:
    """It used to say "already has a private key that this CA did not certify" and suggest --force,
    which replaces the CA and breaks every other site."""
    layout, manifest = copy_of_certified
    paths = participant_cert_paths(layout, manifest, "hospital_b")
    damage(paths, participant_cert_paths(layout, manifest, "hospital_a"), CertificateAuthority.load(layout.ca))
    before = snapshot(layout.root)
    with pytest.raises(CofeError) as refused:
        certify_locally(layout, manifest)
    assert refused.value.message.startswith(problem), refused.value.message
    assert f"cofe certify --dir {layout.root} --reissue hospital_b" in refused.value.hint
    assert snapshot(layout.root) == before, "a refused certify changes nothing"


@pytest.mark.parametrize("damage", [_expired_cert, _tampered_cert], ids=["expired", "tampered"])
def test_reissue_replaces_one_certificate_and_keeps_the_ca_and_the_others(copy_of_certified, damage) -> None:
    layout, manifest = copy_of_certified
    ca = CertificateAuthority.load(layout.ca)
    paths = participant_cert_paths(layout, manifest, "hospital_b")
    damage(paths, participant_cert_paths(layout, manifest, "hospital_a"), ca)
    old_cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    before = snapshot(layout.root)

    actions = certify_locally(layout, manifest, reissue=["hospital_b"])

    assert actions == [("CA", "kept"), (AGGREGATOR, "kept"), ("hospital_a", "kept"), ("hospital_b", "re-issued")]
    after = snapshot(layout.root)
    untouched = {name: data for name, data in before.items() if "hospital_b" not in name}
    assert {name: after[name] for name in untouched} == untouched, "the CA and the other participants are as they were"
    verify_issued_by(paths.cert.read_bytes(), paths.chain.read_bytes())
    assert check_key_matches_cert(paths.key.read_bytes(), paths.cert.read_bytes()) and mode(paths.key) == 0o600
    # The replaced certificate, if this CA signed it, stays on record: status lists it, revoke can revoke it.
    archived = list((layout.ca / "issued" / "archive").glob("hospital_b.*.crt"))
    assert [path.name for path in archived] == ([f"hospital_b.{old_cert.serial_number:x}.crt"]
                                                if damage is _expired_cert else [])
    assert {action for _, action in certify_locally(layout, manifest)} == {"kept"}


def test_the_cli_names_an_expired_certificate_and_reissues_only_it(copy_of_certified) -> None:
    layout, manifest = copy_of_certified
    ca = CertificateAuthority.load(layout.ca)
    _expired_cert(participant_cert_paths(layout, manifest, "hospital_b"), None, ca)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}

    def cofe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cofe_cli", "certify", "--dir", str(layout.root), *args], env=env,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    cli_assertions.refused(cofe(), "hospital_b has a certificate that expired on 2024-03-01 12:00 UTC")
    assert "--reissue hospital_b" in cofe().stderr
    done = cofe("--reissue", "hospital_b")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"│ hospital_b\s+│ re-issued", done.stdout) and re.search(r"│ CA\s+│ kept", done.stdout), done.stdout
    assert CertificateAuthority.load(layout.ca).root_fingerprint() == ca.root_fingerprint()


def test_reissue_refusals(copy_of_certified, tmp_path: Path) -> None:
    layout, manifest = copy_of_certified
    before = snapshot(layout.root)
    with pytest.raises(CofeError, match="--reissue keeps the CA and --force replaces it"):
        certify_locally(layout, manifest, force=True, reissue=["hospital_b"])
    with pytest.raises(CofeError, match="cannot re-issue hospital_z: not a participant"):
        certify_locally(layout, manifest, reissue=["hospital_z"])
    assert snapshot(layout.root) == before
    fresh, fresh_manifest = make_federation(tmp_path / "fresh")
    with pytest.raises(CofeError, match="has no CA to re-issue from"):
        certify_locally(fresh, fresh_manifest, reissue=["hospital_b"])
    assert not fresh.ca.exists()


def test_a_refused_first_certify_changes_nothing(tmp_path: Path) -> None:
    layout, manifest = make_federation(tmp_path / "fed", collaborators=("hospital_a",))
    stray = participant_cert_paths(layout, manifest, "hospital_a").key
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"a key from somewhere else")
    before = snapshot(layout.root)
    with pytest.raises(CofeError, match="already has a private key .* but there is no CA here") as refused:
        certify_locally(layout, manifest)
    assert "--force" in refused.value.hint
    assert snapshot(layout.root) == before


def test_force_replaces_the_ca_and_every_certificate(copy_of_certified) -> None:
    layout, manifest = copy_of_certified
    old_fingerprint = CertificateAuthority.load(layout.ca).root_fingerprint()
    old = snapshot(layout.root)
    # Even a damaged participant is simply re-issued with --force.
    participant_cert_paths(layout, manifest, "hospital_b").cert.unlink()

    actions = certify_locally(layout, manifest, force=True)

    assert actions == [("CA", "created"), (AGGREGATOR, "issued"), ("hospital_a", "issued"), ("hospital_b", "issued")]
    assert CertificateAuthority.load(layout.ca).root_fingerprint() != old_fingerprint
    new = snapshot(layout.root)
    changed = [name for name in old if name.endswith((".crt", ".key"))]
    assert changed and all(new[name][0] != old[name][0] for name in changed if name in new)
    for participant in (AGGREGATOR, *manifest.collaborators):
        paths = participant_cert_paths(layout, manifest, participant)
        verify_issued_by(paths.cert.read_bytes(), paths.chain.read_bytes())
        assert mode(paths.key) == 0o600
    # A second plain run keeps what --force made.
    assert {action for _, action in certify_locally(layout, manifest)} == {"kept"}


# ---------------------------------------------------------------- require_certificates and paths


@pytest.mark.parametrize("participant", [AGGREGATOR, *COLLABORATORS])
def test_require_certificates_before_certify(tmp_path: Path, participant: str) -> None:
    layout, manifest = make_federation(tmp_path / "fed")
    with pytest.raises(CofeError, match=f"{participant} has no certificate yet") as refused:
        require_certificates(layout, manifest, participant)
    assert "cofe certify" in refused.value.hint


@pytest.mark.parametrize("part", ["chain", "cert", "key"])
def test_require_certificates_names_the_missing_file(copy_of_certified, part: str) -> None:
    layout, manifest = copy_of_certified
    missing = getattr(participant_cert_paths(layout, manifest, "hospital_a"), part)
    missing.unlink()
    with pytest.raises(CofeError) as refused:
        require_certificates(layout, manifest, "hospital_a")
    assert str(missing.relative_to(layout.root)) in refused.value.message
    assert "cofe certify" in refused.value.hint
    require_certificates(layout, manifest, "hospital_b")  # the others still pass


def test_aggregator_files_use_the_lowercased_address(tmp_path: Path) -> None:
    paths = CertPaths.of(Participant(AGGREGATOR, tmp_path, tmp_path, "FL.Example.ORG"))
    assert paths.cert == tmp_path / "cert" / "server" / "agg_fl.example.org.crt"
    assert paths.key == tmp_path / "cert" / "server" / "agg_fl.example.org.key"
    assert paths.chain == tmp_path / "cert" / "cert_chain.crt"
