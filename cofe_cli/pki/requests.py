"""Certificate requests between machines: a site's private key never leaves the site.

    site:         cofe certify request   -> key (mode 0600, in the workspace) + <name>.csr.tar.gz
    coordinator:  cofe certify sign      -> <name>-signed.tar.gz (+ a record in ca/issued/<name>.crt)
    site:         cofe certify install   -> the certificate and CA chain where OpenFL looks for them

Archives (gzip-compressed tar, regular files only, fixed member names):

- request `<name>.csr.tar.gz`: `csr.pem` (PKCS#10, PEM) and `request.json`:
  {"format": "cofe-certificate-request", "version": 1, "name": "hospital_a", "role": "collaborator",
   "federation": "...", "plan_sha384": "<hex>", "common_name": "...", "subject_alt_names": [...],
   "created": "<ISO 8601 UTC>", "cofe_version": "..."}
  Its *hash* is the SHA-256 of the CSR's DER bytes, which hold the name and the public key: the
  site reads it out (grouped hex) and the coordinator compares before signing. request.json is
  not covered by the hash; the name and role it claims are checked against the CSR and the plan.
- signed `<name>-signed.tar.gz`: `certificate.crt`, `cert_chain.crt` (signing CA + root) and
  `signed.json`: {"format": "cofe-signed-certificate", "version": 1, "name", "role", "serial"
  (hex), "not_after", "root_fingerprint", "plan_sha384", "request_sha256"}.

`read_archive` is the one way cofe opens an archive that came from elsewhere (kits included):
only regular files with expected names, no absolute paths, no `..`, no links, bounded sizes, the
whole gzip stream read to its end (a truncated or foreign archive is a CofeError).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cofe_cli import __version__
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, check_collaborator_name
from cofe_cli.fsutil import atomic_write_bytes
from cofe_cli.pki.authority import (
    DEFAULT_VALIDITY_DAYS,
    CertificateAuthority,
    check_key_matches_cert,
    make_private_key_and_csr,
    verify_issued_by,
)
from cofe_cli.pki.workspace_certs import CertPaths, issued_by, participant_cert_paths
from cofe_cli.plan.builder import plan_hash
from cofe_cli.plan.workspaces import PLAN_FILE

ROLE_AGGREGATOR = "aggregator"
ROLE_COLLABORATOR = "collaborator"
REQUEST_FORMAT = "cofe-certificate-request"
SIGNED_FORMAT = "cofe-signed-certificate"
FORMAT_VERSION = 1
REQUEST_SUFFIX = ".csr.tar.gz"
SIGNED_SUFFIX = "-signed.tar.gz"
CSR_MEMBER = "csr.pem"
REQUEST_MEMBER = "request.json"
CERT_MEMBER = "certificate.crt"
CHAIN_MEMBER = "cert_chain.crt"
SIGNED_MEMBER = "signed.json"
ISSUED_DIR = "issued"  # under FED/ca: one <name>.crt per participant signed from a request
ARCHIVED_DIR = "archive"  # under FED/ca/issued: earlier certificates replaced with --force

_SMALL = 64 * 1024
_TRAILING_LIMIT = 64 * 1024
_TAR_FRAMING = 1024 * 1024  # headers and padding around the members, beyond their own bytes
_CHUNK = 1024 * 1024
_REQUEST_HINT = "ask the site for the <name>.csr.tar.gz that `cofe certify request` wrote"
_SIGNED_HINT = "ask the coordinator for the <name>-signed.tar.gz that `cofe certify sign` wrote"


def role_of(name: str) -> str:
    return ROLE_AGGREGATOR if name == AGGREGATOR else ROLE_COLLABORATOR


# ---------------------------------------------------------------- archives


@dataclass(frozen=True)
class ArchiveSpec:
    """What an archive of one kind may hold: member name -> most bytes, and which are required.

    Unpacking is bounded three ways, checked while the gzip stream is read (a decompression bomb is
    refused before its bytes are held or written): each member's limit, their sum, and `max_ratio`
    times the archive's size on disk (never less than `ratio_floor`). Members in `streamed` are
    written to a file as they are read, hashed on the way, instead of being held in memory."""

    what: str
    limits: Mapping[str, int]
    required: frozenset[str]
    hint: str
    max_archive_bytes: int = 1024 * 1024
    streamed: frozenset[str] = frozenset()
    max_ratio: int = 16
    ratio_floor: int = 1024 * 1024

    @property
    def folders(self) -> frozenset[str]:
        parents = set()
        for name in self.limits:
            parts = name.split("/")[:-1]
            parents.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return frozenset(parents)

    def unpacked_budget(self, packed_bytes: int) -> int:
        """The most bytes the tar stream inside an archive of `packed_bytes` may unpack to."""
        ceiling = sum(self.limits.values()) + _TAR_FRAMING
        return min(ceiling, max(self.ratio_floor, self.max_ratio * packed_bytes))


@dataclass(frozen=True)
class StreamedMember:
    """A member read straight to a file (it may be too large to hold in memory), and its digests."""

    path: Path
    size: int
    sha256: str
    sha384: str


REQUEST_ARCHIVE = ArchiveSpec("certificate request", {CSR_MEMBER: _SMALL, REQUEST_MEMBER: _SMALL},
                              frozenset({CSR_MEMBER, REQUEST_MEMBER}), _REQUEST_HINT)
SIGNED_ARCHIVE = ArchiveSpec("signed certificate", {CERT_MEMBER: _SMALL, CHAIN_MEMBER: _SMALL, SIGNED_MEMBER: _SMALL},
                             frozenset({CERT_MEMBER, CHAIN_MEMBER, SIGNED_MEMBER}), _SIGNED_HINT)


def _member_name(raw: str, path: Path, spec: ArchiveSpec) -> str:
    if raw.startswith("/") or "\\" in raw or (len(raw) > 1 and raw[1] == ":"):
        raise CofeError(f"{path} holds a member with an absolute path ({raw!r}); refusing to open it", hint=spec.hint)
    parts = raw.split("/")
    if ".." in parts:
        raise CofeError(f"{path} holds a member that points outside the archive ({raw!r}); refusing to open it",
                        hint=spec.hint)
    return "/".join(part for part in parts if part not in ("", "."))


class _BoundedStream:
    """The decompressed tar stream, refusing to yield more than `budget` bytes: tarfile itself reads
    pax headers whole into memory, so the bound must hold below it, not only per member."""

    def __init__(self, raw, budget: int, refuse):
        self._raw, self.budget, self.read_so_far, self._refuse = raw, budget, 0, refuse

    def read(self, size: int = -1) -> bytes:
        room = self.budget - self.read_so_far
        data = self._raw.read(room + 1 if size is None or size < 0 else min(size, room + 1))
        self.read_so_far += len(data)
        if self.read_so_far > self.budget:
            self._refuse()
        return data


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _copy_member(handle, size: int, write) -> None:
    remaining = size
    while remaining:
        chunk = handle.read(min(remaining, _CHUNK))
        if not chunk:
            raise EOFError("member shorter than its header says")
        write(chunk)
        remaining -= len(chunk)


def _stream_member(handle, size: int, target: Path) -> StreamedMember:
    sha256, sha384 = hashlib.sha256(), hashlib.sha384()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:
        def write(chunk: bytes) -> None:
            sha256.update(chunk)
            sha384.update(chunk)
            out.write(chunk)

        _copy_member(handle, size, write)
    return StreamedMember(target, size, sha256.hexdigest(), sha384.hexdigest())


def read_archive(path: Path, spec: ArchiveSpec, *, stream_to: Path | None = None) -> dict[str, bytes | StreamedMember]:
    """Every member of a gzip tar that `spec` allows, checked; nothing is extracted. Members are held
    in memory, except `spec.streamed` ones, which are written under `stream_to` (the caller's folder)."""
    if spec.streamed and stream_to is None:
        raise ValueError(f"a {spec.what} streams members to disk: pass stream_to")
    path = Path(path).expanduser()
    if not path.is_file():
        raise CofeError(f"{spec.what} not found: {path}", hint=spec.hint)
    size = path.stat().st_size
    if size > spec.max_archive_bytes:
        raise CofeError(f"{path} is {size} bytes, too large for a cofe {spec.what}", hint=spec.hint)
    budget = spec.unpacked_budget(size)

    def too_large(detail: str = "") -> None:
        raise CofeError(f"{path} would unpack to more than {_mib(budget)}{detail}, more than a cofe {spec.what} of "
                        f"{_mib(size)} ever holds: refusing it as a decompression bomb", hint=spec.hint)

    members: dict[str, bytes | StreamedMember] = {}
    entries = 0
    try:
        with gzip.open(path, "rb") as unzipped:
            stream = _BoundedStream(unzipped, budget, too_large)
            # Stream mode ("r|"): read front to back once; the gzip layer below is what `budget` bounds.
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    entries += 1
                    if entries > len(spec.limits) + len(spec.folders) + 1:
                        raise CofeError(f"{path} holds more members than a cofe {spec.what} has", hint=spec.hint)
                    name = _member_name(info.name, path, spec)
                    if info.isdir():
                        if name == "" or name in spec.folders:
                            continue
                        raise CofeError(f"{path} is not a cofe {spec.what}: unexpected folder {info.name!r}",
                                        hint=spec.hint)
                    if info.issym() or info.islnk():
                        raise CofeError(f"{path} holds a link ({info.name!r}); a cofe {spec.what} never does",
                                        hint=spec.hint)
                    if not info.isreg():
                        raise CofeError(f"{path} holds a special file ({info.name!r}); a cofe {spec.what} never does",
                                        hint=spec.hint)
                    if name not in spec.limits:
                        raise CofeError(f"{path} is not a cofe {spec.what}: unexpected member {info.name!r}",
                                        hint=spec.hint)
                    if name in members:
                        raise CofeError(f"{path} holds {name!r} twice; refusing to guess which is meant", hint=spec.hint)
                    if info.size > spec.limits[name]:
                        raise CofeError(f"{path}: member {name!r} is too large ({info.size} bytes)", hint=spec.hint)
                    if stream.read_so_far + info.size > budget:
                        too_large(f" ({name!r} alone is {_mib(info.size)})")
                    handle = tar.extractfile(info)
                    if name in spec.streamed:
                        members[name] = _stream_member(handle, info.size, stream_to / name)
                    else:
                        buffer = io.BytesIO()
                        _copy_member(handle, info.size, buffer.write)
                        members[name] = buffer.getvalue()
                # Read the gzip stream to its end: a cut-off trailer or a bad CRC shows only there. What
                # follows the last member is tar padding (under one 10 KiB record), never more.
                trailing = 0
                while chunk := tar.fileobj.read(64 * 1024):
                    trailing += len(chunk)
                    if trailing > _TRAILING_LIMIT:
                        raise CofeError(f"{path} carries data after its last member; not a cofe {spec.what}",
                                        hint=spec.hint)
    except CofeError:
        raise
    except PermissionError:
        raise CofeError(f"cannot read {path}: permission denied", hint="check the file's permissions") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise CofeError(f"{path} is not a readable cofe {spec.what} (truncated or not a .tar.gz: {error})",
                        hint=spec.hint) from None
    missing = sorted(spec.required - members.keys())
    if missing:
        raise CofeError(f"{path} is not a complete cofe {spec.what}: {', '.join(missing)} missing (truncated?)",
                        hint=spec.hint)
    return members


def archive_bytes(members: Mapping[str, bytes]) -> bytes:
    """A gzip tar of regular files, owned by nobody in particular; refuses to carry any private key."""
    for name, data in members.items():
        if b"PRIVATE KEY" in data:  # defence in depth: archives built here never hold a key
            raise CofeError(f"refusing to put {name!r} into an archive: it contains a private key",
                            hint="this is a bug in cofe; please report it")
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive(path: Path, members: Mapping[str, bytes], *, force: bool) -> Path:
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise CofeError(f"{path} already exists", hint="pass --force to replace it, or -o another file name")
    if path.is_dir():
        raise CofeError(f"{path} is a folder", hint="give -o a file name")
    atomic_write_bytes(path, archive_bytes(members), mode=0o644)
    return path


def load_json_member(members: Mapping[str, bytes], name: str, *, expected_format: str, source: Path,
                     hint: str) -> dict:
    try:
        data = json.loads(members[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CofeError(f"{source}: {name} is not valid JSON ({error})", hint=hint) from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise CofeError(f"{source} is not a {expected_format} ({name} says otherwise)", hint=hint)
    if data.get("version") != FORMAT_VERSION:
        raise CofeError(f"{source} has format version {data.get('version')!r}; this cofe reads {FORMAT_VERSION}",
                        hint="use the same cofe version at the coordinator and the site")
    return data


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- hashes and fingerprints


def group_hex(digits: str, size: int = 4) -> str:
    """`1a2b3c4d...` as `1A2B 3C4D ...`: easy to read out on the phone."""
    digits = digits.upper()
    return " ".join(digits[i:i + size] for i in range(0, len(digits), size))


def normalise_hex(value: str) -> str:
    return "".join(ch for ch in value.lower() if ch not in " :-_\t\n")


def csr_hash(csr_pem: bytes) -> str:
    """SHA-256 (hex) of the request's DER bytes: what the site reads out and the coordinator checks."""
    csr = _load_csr(csr_pem)
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


def chain_root(chain_pem: bytes) -> x509.Certificate:
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise CofeError("the CA chain is not PEM certificates", hint="the chain must be the CA's cert_chain.crt") from None
    roots = [cert for cert in chain if cert.subject == cert.issuer]
    if len(roots) != 1:
        raise CofeError(f"the CA chain holds {len(roots)} root certificates, not 1",
                        hint="the chain must be the CA's cert_chain.crt")
    return roots[0]


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as CertificateAuthority.root_fingerprint writes it (`AB:CD:...`)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def chain_root_fingerprint(chain_pem: bytes) -> str:
    return certificate_fingerprint(chain_root(chain_pem))


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CofeError("the request holds no PEM certificate signing request", hint=_REQUEST_HINT) from None


def _load_cert(cert_pem: bytes, source: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CofeError(f"{source} is not a PEM certificate", hint=_SIGNED_HINT) from None


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _san_names(extensions: x509.Extensions) -> list[str]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _same_host(a: str, b: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower().rstrip(".") == b.lower().rstrip(".")


# ---------------------------------------------------------------- which participant, here


def check_plan_unchanged(layout: FederationLayout, manifest: Manifest) -> None:
    plan_file = layout.plans / PLAN_FILE
    try:
        text = plan_file.read_text(encoding="utf-8")
    except OSError:
        raise CofeError(f"{plan_file} is missing", hint="import the site kit again (`cofe import KIT --force`)") from None
    if plan_hash(text) != manifest.plan_sha384:
        raise CofeError(f"{plan_file} was changed: its hash is not the federation's plan hash",
                        hint="import the kit again (`cofe import KIT --dir DIR --force`) or ask the coordinator for a new one")


def local_participant(layout: FederationLayout, manifest: Manifest, name: str | None) -> str:
    """The participant whose workspace is in this directory: `name`, or the only one there."""
    known = (AGGREGATOR, *manifest.collaborators)
    if name is not None:
        if name != AGGREGATOR:
            check_collaborator_name(name)
            manifest.require_collaborator(name)
        if not layout.workspace(name).is_dir():
            raise CofeError(f"{layout.root} holds no workspace for {name}",
                            hint=f"import {name}'s site kit first: `cofe import KIT --dir {layout.root}`")
        return name
    present = [p for p in known if layout.workspace(p).is_dir()]
    if not present:
        raise CofeError(f"{layout.root} holds no participant's workspace",
                        hint=f"import the site kit first: `cofe import KIT --dir {layout.root}`")
    if len(present) > 1:
        raise CofeError(f"{layout.root} holds several participants ({', '.join(present)}); which one?",
                        hint="name it, e.g. `cofe certify request hospital_a --dir DIR`")
    return present[0]


def csr_path(paths: CertPaths) -> Path:
    return paths.key.with_suffix(".csr")


# ---------------------------------------------------------------- site: make the key and the request


@dataclass
class RequestResult:
    name: str
    role: str
    key: Path
    csr: Path
    archive: Path
    sha256: str
    subject_alt_names: list[str]
    replaced_certificate: bool = False


def create_request(layout: FederationLayout, manifest: Manifest, name: str | None, *, out: Path | None = None,
                   extra_san: Sequence[str] = (), force: bool = False) -> RequestResult:
    name = local_participant(layout, manifest, name)
    role = role_of(name)
    check_plan_unchanged(layout, manifest)
    paths = participant_cert_paths(layout, manifest, name)
    if role == ROLE_AGGREGATOR:
        common_name = manifest.aggregator_address
        san = [manifest.aggregator_address, *extra_san]
        if manifest.aggregator_address == "localhost":
            san += ["127.0.0.1", "::1"]  # as the one-step certify does: local clients dial these too
    else:
        if extra_san:
            raise CofeError("--san names the aggregator's host names; a collaborator's certificate carries its name only",
                            hint="drop --san")
        common_name, san = name, [name]
    san = list(dict.fromkeys(san))
    if paths.key.exists() and not force:
        raise CofeError(f"{name} already has a private key ({paths.key})",
                        hint="pass --force to make a new key; its certificate must then be signed again")
    out = Path(out).expanduser() if out else Path(f"{name}{REQUEST_SUFFIX}")
    if out.exists() and not force:
        raise CofeError(f"{out} already exists", hint="pass --force to replace it, or -o another file name")

    key_pem, csr_pem = make_private_key_and_csr(common_name, san=san)
    digest = csr_hash(csr_pem)
    request = {
        "format": REQUEST_FORMAT, "version": FORMAT_VERSION, "name": name, "role": role,
        "federation": manifest.name, "plan_sha384": manifest.plan_sha384, "common_name": common_name,
        "subject_alt_names": san, "created": now_iso(), "cofe_version": __version__,
    }
    data = archive_bytes({CSR_MEMBER: csr_pem, REQUEST_MEMBER: json_bytes(request)})
    with _restored_on_failure(paths.key, csr_path(paths)):
        atomic_write_bytes(paths.key, key_pem, mode=0o600)
        atomic_write_bytes(csr_path(paths), csr_pem)
        atomic_write_bytes(out, data, mode=0o644)
    replaced = False
    if paths.cert.exists() and not check_key_matches_cert(key_pem, paths.cert.read_bytes()):
        paths.cert.unlink()  # it certifies the old key, which is gone
        replaced = True
    return RequestResult(name, role, paths.key, csr_path(paths), out, digest, san, replaced)


@contextlib.contextmanager
def _restored_on_failure(*paths: Path):
    """If the block fails, every path is put back as it was (a half-made request leaves no new key behind)."""
    saved = {path: (path.read_bytes(), path.stat().st_mode & 0o777) if path.is_file() else None for path in paths}
    try:
        yield
    except BaseException:
        for path, before in saved.items():
            with contextlib.suppress(OSError):
                if before is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(path, before[0], mode=before[1])
        raise


# ---------------------------------------------------------------- coordinator: check and sign


@dataclass
class PendingRequest:
    source: Path
    name: str
    role: str
    plan_sha384: str
    csr_pem: bytes
    sha256: str
    common_name: str
    subject_alt_names: list[str]
    info: dict = field(default_factory=dict)


def load_request(path: Path) -> PendingRequest:
    path = Path(path).expanduser()
    members = read_archive(path, REQUEST_ARCHIVE)
    info = load_json_member(members, REQUEST_MEMBER, expected_format=REQUEST_FORMAT, source=path, hint=_REQUEST_HINT)
    name, role, plan = info.get("name"), info.get("role"), info.get("plan_sha384")
    if not all(isinstance(value, str) and value for value in (name, role, plan)):
        raise CofeError(f"{path}: request.json lacks name, role or plan_sha384", hint=_REQUEST_HINT)
    csr = _load_csr(members[CSR_MEMBER])
    if not csr.is_signature_valid:
        raise CofeError(f"{path}: the request's signature does not verify (changed after it was made?)",
                        hint="ask the site for a new request")
    return PendingRequest(path, name, role, plan.lower(), members[CSR_MEMBER], csr_hash(members[CSR_MEMBER]),
                          _common_name(csr.subject), _san_names(csr.extensions), info)


def issued_record(layout: FederationLayout, name: str) -> Path:
    return layout.ca / ISSUED_DIR / f"{name}.crt"


def current_certificate(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority,
                         name: str) -> Path | None:
    """A certificate of this CA already issued to `name`: the sign record, or (one-step certify) the workspace's."""
    candidates = [issued_record(layout, name)]
    if name == AGGREGATOR or name in manifest.collaborators:
        candidates.append(participant_cert_paths(layout, manifest, name).cert)
    for path in candidates:
        if path.is_file():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                continue
            if issued_by(cert, ca) and cert.not_valid_after_utc > datetime.now(timezone.utc):
                return path
    return None


def check_request(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority, request: PendingRequest,
                  *, force: bool = False, allow_other_plan: bool = False) -> list[str]:
    """Everything that can refuse a request, before anyone is asked to confirm its hash; returns warnings."""
    warnings: list[str] = []
    name = request.name
    if name != AGGREGATOR:
        try:
            check_collaborator_name(name)
        except CofeError:
            raise CofeError(f"the request is for {name!r}, which is not a participant name",
                            hint="ask the site for the request `cofe certify request` made") from None
        if name not in manifest.collaborators:
            raise CofeError(f"the request is for {name!r}, but the plan has no such collaborator "
                            f"(it has: {', '.join(manifest.collaborators)})",
                            hint="check which site sent it; add a site with `cofe init --force` and a new --collaborator")
    if request.role != role_of(name):
        raise CofeError(f"the request for {name!r} claims the role {request.role!r}, but {name} is "
                        f"{'the' if name == AGGREGATOR else 'a'} {role_of(name)}",
                        hint="ask the site for a new request made with `cofe certify request`")
    expected_cn = manifest.aggregator_address if name == AGGREGATOR else name
    if request.common_name != expected_cn:
        raise CofeError(f"the request's certificate name is {request.common_name!r}, expected {expected_cn!r}",
                        hint="ask the site for a new request made with `cofe certify request`")
    if name == AGGREGATOR and not any(_same_host(entry, manifest.aggregator_address)
                                      for entry in request.subject_alt_names):
        raise CofeError(f"the aggregator's request does not name the plan's aggregator address "
                        f"{manifest.aggregator_address!r} (it names: {', '.join(request.subject_alt_names) or 'nothing'})",
                        hint="make the request again with `cofe certify request` from the aggregator's kit")
    if request.plan_sha384 != manifest.plan_sha384:
        message = (f"the request was made for another plan (sha384 {request.plan_sha384[:16]}...) "
                   f"than this federation's ({manifest.plan_sha384[:16]}...)")
        if not allow_other_plan:
            raise CofeError(message, hint="send the site the current kit (`cofe export`), have it re-import it with "
                                          "--force, or pass --allow-other-plan to sign anyway")
        warnings.append(message)
    current = current_certificate(layout, manifest, ca, name)
    if current is not None and not force:
        raise CofeError(f"{name} already has a certificate from this CA ({current})",
                        hint=f"pass --force to sign a new one (then revoke the old one: `cofe certify revoke {name}`)")
    return warnings


def parse_expected_hash(expected: str) -> str:
    digits = normalise_hex(expected)
    if len(digits) != 64 or any(ch not in "0123456789abcdef" for ch in digits):
        raise CofeError(f"--expect-hash {expected!r} is not 64 hex digits",
                        hint="give the whole hash the site's `cofe certify request` printed (spaces allowed)")
    return digits


def check_expected_hash(request: PendingRequest, expected: str) -> None:
    digits = parse_expected_hash(expected)
    if digits != request.sha256:
        raise CofeError(f"the request's hash {group_hex(request.sha256)} does not match --expect-hash "
                        f"{group_hex(digits)}: it is not the request the site made",
                        hint="do not sign it; ask the site to read the hash again, or to send its request again")


@dataclass
class SignResult:
    name: str
    role: str
    archive: Path
    record: Path
    serial: int
    not_after: datetime
    root_fingerprint: str
    subject_alt_names: list[str]


def sign_request(layout: FederationLayout, manifest: Manifest, ca: CertificateAuthority, request: PendingRequest,
                 *, out: Path | None = None, force: bool = False,
                 validity_days: int = DEFAULT_VALIDITY_DAYS) -> SignResult:
    name = request.name
    out = Path(out).expanduser() if out else Path(f"{name}{SIGNED_SUFFIX}")
    if out.exists() and not force:
        raise CofeError(f"{out} already exists", hint="pass --force to replace it, or -o another file name")
    kind = "server" if name == AGGREGATOR else "client"
    expected_cn = manifest.aggregator_address if name == AGGREGATOR else name
    cert_pem = ca.sign_csr(request.csr_pem, kind=kind, expected_name=expected_cn, validity_days=validity_days)
    chain = ca.chain_pem()
    verify_issued_by(cert_pem, chain)
    cert = x509.load_pem_x509_certificate(cert_pem)
    signed = {
        "format": SIGNED_FORMAT, "version": FORMAT_VERSION, "name": name, "role": role_of(name),
        "serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
        "root_fingerprint": ca.root_fingerprint(), "plan_sha384": manifest.plan_sha384,
        "request_sha256": request.sha256, "cofe_version": __version__,
    }
    write_archive(out, {CERT_MEMBER: cert_pem, CHAIN_MEMBER: chain, SIGNED_MEMBER: json_bytes(signed)}, force=force)
    record = record_issued(layout, name, cert_pem)
    return SignResult(name, role_of(name), out, record, cert.serial_number, cert.not_valid_after_utc,
                      ca.root_fingerprint(), _san_names(cert.extensions))


def archive_old_record(record: Path) -> None:
    """A replaced certificate stays on record (ca/issued/archive/<name>.<serial>.crt) for status and revoke."""
    if not record.is_file():
        return
    target = _archived_path(record.parent, record.stem, record.read_bytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(record, target)


def _archived_path(issued: Path, name: str, cert_pem: bytes) -> Path:
    try:
        serial = format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")
    except ValueError:
        serial = "damaged"
    return issued / ARCHIVED_DIR / f"{name}.{serial}.crt"


def keep_on_record(layout: FederationLayout, name: str, cert_pem: bytes, ca: CertificateAuthority) -> None:
    """A certificate of this CA about to be replaced in a workspace stays on record, as a replaced sign
    record does: `certify status` still lists it and `certify revoke` can still revoke it."""
    try:
        if not issued_by(x509.load_pem_x509_certificate(cert_pem), ca):
            return  # not this CA's: nothing it could revoke
    except ValueError:
        return
    atomic_write_bytes(_archived_path(layout.ca / ISSUED_DIR, name, cert_pem), cert_pem)


def record_issued(layout: FederationLayout, name: str, cert_pem: bytes) -> Path:
    record = issued_record(layout, name)
    if record.is_file() and record.read_bytes() == cert_pem:
        return record
    archive_old_record(record)
    atomic_write_bytes(record, cert_pem)
    return record


# ---------------------------------------------------------------- site: install what came back


@dataclass
class InstallResult:
    name: str
    cert: Path
    chain: Path
    serial: int
    not_after: datetime
    unchanged: bool


def install_signed(layout: FederationLayout, manifest: Manifest, path: Path, *, expected_root_fingerprint: str,
                   name: str | None = None) -> InstallResult:
    path = Path(path).expanduser()
    expected = normalise_hex(expected_root_fingerprint)
    if len(expected) != 64 or any(ch not in "0123456789abcdef" for ch in expected):
        raise CofeError(f"--expect-root-fingerprint {expected_root_fingerprint!r} is not a SHA-256 fingerprint "
                        "(64 hex digits)", hint="ask the coordinator to read out the root fingerprint `cofe certify ca` printed")
    members = read_archive(path, SIGNED_ARCHIVE)
    info = load_json_member(members, SIGNED_MEMBER, expected_format=SIGNED_FORMAT, source=path, hint=_SIGNED_HINT)
    signed_name = info.get("name")
    if not isinstance(signed_name, str) or not signed_name:
        raise CofeError(f"{path}: signed.json names no participant", hint=_SIGNED_HINT)
    if name is not None and name != signed_name:
        raise CofeError(f"{path} holds {signed_name}'s certificate, not {name}'s", hint=_SIGNED_HINT)
    name = local_participant(layout, manifest, signed_name)
    chain_pem, cert_pem = members[CHAIN_MEMBER], members[CERT_MEMBER]
    root_fingerprint = chain_root_fingerprint(chain_pem)
    if normalise_hex(root_fingerprint) != expected:
        raise CofeError(f"the certificate comes from a CA whose root fingerprint is {root_fingerprint}, "
                        f"not the one you expected", hint="do not install it; check the fingerprint with the "
                                                          "coordinator by phone, not from the message that brought the file")
    cert = _load_cert(cert_pem, f"{path}: {CERT_MEMBER}")
    expected_cn = manifest.aggregator_address if name == AGGREGATOR else name
    if _common_name(cert.subject) != expected_cn:
        raise CofeError(f"the certificate is for {_common_name(cert.subject)!r}, not {expected_cn!r}", hint=_SIGNED_HINT)
    verify_issued_by(cert_pem, chain_pem)
    paths = participant_cert_paths(layout, manifest, name)
    if not paths.key.is_file():
        raise CofeError(f"{name} has no private key here ({paths.key})",
                        hint=f"make it first: `cofe certify request --dir {layout.root}`, and have that request signed")
    if not check_key_matches_cert(paths.key.read_bytes(), cert_pem):
        raise CofeError(f"the certificate does not match {name}'s private key here ({paths.key})",
                        hint="it was signed from another request; have the coordinator sign this site's latest "
                             "request (its hash is the one `cofe certify request` printed)")
    unchanged = (paths.cert.is_file() and paths.cert.read_bytes() == cert_pem
                 and paths.chain.is_file() and paths.chain.read_bytes() == chain_pem)
    if not unchanged:
        atomic_write_bytes(paths.cert, cert_pem)
        atomic_write_bytes(paths.chain, chain_pem)
    return InstallResult(name, paths.cert, paths.chain, cert.serial_number, cert.not_valid_after_utc, unchanged)
