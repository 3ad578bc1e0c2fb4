"""cofe's exchange archives: the gzip tar files that travel between the coordinator and the sites
(site kits, certificate requests, signed certificates), and the hex digests read out by phone to
authenticate them.

`read_archive` is the one way cofe opens an archive that came from elsewhere: only regular files
with expected names, no absolute paths, no `..`, no links, bounded sizes, the whole gzip stream
read to its end (a truncated or foreign archive is a CofeError). Each archive carries a JSON member
naming its format and FORMAT_VERSION (`load_json_member` checks both).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from cofe_cli.errors import CofeError
from cofe_cli.fsutil import atomic_write_bytes

FORMAT_VERSION = 1

_TRAILING_LIMIT = 64 * 1024
_TAR_FRAMING = 1024 * 1024  # headers and padding around the members, beyond their own bytes
_CHUNK = 1024 * 1024


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


# ---------------------------------------------------------------- digests read out by phone


def group_hex(digits: str, size: int = 4) -> str:
    """`1a2b3c4d...` as `1A2B 3C4D ...`: easy to read out on the phone."""
    digits = digits.upper()
    return " ".join(digits[i:i + size] for i in range(0, len(digits), size))


def normalise_hex(value: str) -> str:
    return "".join(ch for ch in value.lower() if ch not in " :-_\t\n")

