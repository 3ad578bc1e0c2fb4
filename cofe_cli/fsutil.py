"""Writes that never leave a half-written file or folder behind: temp path, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # The mode is set before any byte is written so a private key is never world-readable.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """For a writer that takes a path (protobuf, torch.save): yield an unused sibling path; what was
    written there replaces `target` whole (synced first), so a crash or a kill -9 mid-write leaves the
    old file, never half of the new one. Nothing written there leaves `target` as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    partial.unlink()  # a unique name the writer creates; if it creates none, there is nothing to publish
    try:
        yield partial
        if partial.exists():
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


@contextlib.contextmanager
def staging_folder(within: Path, prefix: str, suffix: str = "") -> Iterator[Path]:
    """An empty folder inside `within`, on the file system of what it will replace, so that what is built
    in it goes into place by renames alone (see `swap_in`). It goes when the block ends, with whatever is
    left in it (what `swap_in` moved aside included), whether the block worked or not; on failure, so do
    the folders above it that had to be made for it."""
    within = Path(within)
    made = [folder for folder in (within, *within.parents) if not folder.exists()]  # deepest first
    within.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=within))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:  # only if empty: something else may have been written there meanwhile
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(stage, ignore_errors=True)


def swap_in(built: Path, target: Path, stage: Path) -> None:
    """Put `built` (a file or folder in the staging folder `stage`) where `target` is, by renames alone.
    A folder already at `target` is first renamed into `stage` and goes with it; a file is replaced
    in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        os.replace(target, Path(tempfile.mkdtemp(prefix="replaced-", dir=stage)) / target.name)
    os.replace(built, target)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty folder beside `target`; on success it replaces `target` whole, on failure it vanishes."""
    target = Path(target)
    with staging_folder(target.parent, prefix=f".{target.name}.", suffix=".staging") as stage:
        built = stage / target.name
        built.mkdir()
        yield built
        swap_in(built, target, stage)


def _topmost_missing(path: Path) -> Path | None:
    missing = None
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing = candidate
    return missing


@contextlib.contextmanager
def writing_into(folder: Path, option: str = "--dir") -> Iterator[Path]:
    """Make `folder` and write into it: an OSError (read-only, full, not a folder, ...) becomes one line
    naming the folder, and on any failure a folder made here is removed again with what was written
    into it, so a failed command leaves nothing behind, not even an empty folder."""
    from cofe_cli.errors import write_failure

    folder = Path(folder)
    made = _topmost_missing(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    except BaseException as error:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(error, OSError):
            raise write_failure(error, folder, option) from None
        raise
