"""Where `cofe image build` finds what it builds from, and which files its build context holds.

It used to look only beside the running package, so in a clone after README's own `pip install .` (not
editable) it refused with "run it from a clone ... (an editable install)". Now: --source, else the clone
the command runs in (the current folder or one above), else an editable install's clone, else the files
the installed wheel carries. An installed package is simulated here as setuptools lays it out (the
links in cofe_cli/container_image/ become copies); tests/integration/test_packaging.py builds the real wheel.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cofe_cli.errors import CofeError
from cofe_cli.launch import docker_engine

REPO = Path(__file__).resolve().parents[3]
# Prints the build context's members (and the Dockerfile's text) as the cofe on PYTHONPATH assembles it here.
SHOW_CONTEXT = """
import json, tarfile
from cofe_cli.launch.docker_engine import build_context, build_source
with build_source(None) as root:
    archive = tarfile.open(fileobj=build_context(root, None))
    dockerfile = archive.extractfile("Dockerfile").read().decode()
    print(json.dumps({"root": str(root), "members": archive.getnames(), "dockerfile": dockerfile}))
"""


def installed_copy(site: Path) -> Path:
    """cofe_cli as a non-editable install leaves it in site-packages: files, no links, no clone around it."""
    shutil.copytree(REPO / "cofe_cli", site / "cofe_cli", ignore=shutil.ignore_patterns("__pycache__"))
    assert not any(path.is_symlink() for path in (site / "cofe_cli").rglob("*"))
    return site


def show_context(*, site: Path, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", SHOW_CONTEXT], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fake_clone(root: Path) -> Path:
    """The files the Dockerfile copies, as a clone of cofe's repository has them (plus what it leaves out)."""
    for name in ("Dockerfile", "pyproject.toml", "README.md", ".dockerignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, root / name)
    shutil.copytree(REPO / "cofe_cli", root / "cofe_cli", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "docker", root / "docker")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")
    (root / "sub" / "deeper").mkdir(parents=True)
    return root


def test_in_a_clone_after_a_plain_install_it_builds_from_that_clone(tmp_path: Path) -> None:
    site = installed_copy(tmp_path / "site-packages")
    clone = fake_clone(tmp_path / "clone")
    for cwd in (clone, clone / "sub" / "deeper"):
        shown = show_context(site=site, cwd=cwd)
        assert shown["root"] == str(clone)
        members = set(shown["members"])
        assert {"Dockerfile", "pyproject.toml", "README.md", "cofe_cli/app.py", "docker/extra-ca/README.md"} <= members
        assert not any(name.startswith(("tests", "sub", "cofe_cli/container_image")) for name in members)
        assert shown["dockerfile"] == (REPO / "Dockerfile").read_text()


def test_outside_any_clone_it_builds_from_the_installed_package(tmp_path: Path) -> None:
    site = installed_copy(tmp_path / "site-packages")
    elsewhere = tmp_path / "home" / "someone"
    elsewhere.mkdir(parents=True)
    shown = show_context(site=site, cwd=elsewhere)
    members = set(shown["members"])
    package = {f"cofe_cli/{path.relative_to(REPO / 'cofe_cli')}" for path in (REPO / "cofe_cli").rglob("*.py")}
    assert {"Dockerfile", "pyproject.toml", "README.md", "docker/extra-ca", "docker/extra-ca/README.md"} | package <= members
    assert not any("__pycache__" in name or name.startswith("cofe_cli/container_image") for name in members)
    assert shown["dockerfile"] == (REPO / "Dockerfile").read_text()
    assert not Path(shown["root"]).exists(), "the assembled context is a temporary folder, removed after the build"


def test_an_install_without_the_build_files_says_what_to_do(tmp_path: Path) -> None:
    site = installed_copy(tmp_path / "site-packages")
    shutil.rmtree(site / "cofe_cli" / docker_engine.PACKAGED_BUILD_FILES)
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run([sys.executable, "-c", SHOW_CONTEXT], cwd=tmp_path / "elsewhere", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert "was installed without the files its image is built from (Dockerfile, pyproject.toml, README.md" in done.stderr


@pytest.mark.parametrize("make", [lambda tmp: tmp, lambda tmp: fake_clone(tmp / "c") / "cofe_cli"],
                         ids=["empty-folder", "inside-the-package"])
def test_source_must_be_the_root_of_a_clone(tmp_path: Path, make) -> None:
    with pytest.raises(CofeError, match="no cofe source tree at") as refused:
        with docker_engine.build_source(make(tmp_path)):
            pass
    assert "--source" in refused.value.hint


def test_a_folder_of_another_project_is_not_taken_for_a_clone(tmp_path: Path) -> None:
    clone = fake_clone(tmp_path / "other")
    text = (clone / "pyproject.toml").read_text()
    (clone / "pyproject.toml").write_text(text.replace('name = "cofe"', 'name = "not-cofe"'))
    assert not docker_engine.is_source_tree(clone)
    assert docker_engine.is_source_tree(fake_clone(tmp_path / "real"))


def test_the_extra_ca_joins_an_assembled_context_too(tmp_path: Path) -> None:
    (tmp_path / "context").mkdir()
    root = docker_engine.assemble_source(REPO / "cofe_cli", tmp_path / "context")
    bundle = tmp_path / "proxy.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    names = tarfile.open(fileobj=io.BytesIO(docker_engine.build_context(root, bundle).read())).getnames()
    assert "docker/extra-ca/cofe-extra-00.crt" in names and "Dockerfile" in names
