"""Who may write to a federation directory or a participant's workspace right now: one command at a time.

Two `cofe run` on one directory, or a `cofe run` beside a `cofe start aggregator`, would interleave
their logs and events, clear each other's state and fight over the port. Every command that writes
takes an exclusive flock on a lock file and writes who it is into it, so that the next one is
refused with the holder's description. The kernel drops a lock when its holder dies, however it
dies: a lock file left behind by a killed process never blocks anyone.

- FED/.cofe.lock: the federation. `cofe run` holds it while it runs; init, certify and import hold
  it while they rewrite the directory. Holding it also means holding every workspace's lock.
- FED/workspaces/NAME/.cofe.lock: one participant. `cofe start` holds it while the participant runs,
  and first makes sure no command holds the federation.

A launcher (`cofe run`, `cofe start --container`) holds the locks of what it launches itself and
tells the `cofe start` it launches (a child process, a container, a Slurm job) so through
LOCKS_HELD_ENV: that one must not take them again, and could not always see them (a container has
no FED/.cofe.lock; a job on another node would meet the login node's lock on the shared filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout

LOCK_FILE = ".cofe.lock"
LOCKS_HELD_ENV = "COFE_LOCKS_HELD_BY"  # the pid of the launcher that holds this participant's locks
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"  # a holder's `since`, in local time

# Locks this process holds, by the lock file's (device, inode): taking one again is a no-op, since a
# second flock on a new descriptor of the same file would be refused by our own first one.
_held: dict[tuple[int, int], int] = {}


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    since: str
    host: str

    @property
    def is_here(self) -> bool:
        """On this host: its pid can be signalled and its children seen from here."""
        return self.host == socket.gethostname()

    @property
    def argv(self) -> list[str]:
        """The holder's command line as words (`cofe`, the command, its options)."""
        try:
            return shlex.split(self.command)
        except ValueError:
            return self.command.split()

    def describe(self) -> str:
        where = "" if self.is_here else f" on {self.host}"
        return f"pid {self.pid}{where} (`{self.command}`, since {self.since})"

    @classmethod
    def of_this_process(cls) -> "Holder":
        return cls(pid=os.getpid(), command=_command_line(), since=time.strftime(TIME_FORMAT),
                   host=socket.gethostname())


def _command_line() -> str:
    # `python -m cofe_cli start ...` and the `cofe` script are the same command to a person.
    return shlex.join(["cofe", *sys.argv[1:]])


def _read_holder(fd: int) -> Holder | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        holder = Holder(int(record["pid"]), str(record["command"]), str(record["since"]), str(record["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the holder is between locking and writing its record, or releasing it
    if holder.host == socket.gethostname() and not _alive(holder.pid):
        return None  # a record left by a holder that died; whoever has the lock now has not written one yet
    return holder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def _refusal(what: str, holder: Holder | None) -> CofeError:
    by = holder.describe() if holder and holder.pid else "another cofe command"
    return CofeError(f"{what} is in use by {by}",
                     hint="wait until it ends or stop it: two cofe commands must not write to one federation at once")


def _open(path: Path) -> int | None:
    """A descriptor of the lock file, or None where no lock can be had nor is needed (a read-only file
    system: no command can write there, and the command's own write reports that more usefully)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        pass
    except OSError as error:
        if error.errno != errno.EROFS:
            raise
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
    try:
        # Made by another user (root beside a container's user): a read-only descriptor locks as well.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise CofeError(f"cannot make the lock file {path}: {error.strerror}",
                        hint=f"this user must be able to write to {path.parent}") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _take(path: Path, what: str) -> int | None:
    """A descriptor of `path` holding its lock; None when this process holds it already, or on a read-only
    file system where nothing can be written to guard."""
    while True:
        fd = _open(path)
        if fd is None:
            return None
        if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) in _held:
            os.close(fd)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _refusal(what, _read_holder(fd))
            os.close(fd)
            raise error from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            # A filesystem without locks (some network mounts): go on unguarded rather than not at all.
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder removed it while releasing it: lock the next one


@contextlib.contextmanager
def locked(directory: Path, what: str) -> Iterator[None]:
    """Hold `directory`/.cofe.lock exclusively, or raise a CofeError naming its holder."""
    path = Path(directory) / LOCK_FILE
    fd = _take(path, what)
    if fd is None:
        yield
        return
    key = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
    _held[key] = fd
    record = json.dumps(Holder.of_this_process().__dict__).encode("utf-8")
    with contextlib.suppress(OSError):  # a read-only descriptor: locked, only without a record
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    try:
        yield
    finally:
        del _held[key]
        # Removed while still locked, so that no file is left behind; whoever opened it meanwhile
        # finds it gone once it gets the lock, and takes a new one.
        if _same_file(fd, path):
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)  # releases the lock


def holder_of(directory: Path) -> Holder | None:
    """Who holds `directory`/.cofe.lock now (not this process), or None when nobody does; takes nothing.
    A holder that left no record (a read-only descriptor, or caught between locking and writing) has pid 0."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # never locked (or not visible here, as FED/ inside a container)
    try:
        if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) in _held:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two `cofe start` check at once
        except BlockingIOError:
            return _read_holder(fd) or Holder(pid=0, command="", since="", host=socket.gethostname())
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        return None
    finally:
        os.close(fd)  # releases the shared lock


def check_unlocked(directory: Path, what: str) -> None:
    """Raise a CofeError naming the holder if a command holds `directory`/.cofe.lock; takes nothing."""
    holder = holder_of(directory)
    if holder is not None:
        raise _refusal(what, holder)


def _federation(layout: FederationLayout) -> str:
    return f"the federation in {layout.root}"


def _workspace(workspace: Path) -> str:
    return f"{workspace.name}'s workspace {workspace}"


@contextlib.contextmanager
def federation_locked(layout: FederationLayout) -> Iterator[None]:
    """The federation and every participant's workspace in it, for a command that writes to them."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(locked(layout.root, _federation(layout)))
        if layout.workspaces.is_dir():
            for workspace in sorted(p for p in layout.workspaces.iterdir() if p.is_dir()):
                stack.enter_context(locked(workspace, _workspace(workspace)))
        yield


@contextlib.contextmanager
def participant_locked(layout: FederationLayout, participant: str) -> Iterator[None]:
    """One participant's workspace, for `cofe start` (nothing when a launcher holds it already)."""
    if launched_by_launcher():
        yield
        return
    workspace = layout.workspace(participant)
    with locked(workspace, _workspace(workspace)):
        # After taking the workspace, not before: a `cofe run` that takes the federation in between
        # then finds this workspace taken, and never both go on.
        check_unlocked(layout.root, _federation(layout))
        yield


def launched_by_launcher() -> bool:
    """This `cofe start` was launched by `cofe run` (or another launcher), which holds its locks."""
    return bool(os.environ.get(LOCKS_HELD_ENV))


def launched_env() -> dict[str, str]:
    """What a launcher that holds the locks passes to the `cofe start` it launches."""
    return {LOCKS_HELD_ENV: str(os.getpid())}
