"""Every participant of a federation in a container of cofe's one image (`cofe run --containers`,
`cofe start ... --container`).

ContainerFederation implements the same Launcher protocol as ProcessFederation, so `supervise()`
gives the same live progress, failure handling and report. Each container runs `cofe start ...`
with the federation mounted at the same absolute paths as on the host:

  FED/plans                   read-only
  FED/workspaces/NAME         read-write: the output volume (logs/, save/, local_state/, .tmp/, .home/
                              and whatever GaNDLF writes to its output_dir `.`), so results land on the host
  FED/workspaces/NAME/plan    read-only (mounted over the above)
  FED/workspaces/NAME/cert    read-only: only this participant's certificates and key, never the CA
  site data                   read-only, at its host path, so data.yaml and CSVs with absolute paths work

All containers of one federation share a user-defined bridge network, where the aggregator's
container carries the plan's aggregator address as an alias: the name collaborators dial is the
one in the server certificate. Everything cofe creates carries the label cofe.federation=<hash of
the federation's path>, and is removed when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import ipaddress
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.locks import launched_env
from cofe_cli.participant import is_aggregator
from cofe_cli.launch.supervisor import ParticipantState, tail_lines
from cofe_cli.plan.data import TRAIN_CSV, VALID_CSV, classify_columns
from cofe_cli.plan.workspaces import collaborator_data_folder

LABEL_FEDERATION = "cofe.federation"
LABEL_PARTICIPANT = "cofe.participant"
LABEL_ROOT = "cofe.root"
# One bind mount per folder is fine for a few; a CSV naming hundreds of subject folders gets their
# common ancestor instead (engines cap the mounts of one container, and `docker inspect` stays readable).
MAX_DATA_MOUNTS = 16
# Names the embedded DNS of a bridge network serves: one or more RFC 1123 labels.
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


# --- names ----------------------------------------------------------------------------------------

def federation_id(layout: FederationLayout) -> str:
    """Short and stable per federation folder: two federations on one engine never share a name."""
    return hashlib.sha256(str(layout.root).encode()).hexdigest()[:10]


def network_name(layout: FederationLayout) -> str:
    return f"cofe-{federation_id(layout)}"


def container_name(layout: FederationLayout, participant: str) -> str:
    return f"cofe-{federation_id(layout)}-{participant}"


def labels(layout: FederationLayout, participant: str | None = None) -> dict[str, str]:
    found = {LABEL_FEDERATION: federation_id(layout), LABEL_ROOT: str(layout.root)}
    if participant:
        found[LABEL_PARTICIPANT] = participant
    return found


def is_loopback_or_ip(address: str) -> bool:
    if address.lower() in ("localhost", "localhost.localdomain") or address.lower().endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(address.strip("[]"))
        return True
    except ValueError:
        return False


def aggregator_aliases(address: str) -> list[str]:
    """The names the aggregator's container answers to on the federation's network."""
    return [] if is_loopback_or_ip(address) else [address]


def is_loopback(address: str) -> bool:
    if address.lower() in ("localhost", "localhost.localdomain") or address.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def check_aggregator_address(address: str, *, whole_federation: bool, runs_aggregator: bool) -> None:
    """Refuse the addresses that containers could not dial.

    - `cofe run --containers` (whole_federation): collaborators dial the aggregator's container by name.
    - `cofe start aggregator --container`: its port is also published on the host, so an IP or
      localhost still serves collaborators outside containers; a name also serves those on this engine.
    - `cofe start collaborator --container`: inside a container, localhost is the container itself.
    """
    if whole_federation:
        check_container_alias(address)
    elif is_loopback(address) and not runs_aggregator:
        raise CofeError(f"the federation's aggregator address is {address!r}, which inside a container is the container itself",
                        hint="re-create the federation with the aggregator's name, e.g. `cofe init --force --aggregator-address "
                             "aggregator ...` and `cofe start aggregator --container`, or start this collaborator without --container")
    elif not is_loopback_or_ip(address):
        check_container_alias(address)


def check_container_alias(address: str) -> str:
    """The aggregator's address must be a name its container can carry on the bridge network."""
    if is_loopback_or_ip(address) or not _DNS_NAME.match(address.lower()):
        raise CofeError(
            f"the federation's aggregator address {address!r} cannot name a container: collaborators in containers "
            "reach the aggregator by a DNS name on the federation's network, and the server certificate must carry that name",
            hint="re-create it with a name, e.g. `cofe init --force --aggregator-address aggregator ...` "
                 "(then `cofe certify`), or run it without containers",
        )
    return address


# --- GPUs -----------------------------------------------------------------------------------------

def gpu_request(value: str | None) -> dict | None:
    """`--gpus` as Docker's CLI reads it: all, a count, or device=ID[,ID]; the keys of a DeviceRequest."""
    if not value:
        return None
    text = value.strip()
    if text == "all":
        return {"count": -1, "capabilities": [["gpu"]]}
    if text.isdigit() and int(text) > 0:
        return {"count": int(text), "capabilities": [["gpu"]]}
    if text.startswith("device="):
        ids = [part.strip() for part in text[len("device="):].strip("\"'").split(",") if part.strip()]
        if ids:
            return {"device_ids": ids, "capabilities": [["gpu"]]}
    raise CofeError(f"--gpus {value!r} is not understood", hint="use all, a number such as 1, or device=0,1")


def participant_command(layout: FederationLayout, participant: str, *, restart: bool = False, device: str | None = None) -> list[str]:
    """What the container runs (after the image's `cofe` entrypoint): the same `cofe start` as on a host."""
    return layout.participant(participant).start_command(restart=restart, device=device)


# --- mounts ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    source: Path
    target: Path
    read_only: bool


def csv_file_folders(data_folder: Path) -> set[Path]:
    """Folders of every image and label file the site's CSVs name (relative paths from the CSV's folder)."""
    folders: set[Path] = set()
    for csv_name in (TRAIN_CSV, VALID_CSV):
        path = data_folder / csv_name
        if not path.is_file():
            continue
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
        header = [name.strip() for name in (reader.fieldnames or [])]
        columns = classify_columns(header)
        file_columns = [*columns.channels, *([columns.label] if columns.label else [])]
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k}
            for column in file_columns:
                value = row.get(column)
                if value:
                    file = Path(value).expanduser()
                    file = file if file.is_absolute() else data_folder / file
                    folders.add(Path(os.path.abspath(file)).parent)
    return folders


def covering_folders(folders: set[Path]) -> list[Path]:
    """The fewest folders that contain all of these: drop any folder inside another one."""
    ordered = sorted({Path(os.path.abspath(f)) for f in folders}, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for folder in ordered:
        if not any(folder == k or k in folder.parents for k in kept):
            kept.append(folder)
    if len(kept) > MAX_DATA_MOUNTS:
        common = Path(os.path.commonpath([str(k) for k in kept]))
        if common != Path(common.anchor):
            return [common]
    return sorted(kept)


def data_mounts(data_folder: Path | None) -> list[Mount]:
    if data_folder is None:
        return []
    folder = Path(os.path.abspath(Path(data_folder).expanduser()))
    folders = covering_folders({folder, *csv_file_folders(folder)})
    return [Mount(f, f, True) for f in folders]


def participant_mounts(layout: FederationLayout, participant: str, data_folder: Path | None = None) -> list[Mount]:
    this = layout.participant(participant)
    mounts = [
        Mount(layout.plans, layout.plans, True),
        Mount(this.workspace, this.workspace, False),
        Mount(this.plan_dir, this.plan_dir, True),
        Mount(this.cert_dir, this.cert_dir, True),
    ]
    if not this.is_aggregator:
        mounts += data_mounts(data_folder)
    # Engines mount parents before children when sorted like this; keep the order explicit anyway.
    return sorted(mounts, key=lambda m: (len(m.target.parts), str(m.target)))


def grant_to(workspace: Path, uid: int, gid: int) -> None:
    """cofe runs as root here: give the workspace (its key included) to the image's unprivileged user,
    who then can read its key and write its outputs; root on the host still reads everything."""
    for directory, subdirs, files in os.walk(workspace):
        os.chown(directory, uid, gid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def open_to_others(folder: Path) -> None:
    """The plans are the same for every party and hold no secret: let the image's user read them."""
    for directory, _, files in os.walk(folder):
        os.chmod(directory, os.stat(directory).st_mode | 0o005)
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, os.stat(path).st_mode | 0o004)


def check_readable_by(mounts: list[Mount], uid: int, gid: int) -> None:
    """A data folder the image's user cannot open would fail deep inside GaNDLF; say it here instead."""
    for mount in mounts:
        if not mount.read_only:
            continue
        info = os.stat(mount.source)
        bits = 0o5 if info.st_uid != uid and info.st_gid != gid else (0o500 if info.st_uid == uid else 0o050)
        if info.st_mode & bits != bits:
            raise CofeError(f"the containers' user (uid {uid}) cannot read {mount.source}",
                            hint=f"let others read it (`chmod -R o+rX {mount.source}`), or run cofe as a non-root user "
                                 "who can read it (the container then runs as that user)")


# --- the launcher ---------------------------------------------------------------------------------

@dataclass
class _Container:
    name: str
    container: object
    log: Path
    peak_rss: int = 0
    returncode: int | None = None
    log_thread: threading.Thread | None = None
    echo: bool = False
    sampled: float = field(default=0.0)


class ContainerFederation:
    """Starts one container of `image` per participant on the federation's bridge network."""

    def __init__(self, layout: FederationLayout, manifest: Manifest, *, image: str, participants: list[str] | None = None,
                 gpus: str | None = None, device: str | None = None, restart: bool = False, publish_port: bool = False,
                 echo: bool = False, client=None):
        from cofe_cli.launch.docker_engine import connect, image_user, is_podman, require_image

        self.layout = layout
        self.manifest = manifest
        self.image = image
        self._participants = list(participants or manifest.participant_names())
        self.gpus = gpu_request(gpus)
        # With GPUs passed through, the collaborator trains on them; the plan (and its hash) stays as it is.
        self.device = device or ("cuda" if self.gpus else None)
        self.restart = restart
        self.publish_port = publish_port
        self.echo = echo
        check_aggregator_address(manifest.aggregator_address, whole_federation=participants is None,
                                 runs_aggregator=any(is_aggregator(name) for name in self._participants))
        self.client = client or connect()
        self._image = require_image(self.client, image)
        self._image_uid, self._image_gid = image_user(self._image)
        self._podman = is_podman(self.client)
        self._network = None
        self._containers: dict[str, _Container] = {}

    def participants(self) -> list[str]:
        return list(self._participants)

    # -- starting

    def start(self) -> None:
        try:
            with self._federation_lock():
                self._network = self._ensure_network()
                for name in self._participants:
                    self._start_one(name)
        except BaseException:
            self.stop(grace=5)
            raise

    def restart_participant(self, name: str) -> None:
        """A participant whose container exited, in a new container of the same name (the old one is removed)."""
        with self._federation_lock():
            self._start_one(name)

    @contextlib.contextmanager
    def _federation_lock(self):
        """Serialises, across the terminals of one federation on this host, making the network, joining
        it and removing it: the engine's duplicate-name check is not atomic, and an empty network
        (joined only when a container starts) could be removed under a participant about to join it."""
        handle = os.open(self.layout.plans, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # releases the lock

    def _ensure_network(self):
        """The federation's network, shared by every `cofe start --container` of it on this engine."""
        name = network_name(self.layout)
        existing = self._networks_named(name)
        if existing:
            return min(existing, key=lambda n: (n.attrs.get("Created", ""), n.id))
        return self.client.networks.create(name, driver="bridge", labels=labels(self.layout), check_duplicate=True)

    def _networks_named(self, name: str) -> list:
        return [n for n in self.client.networks.list(names=[name]) if n.name == name]

    def _user(self) -> str | None:
        uid = os.getuid()
        return None if uid == 0 else f"{uid}:{os.getgid()}"

    def _start_one(self, name: str) -> None:
        import docker

        participant = self.layout.participant(name)
        workspace = participant.workspace
        # Created here so the bind mounts exist and belong to the right user.
        for folder in participant.output_dirs():
            folder.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            grant_to(workspace, self._image_uid, self._image_gid)
        data = None if participant.is_aggregator else collaborator_data_folder(self.layout, name)
        planned = participant_mounts(self.layout, name, data)
        if os.getuid() == 0:
            open_to_others(self.layout.plans)
            check_readable_by([m for m in planned if m.source != self.layout.plans], self._image_uid, self._image_gid)
        mounts = [docker.types.Mount(target=str(m.target), source=str(m.source), type="bind", read_only=m.read_only)
                  for m in planned]
        container_id = container_name(self.layout, name)
        self._remove_stale(container_id)
        port = self.manifest.aggregator_port
        publish = participant.is_aggregator and self.publish_port
        api = self.client.api
        host_config = api.create_host_config(
            mounts=mounts, network_mode=self._network.id, init=True,
            port_bindings={port: port} if publish else None,
            device_requests=[docker.types.DeviceRequest(**self.gpus)] if self.gpus and not participant.is_aggregator else None,
            # Rootless Podman maps the host user to root inside unless told to keep it.
            userns_mode="keep-id" if self._podman and os.getuid() != 0 else None,
        )
        aliases = aggregator_aliases(self.manifest.aggregator_address) if participant.is_aggregator else []
        networking = api.create_networking_config({self._network.id: api.create_endpoint_config(aliases=aliases or None)})
        # Whoever launches containers (`cofe run`, `cofe start --container`) holds the workspace locks on this host.
        # As in process mode: the collaborators started here share this machine's cores.
        sharing = sum(not is_aggregator(p) for p in self._participants)
        environment = {**launched_env(), **participant.launch_env(participant.thread_budget(sharing=sharing))}
        try:
            created = api.create_container(
                image=self._image.id, name=container_id, hostname=name,
                command=participant.start_command(restart=self.restart, device=self.device),
                labels=labels(self.layout, name), user=self._user(), environment=environment, detach=True,
                ports=[port] if publish else None, host_config=host_config, networking_config=networking)
        except docker.errors.APIError as exc:
            raise CofeError(f"the container engine refused to create {container_id}: {exc.explanation or exc}",
                            hint="check that the mounted folders exist, and the engine's log") from None
        container = self.client.containers.get(created["Id"])
        entry = _Container(name=name, container=container, log=participant.log_file, echo=self.echo)
        self._containers[name] = entry
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise CofeError(f"the container engine could not start {container_id}: {exc.explanation or exc}",
                            hint="is the port free on this host? (`cofe start aggregator --container` publishes it)"
                            if publish else "see the engine's log") from None
        entry.log_thread = threading.Thread(target=self._copy_logs, args=(entry,), daemon=True, name=f"logs-{name}")
        entry.log_thread.start()

    def _remove_stale(self, name: str) -> None:
        """A container of this name left by a killed run is removed; a running one means a run is in progress."""
        import docker

        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if old.status == "running":
            raise CofeError(f"{name} is already running: this federation's participant is started elsewhere",
                            hint=f"stop that run first (or `docker rm -f {name}`)")
        old.remove(force=True)

    def _copy_logs(self, entry: _Container) -> None:
        # The container's output goes to the participant's log file, as a process's does in process mode.
        try:
            with entry.log.open("ab") as out:
                for chunk in entry.container.logs(stream=True, follow=True):
                    out.write(chunk)
                    out.flush()
                    if entry.echo:
                        os.write(1, chunk)
        except Exception:  # the container went away: its log ends here
            pass

    # -- watching

    def states(self) -> dict[str, ParticipantState]:
        now = time.monotonic()
        result = {}
        for name, entry in self._containers.items():
            if entry.returncode is None:
                entry.returncode = self._exit_code(entry)
                if entry.returncode is None and now - entry.sampled > 2:
                    entry.sampled = now
                    entry.peak_rss = max(entry.peak_rss, self._memory(entry))
            result[name] = ParticipantState(name=name, returncode=entry.returncode, peak_rss=entry.peak_rss)
        return result

    def _exit_code(self, entry: _Container) -> int | None:
        import docker

        try:
            entry.container.reload()
        except docker.errors.NotFound:
            return 137  # removed under us (`docker rm -f`): as good as killed
        state = entry.container.attrs.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", 1))
        return None

    def _memory(self, entry: _Container) -> int:
        try:
            stats = entry.container.stats(stream=False, one_shot=True)
        except Exception:
            return 0
        memory = stats.get("memory_stats") or {}
        detail = memory.get("stats") or {}
        # Page cache is not the participant's memory: cgroup v2 reports it as inactive_file, v1 as cache.
        cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
        return max(0, int(memory.get("usage") or 0) - int(cache or 0))

    def log_tail(self, name: str, lines: int = 20, since: int = 0) -> list[str]:
        return tail_lines(self.log_path(name), lines, since)

    def log_path(self, name: str) -> Path:
        entry = self._containers.get(name)
        return entry.log if entry else self.layout.participant(name).log_file

    # -- stopping

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a Ctrl-C for `cofe start`), SIGKILL after `grace`; then remove containers and network."""
        import docker

        running = [e for e in self._containers.values() if self._exit_code(e) is None]
        for entry in running:
            try:
                entry.container.kill(signal="SIGTERM")
            except docker.errors.APIError:
                pass
        deadline = time.monotonic() + grace
        for entry in running:
            try:
                entry.container.wait(timeout=max(1, deadline - time.monotonic()))
            except Exception:
                try:
                    entry.container.kill()
                    entry.container.wait(timeout=30)
                except Exception:
                    pass
        for entry in self._containers.values():
            if entry.returncode is None:
                entry.returncode = self._exit_code(entry)
            if entry.log_thread:
                entry.log_thread.join(timeout=10)  # the log stream ends when the container has exited
            try:
                entry.container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                pass
        self._remove_network()

    def _remove_network(self) -> None:
        import docker

        if self._network is None:
            return
        with self._federation_lock():
            try:
                self._network.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                pass  # another terminal's participant is still on it; the last one out removes it
