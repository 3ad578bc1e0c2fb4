"""Assertions on a finished `cofe` command, shared by the unit tests that drive the real CLI."""

from __future__ import annotations


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
