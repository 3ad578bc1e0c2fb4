"""The wheel README's `pip install .` builds carries what `cofe image build` needs: installed (not editable)
and run outside any clone, cofe assembles the build context from the package alone. Builds a real wheel
(setuptools from the package index), so it lives here rather than in the unit tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOW_CONTEXT = """
import json, tarfile
from cofe_cli.launch.docker_engine import build_context, build_source
with build_source(None) as root:
    archive = tarfile.open(fileobj=build_context(root, None))
    print(json.dumps({"members": archive.getnames(), "dockerfile": archive.extractfile("Dockerfile").read().decode()}))
"""


def test_a_plain_install_builds_its_image_context_from_the_package(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: pip builds in the source tree and would leave build/ in the repository
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, tracked.split("\0")):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_symlink():
            os.symlink(os.readlink(REPO / name), source / name)
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                   check=True, timeout=600)
    wheel = next(wheels.glob("cofe-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in archive.namelist() if "/container_image/" in name}
    assert shipped == {f"cofe_cli/container_image/{name}": (REPO / name).read_bytes()
                       for name in ("Dockerfile", "pyproject.toml", "README.md")}

    site = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", SHOW_CONTEXT], cwd=elsewhere, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert {"Dockerfile", "pyproject.toml", "README.md", "cofe_cli/app.py", "docker/extra-ca/README.md"} <= set(shown["members"])
    assert shown["dockerfile"] == (REPO / "Dockerfile").read_text()
