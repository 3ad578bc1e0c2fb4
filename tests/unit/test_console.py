"""What cofe prints is what the user must read out: no emoji substitution in fingerprints or hashes."""

from __future__ import annotations

import io

from cofe_cli import console as console_module
from cofe_cli.console import print_error

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
