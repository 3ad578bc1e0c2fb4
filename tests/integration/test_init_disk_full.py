"""`cofe init` on a disk that fills up while OpenFL writes the initial model (~2 MB): one error line, and
nothing left behind, not even the --dir it made. The disk is a 1 MiB tmpfs mounted in a private mount
namespace of its own (root only), so it vanishes with the command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from federation_helpers import collaborator_args

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="mounting a small tmpfs needs root and unshare")

# Mount a tmpfs of $1 at $2, run the rest, then list what is left on it (after a marker line).
SMALL_DISK = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; "$@"; code=$?; echo "left:"; ls -A "$MOUNT"; exit $code'


def test_init_on_a_full_disk_says_so_and_leaves_nothing(tmp_path: Path, site_data, fast_config) -> None:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    fed = mount / "fed"
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SMALL_DISK, "sh", "1m", str(mount),
               sys.executable, "-m", "cofe_cli", "init", "--dir", str(fed), "--gandlf-config", str(fast_config),
               *collaborator_args(site_data)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "MOUNT": str(mount), "NO_COLOR": "1", "COLUMNS": "200"})
    shown = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode != 99, f"could not mount a tmpfs: {shown}"
    assert done.returncode == 2, shown
    assert "Traceback" not in done.stdout + done.stderr, shown
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write --dir {fed}: no space is left on its device"], shown
    assert any(line.startswith("hint: free space there") for line in done.stderr.splitlines()), shown
    assert done.stdout.split("left:\n", 1)[1].strip() == "", f"init left files on the full disk: {shown}"
