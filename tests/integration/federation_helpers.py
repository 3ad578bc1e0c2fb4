"""Helpers for the integration tests: run cofe as a user would, and look for what it left running."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

SITES = ("site_a", "site_b")


def cofe(*args, timeout: float = 900, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    if check:
        assert result.returncode == 0, f"cofe {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def cofe_background(*args, log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "cofe_cli", *map(str, args)], stdout=handle, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def cofe_piped(*args):
    """`cofe ARGS` in the background with its output piped (read it with .communicate()); terminated if
    the block leaves it running (a failed assertion, a timeout)."""
    process = subprocess.Popen([sys.executable, "-m", "cofe_cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and any(str(path) in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def collaborator_args(site_data: dict[str, Path]) -> list[str]:
    args = []
    for name, folder in site_data.items():
        args += ["--collaborator", f"{name}={folder}"]
    return args
