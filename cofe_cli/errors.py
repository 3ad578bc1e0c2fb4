"""The one error type users see: a message saying what is wrong and a hint saying what to do."""

from __future__ import annotations

import errno
from pathlib import Path


class CofeError(Exception):
    """Bad input or a failed precondition. Printed as one line plus a hint, exit code 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class FederationFailed(CofeError):
    """A participant failed while the federation ran (not bad input): exit code 1, or 130 on Ctrl-C."""

    def __init__(self, message: str, hint: str | None = None, *, participant: str | None = None,
                 log_tail: list[str] | None = None, exit_code: int = 1):
        super().__init__(message, hint)
        self.participant = participant
        self.log_tail = list(log_tail or [])
        self.exit_code = exit_code


# errno -> (what went wrong, what to do); a folder cofe writes to, named in the message.
_WRITE_FAILURES = {
    errno.EROFS: ("it is on a read-only file system", "choose a folder on a writable file system"),
    errno.ENOSPC: ("no space is left on its device", "free space there, or choose a folder on a file system with room"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within your quota, or choose another folder"),
    errno.EACCES: ("permission denied", "choose a folder you may write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you may write to, or fix its permissions"),
    errno.EEXIST: ("it is a file, not a folder", "give a folder (it is made if missing), not a file"),
    errno.ENOTDIR: ("a part of its path is a file, not a folder", "give a folder (it is made if missing), not a path through a file"),
}


def os_failure(error: OSError) -> CofeError:
    """An OSError no command turned into a message (a read-only, unwritable or full folder met anywhere):
    one line naming the file, instead of a traceback."""
    reason, hint = _WRITE_FAILURES.get(error.errno, (error.strerror or str(error), "check the path and its file system"))
    if not error.filename:
        return CofeError(error.strerror or str(error), hint=hint)
    return CofeError(f"{error.filename}: {reason}", hint=hint)


def is_write_failure(error: BaseException) -> bool:
    """An OSError of the folder being written (full, read-only, no permission, ...), which write_failure words."""
    return isinstance(error, OSError) and error.errno in _WRITE_FAILURES


def write_failure(error: OSError, folder: Path, option: str = "--dir") -> CofeError:
    """What an OSError while writing into `folder` (the user's `option`) means, as one line and a hint."""
    reason, hint = _WRITE_FAILURES.get(error.errno, (error.strerror or str(error), "check the folder and its file system"))
    path = Path(error.filename) if error.filename else None
    inside = path is None or path == Path(folder) or Path(folder) in path.parents  # staging names inside are noise
    return CofeError(f"cannot write {option} {folder}: {reason}" + ("" if inside else f" ({path})"), hint=hint)
