"""The one error type users see: a message saying what is wrong and a hint saying what to do."""

from __future__ import annotations


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
