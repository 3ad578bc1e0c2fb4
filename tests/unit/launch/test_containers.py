"""The pure parts of the container mode: names and aliases, mounts, GPU requests, the build context,
and the errors a user gets when no engine answers. No engine is needed (the real one is exercised in
tests/integration/test_containers.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.launch import containers, docker_engine
from cofe_cli.launch.containers import (
    Mount, check_aggregator_address, check_container_alias, container_name, covering_folders, gpu_request,
    network_name, participant_command, participant_mounts,
)

REPO = Path(__file__).resolve().parents[3]


# --- names and the aggregator's address ---

@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "::1", "10.1.2.3", "Aggregator_1", "-bad", ""])
def test_addresses_a_container_cannot_carry_are_refused_with_the_fix(address):
    with pytest.raises(CofeError) as refused:
        check_container_alias(address)
    assert "--aggregator-address aggregator" in refused.value.hint


@pytest.mark.parametrize("address", ["aggregator", "cofe-aggregator", "fl.example.org"])
def test_dns_names_are_aliases(address):
    assert check_container_alias(address) == address


def test_each_mode_refuses_only_what_it_cannot_dial():
    with pytest.raises(CofeError):  # cofe run --containers: collaborators dial the container by name
        check_aggregator_address("localhost", whole_federation=True, runs_aggregator=True)
    # cofe start aggregator --container publishes the port: localhost and IPs still serve processes.
    check_aggregator_address("localhost", whole_federation=False, runs_aggregator=True)
    check_aggregator_address("192.0.2.7", whole_federation=False, runs_aggregator=True)
    # A collaborator in a container: localhost is the container itself; a routable IP or a name is fine.
    with pytest.raises(CofeError, match="inside a container is the container itself"):
        check_aggregator_address("127.0.0.1", whole_federation=False, runs_aggregator=False)
    check_aggregator_address("192.0.2.7", whole_federation=False, runs_aggregator=False)
    check_aggregator_address("fl.example.org", whole_federation=False, runs_aggregator=False)


def test_names_are_per_federation_and_valid_for_engines(tmp_path):
    one, two = FederationLayout(tmp_path / "one"), FederationLayout(tmp_path / "two")
    assert container_name(one, "site_a") == container_name(FederationLayout(tmp_path / "one"), "site_a")
    assert container_name(one, "site_a") != container_name(two, "site_a")
    assert network_name(one) != network_name(two)
    assert container_name(one, "aggregator").startswith(network_name(one) + "-")
    labels = containers.labels(one, "site_a")
    assert labels[containers.LABEL_FEDERATION] == containers.federation_id(one)
    assert labels[containers.LABEL_PARTICIPANT] == "site_a"


# --- GPUs and the command inside the container ---

def test_gpus_become_device_requests_and_the_collaborator_trains_on_cuda(tmp_path):
    from docker.types import DeviceRequest

    assert dict(DeviceRequest(**gpu_request("all"))) == {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    assert gpu_request("2")["count"] == 2
    assert gpu_request("device=0,1")["device_ids"] == ["0", "1"]
    assert gpu_request(None) is None
    with pytest.raises(CofeError, match="--gpus"):
        gpu_request("lots")
    layout = FederationLayout(tmp_path)
    assert participant_command(layout, "site_a", device="cuda") == ["start", "collaborator", "site_a", "--dir", str(layout.root), "--device", "cuda"]
    assert participant_command(layout, "site_a") == ["start", "collaborator", "site_a", "--dir", str(layout.root)]
    assert participant_command(layout, "aggregator", restart=True)[-1] == "--restart"


# --- mounts ---

def _site(folder: Path, images: Path, relative: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(2):
        for kind in ("img", "seg"):
            (images / f"s{i}_{kind}.nii.gz").write_bytes(b"x")
        image, label = images / f"s{i}_img.nii.gz", images / f"s{i}_seg.nii.gz"
        if relative:
            image, label = os.path.relpath(image, folder), os.path.relpath(label, folder)
        rows.append(f"s{i},{image},{label}")
    for name in ("train.csv", "valid.csv"):
        (folder / name).write_text("SubjectID,Channel_0,Label\n" + "\n".join(rows) + "\n")
    return folder


def test_a_collaborator_sees_its_workspace_writable_and_plan_cert_data_read_only(tmp_path):
    layout = FederationLayout(tmp_path / "fed")
    data = _site(tmp_path / "data" / "site_a", tmp_path / "data" / "site_a" / "images")
    mounts = participant_mounts(layout, "site_a", data)
    workspace = layout.workspace("site_a")
    assert Mount(layout.plans, layout.plans, True) in mounts
    assert Mount(workspace, workspace, False) in mounts
    assert Mount(workspace / "plan", workspace / "plan", True) in mounts
    assert Mount(workspace / "cert", workspace / "cert", True) in mounts
    assert Mount(data, data, True) in mounts  # the images are inside it: one mount
    assert len(mounts) == 5
    assert all(m.source == m.target for m in mounts)  # same paths inside: data.yaml and CSVs keep working
    assert not any(layout.ca == m.source or layout.ca in m.source.parents for m in mounts)
    assert not any(layout.workspace("site_b") == m.source for m in mounts)
    depths = [len(m.target.parts) for m in mounts]
    assert depths == sorted(depths)  # parents are mounted before what is mounted over them


def test_files_a_split_csv_names_elsewhere_are_mounted_too(tmp_path):
    layout = FederationLayout(tmp_path / "fed")
    split = _site(layout.workspace("site_a") / "data", tmp_path / "scans" / "t1")
    _site(tmp_path / "unused", tmp_path / "scans" / "t2", relative=True)
    (split / "valid.csv").write_text("SubjectID,Channel_0,Label\nz,../../../../scans/t2/s0_img.nii.gz,"
                                     + str(tmp_path / "scans" / "t2" / "s0_seg.nii.gz") + "\n")
    read_only = {m.source for m in participant_mounts(layout, "site_a", split) if m.read_only}
    assert {split, tmp_path / "scans" / "t1", tmp_path / "scans" / "t2"} <= read_only
    assert participant_mounts(layout, "aggregator", split) == participant_mounts(layout, "aggregator")


def test_covering_folders_drops_nested_and_collapses_many(tmp_path):
    assert covering_folders({tmp_path / "a", tmp_path / "a" / "b", tmp_path / "c"}) == [tmp_path / "a", tmp_path / "c"]
    many = {tmp_path / "subjects" / f"s{i:03d}" for i in range(containers.MAX_DATA_MOUNTS + 1)}
    assert covering_folders(many) == [tmp_path / "subjects"]


# --- the engine: versions, absence, the image build context ---

def test_old_engines_are_refused():
    docker_engine.check_api_version("1.41", "20.10.24")
    with pytest.raises(CofeError, match="too old") as refused:
        docker_engine.check_api_version("1.39", "18.09.1")
    assert "19.03" in refused.value.hint


def test_no_engine_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(CofeError) as refused:
        docker_engine.connect()
    assert f"no container engine reachable at unix://{tmp_path}/absent.sock" in refused.value.message
    assert "systemctl start docker" in refused.value.hint and "podman" in refused.value.hint


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofe_cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env})


def test_the_cli_without_an_engine_exits_2_with_a_hint_and_no_traceback(tmp_path):
    done = _cli("image", "build", "--source", str(REPO), cwd=tmp_path, DOCKER_HOST=f"unix://{tmp_path}/dead.sock")
    assert done.returncode == 2, done.stderr
    assert "no container engine reachable" in done.stderr and "hint:" in done.stderr
    assert "Traceback" not in done.stderr


def test_gpus_without_a_container_is_refused_before_anything_runs(tmp_path):
    done = _cli("run", "--dir", str(tmp_path), "--gpus", "all", "--gandlf-config", "x.yaml", "--collaborator", "a=/x", cwd=tmp_path)
    assert done.returncode == 2 and "--containers" in done.stderr


def test_pem_bundles_are_split_one_certificate_per_file():
    block = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert docker_engine.split_pem_bundle(f"junk\n{block}\n{block}\n") == [block + "\n", block + "\n"]
    assert docker_engine.split_pem_bundle("no certificates") == []


def test_the_build_context_is_small_and_carries_the_extra_ca(tmp_path):
    bundle = tmp_path / "proxy.pem"
    block = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    bundle.write_text(block * 2)
    context = docker_engine.build_context(REPO, bundle)
    names = tarfile.open(fileobj=io.BytesIO(context.read())).getnames()
    assert "Dockerfile" in names and "pyproject.toml" in names and "cofe_cli/app.py" in names
    assert "docker/extra-ca/cofe-extra-00.crt" in names and "docker/extra-ca/cofe-extra-01.crt" in names
    assert not any(n.startswith((".venv", ".git/", "tests/", "workspaces/")) or "__pycache__" in n for n in names)
    assert not (REPO / "docker" / "extra-ca" / "cofe-extra-00.crt").exists()  # never written into the repository


def test_the_dockerfile_builds_with_the_classic_builder():
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
    assert "--mount=" not in text and "# syntax=" not in text and "--secret" not in text  # BuildKit-only
    assert "USER 10001" in text and 'ENTRYPOINT ["cofe"]' in text


def test_data_the_containers_user_cannot_read_is_refused_before_starting(tmp_path):
    closed, open_ = tmp_path / "closed", tmp_path / "open"
    closed.mkdir(mode=0o700)
    open_.mkdir(mode=0o755)
    os.chmod(closed, 0o700)
    os.chmod(open_, 0o755)
    stranger = os.getuid() + 10001  # neither the owner nor in the group
    containers.check_readable_by([Mount(open_, open_, True), Mount(closed, closed, False)], stranger, stranger)
    with pytest.raises(CofeError, match=f"uid {stranger}") as refused:
        containers.check_readable_by([Mount(closed, closed, True)], stranger, stranger)
    assert "chmod -R o+rX" in refused.value.hint
    containers.check_readable_by([Mount(closed, closed, True)], os.stat(closed).st_uid, stranger)  # its owner can


def test_plans_are_opened_to_the_containers_user(tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir(mode=0o700)
    os.chmod(plans, 0o700)
    (plans / "plan.yaml").write_text("x")
    os.chmod(plans / "plan.yaml", 0o600)
    containers.open_to_others(plans)
    assert os.stat(plans).st_mode & 0o005 == 0o005 and os.stat(plans / "plan.yaml").st_mode & 0o004
