"""The container engine cofe talks to (Docker or Podman, through the Docker API) and the image it runs.

The `docker` SDK is imported only inside these functions, so `cofe --help` and the process mode
never pay for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cofe_cli import __version__
from cofe_cli.errors import CofeError

DEFAULT_IMAGE = f"cofe:{__version__}"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Docker 19.03 (API 1.40) added device requests, which `--gpus` needs; Podman's API reports 1.40+.
MIN_API_VERSION = (1, 40)
EXTRA_CA_FOLDER = "docker/extra-ca"
START_ENGINE_HINT = ("start Docker (`sudo systemctl start docker`) or Podman's API socket "
                     "(`systemctl --user start podman.socket`, then DOCKER_HOST=unix://$XDG_RUNTIME_DIR/podman/podman.sock); "
                     "on a bare Debian machine `eval \"$(scripts/start-docker-engine.sh)\"` starts one")


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def parse_api_version(text: str) -> tuple[int, int]:
    match = re.match(r"^\s*(\d+)\.(\d+)", str(text or ""))
    if not match:
        raise ValueError(f"not an API version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_api_version(api_version: str, engine_version: str) -> None:
    if parse_api_version(api_version) < MIN_API_VERSION:
        wanted = ".".join(map(str, MIN_API_VERSION))
        raise CofeError(f"the container engine at {engine_address()} is too old (version {engine_version}, API {api_version}; "
                        f"cofe needs API {wanted} or newer)",
                        hint="upgrade to Docker 19.03 or newer, or Podman 3 or newer")


def connect():
    """A client for the engine DOCKER_HOST names (or the default socket), refused clearly if it is absent or old."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        version = client.version()
    except docker.errors.DockerException as exc:
        reason = str(exc).split("(", 1)[0].strip() or type(exc).__name__
        raise CofeError(f"no container engine reachable at {engine_address()} ({reason})", hint=START_ENGINE_HINT) from None
    check_api_version(version.get("ApiVersion", "0.0"), version.get("Version", "unknown"))
    return client


def is_podman(client) -> bool:
    components = client.version().get("Components") or []
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


def require_image(client, image: str):
    import docker

    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        raise CofeError(f"the image {image} is not on the container engine at {engine_address()}",
                        hint=f"build it with `cofe image build --tag {image}`, "
                             "or name another with --image") from None


def image_user(image) -> tuple[int, int]:
    """The unprivileged uid:gid the image runs as (our Dockerfile's `USER 10001:10001`)."""
    user = (image.attrs.get("Config") or {}).get("User") or ""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or int(uid) == 0:
        raise CofeError(f"the image {image.tags[0] if image.tags else image.id[:19]} does not run as a numeric non-root user ({user or 'root'})",
                        hint="build it from cofe's Dockerfile with `cofe image build`")
    return int(uid), int(gid) if gid.isdigit() else int(uid)


# --- cofe image build -------------------------------------------------------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def split_pem_bundle(text: str) -> list[str]:
    """One PEM certificate per entry: update-ca-certificates wants one certificate per .crt file."""
    return [block + "\n" for block in _PEM_BLOCK.findall(text)]


# What the Dockerfile copies from the build context besides the package (and docker/extra-ca/).
BUILD_FILES = ("Dockerfile", "pyproject.toml", "README.md")
# In cofe_cli/: links to BUILD_FILES in a clone, copies of them in an installed wheel.
PACKAGED_BUILD_FILES = "container_image"
_SOURCE_HINT = "run it in a clone of cofe's repository, or pass --source with the root of one (it holds Dockerfile, pyproject.toml and cofe_cli/)"


def _names_cofe(pyproject: Path) -> bool:
    text = pyproject.read_text(errors="replace")
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library
        return re.search(r'(?m)^name\s*=\s*"cofe"\s*$', text) is not None
    try:
        return (tomllib.loads(text).get("project") or {}).get("name") == "cofe"
    except tomllib.TOMLDecodeError:
        return False


def is_source_tree(root: Path) -> bool:
    """A clone of cofe's repository: its Dockerfile, a pyproject.toml naming the project cofe, the package."""
    return (root / "Dockerfile").is_file() and (root / "cofe_cli").is_dir() and (root / "pyproject.toml").is_file() \
        and _names_cofe(root / "pyproject.toml")


@contextlib.contextmanager
def build_source(source: Path | None) -> Iterator[Path]:
    """The folder the image is built from: --source; else the clone the command runs in (the current folder
    or one above it); else the clone this cofe runs from (an editable install); else a temporary folder
    assembled from the installed package, whose wheel carries the Dockerfile and the project files."""
    if source is not None:
        root = Path(source).expanduser().resolve()
        if not is_source_tree(root):
            raise CofeError(f"no cofe source tree at {root} (a Dockerfile, a pyproject.toml naming cofe, cofe_cli/)",
                            hint=_SOURCE_HINT)
        yield root
        return
    package = Path(__file__).resolve().parents[1]
    here = Path.cwd().resolve()
    for root in (here, *here.parents, package.parent):
        if is_source_tree(root):
            yield root
            return
    with tempfile.TemporaryDirectory(prefix="cofe-image-") as temp:
        yield assemble_source(package, Path(temp))


def assemble_source(package: Path, into: Path) -> Path:
    """What the Dockerfile copies, from an installed package: the build files it ships, the package
    itself (without caches and the shipped copies) and the folder for extra CA certificates."""
    shipped = package / PACKAGED_BUILD_FILES
    missing = [name for name in BUILD_FILES if not (shipped / name).is_file()]
    if missing:
        raise CofeError(f"this cofe ({package}) was installed without the files its image is built from "
                        f"({', '.join(missing)} in {shipped})", hint=_SOURCE_HINT)
    for name in BUILD_FILES:
        shutil.copyfile(shipped / name, into / name)
    shutil.copytree(package, into / "cofe_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", PACKAGED_BUILD_FILES))
    (into / EXTRA_CA_FOLDER).mkdir(parents=True)
    (into / EXTRA_CA_FOLDER / "README.md").write_text("CA certificates (*.crt) here are trusted by the image.\n")
    return into


def build_context(source: Path, extra_ca_bundle: Path | None):
    """The tar sent to the engine: the repository as .dockerignore filters it, plus the extra CA bundle
    under docker/extra-ca/ (added to the archive only, never written into the repository)."""
    from docker.utils import build as docker_build

    ignore = source / ".dockerignore"
    exclude = []
    if ignore.is_file():
        exclude = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    context = docker_build.tar(str(source), exclude=exclude, dockerfile=("Dockerfile", None), gzip=False)
    if extra_ca_bundle:
        certificates = split_pem_bundle(Path(extra_ca_bundle).read_text(errors="replace"))
        if not certificates:
            raise CofeError(f"{extra_ca_bundle} holds no PEM certificate", hint="give a file with -----BEGIN CERTIFICATE----- blocks")
        context.seek(0)
        with tarfile.open(fileobj=context, mode="a") as archive:
            for index, pem in enumerate(certificates):
                data = pem.encode()
                info = tarfile.TarInfo(f"{EXTRA_CA_FOLDER}/cofe-extra-{index:02d}.crt")
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: the layer cache stays warm
                archive.addfile(info, fileobj=_bytes_reader(data))
    context.seek(0)
    return context


def _bytes_reader(data: bytes):
    import io

    return io.BytesIO(data)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    size: int
    seconds: float


def build_image(client, *, source: Path, tag: str, base_image: str, extra_ca_bundle: Path | None, no_cache: bool = False,
                on_line: Callable[[str], None] = lambda line: None) -> BuiltImage:
    """Build with the classic builder (what the Docker API's build endpoint runs), streaming its log."""
    started = time.monotonic()
    context = build_context(source, extra_ca_bundle)
    log: list[str] = []
    image_id = None
    try:
        stream = client.api.build(fileobj=context, custom_context=True, tag=tag, buildargs={"BASE_IMAGE": base_image},
                                  rm=True, forcerm=True, decode=True, pull=False, nocache=no_cache)
        for chunk in stream:
            if "error" in chunk:
                log.append(str(chunk["error"]).rstrip())
                raise _BuildFailed(chunk["error"], log)
            text = chunk.get("stream") or ""
            for line in text.splitlines():
                if line.strip():
                    log.append(line)
                    on_line(line)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    finally:
        context.close()
    image = client.images.get(tag)
    return BuiltImage(tag=tag, image_id=image_id or image.id, size=int(image.attrs.get("Size") or 0),
                      seconds=time.monotonic() - started)


class _BuildFailed(Exception):
    def __init__(self, message: str, log: list[str]):
        super().__init__(message)
        self.log = log


def build_failure(exc: Exception) -> CofeError:
    from cofe_cli.errors import FederationFailed

    log = getattr(exc, "log", [])
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    tls_refused = any(marker in "\n".join(log[-40:]).lower()
                      for marker in ("certificate verify failed", "self-signed certificate", "self signed certificate"))
    hint = ("behind a TLS-intercepting proxy pass its CA with --extra-ca-bundle FILE"
            if tls_refused else "the build log's last lines are above")
    return FederationFailed(f"the image build failed: {message}", hint=hint, participant="docker build", log_tail=log[-20:], exit_code=1)
