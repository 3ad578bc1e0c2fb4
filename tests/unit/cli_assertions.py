"""Running the real `cofe` CLI and asserting on how it ended, shared by the unit tests that drive it; and
the same for a call of one of cofe's functions (call_refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cofe_cli.errors import CofeError


def run_cofe(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m cofe_cli ARGS` as a user runs it, without colours, on a wide terminal."""
    return subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], cwd=cwd,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ok(result):
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def refused(result, message: str) -> None:
    """Bad input: exit 2, an `error:` line naming the problem, a `hint:` line, no traceback."""
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any(message in line for line in errors), shown
    assert any(line.startswith("hint:") and len(line) > 7 for line in result.stderr.splitlines()), shown


def call_refused(call, *args, **kwargs) -> CofeError:
    """`call(...)` refuses its input: a CofeError that says what to do (a hint); returned to check its words."""
    with pytest.raises(CofeError) as error:
        call(*args, **kwargs)
    assert error.value.hint, "every refusal says what to do"
    return error.value
