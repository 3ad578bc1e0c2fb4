"""What cofe prints is what the user must read out: no emoji substitution in fingerprints or hashes, no
plan dump or traceback of a participant in the way of the one line that says why it stopped."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from cofe_cli import console as console_module
from cofe_cli.console import print_error
from cofe_cli.participant import LOG_CAPTURED_ENV
from cofe_cli.locks import LOCKS_HELD_ENV

FINGERPRINT = "14:B9:EB:CD:60:AF:08:A9:AA:21:15:CE:EA:E5:65:08:9B:21:32:45:84:F6:A2:C3:F5:B0:3C:F4:AB:75:57:2C"


def _capture(monkeypatch, name: str) -> io.StringIO:
    buffer = io.StringIO()
    original = getattr(console_module, name)
    monkeypatch.setattr(original, "file", buffer)
    return buffer


def test_fingerprints_print_as_they_are(monkeypatch):
    out = _capture(monkeypatch, "console")
    console_module.console.print(f"Root CA fingerprint (SHA-256): [bold]{FINGERPRINT}[/]", soft_wrap=True)
    assert FINGERPRINT in out.getvalue()


def test_errors_print_fingerprints_as_they_are(monkeypatch):
    err = _capture(monkeypatch, "err_console")
    print_error(f"the certificate comes from a CA whose root fingerprint is {FINGERPRINT}", "hint :AB: :ok:")
    assert FINGERPRINT in err.getvalue() and ":AB: :ok:" in err.getvalue()


# A participant (`cofe start`) as a person runs it in a terminal: its console and its log file.
PARTICIPANT = """
import logging, sys
from pathlib import Path
from cofe_cli.commands.start import _run_participant
from cofe_cli.errors import FederationFailed
from cofe_cli.participant import Participant

def body(engine, workspace):
    logging.getLogger("openfl.federated.plan.plan").info("Parsing Federated Learning Plan : [green]SUCCESS[/]")
    logging.getLogger("openfl.component.collaborator").info("Waiting for tasks...")
    if sys.argv[2] == "refused":
        raise FederationFailed("the aggregator refused site_a: its certificate is revoked", hint="ask the coordinator")
    raise ValueError("volume 3 is unreadable")

_run_participant(Participant("site_a", Path(sys.argv[1]).parent, Path(sys.argv[1])), body)
"""


@pytest.mark.parametrize(("ending", "line"), [
    ("refused", "error: the aggregator refused site_a: its certificate is revoked"),
    ("crashed", "error: site_a failed: ValueError: volume 3 is unreadable"),
])
def test_a_participant_console_shows_one_error_line_and_its_log_the_rest(tmp_path, ending, line):
    (tmp_path / "site_a").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (LOG_CAPTURED_ENV, LOCKS_HELD_ENV)}
    done = subprocess.run([sys.executable, "-c", PARTICIPANT, str(tmp_path / "site_a"), ending], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    console = done.stdout + done.stderr
    assert done.returncode == 1, console
    assert line in done.stderr.splitlines() and "hint:" in done.stderr, console
    assert "Waiting for tasks..." in console, "OpenFL's progress stays on the console"
    assert "Traceback" not in console and "Parsing Federated Learning Plan" not in console, console
    log = (tmp_path / "site_a" / "logs" / "site_a.log").read_text()
    assert "[green]SUCCESS[/]" in log and "Traceback (most recent call last)" in log and "Waiting for tasks..." in log
