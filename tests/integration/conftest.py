"""Real federations: real OpenFL processes over gRPC with mutual TLS, real GaNDLF training on tiny volumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data
from federation_helpers import SITES


@pytest.fixture(scope="session")
def site_data(tmp_path_factory) -> dict[str, Path]:
    return make_demo_federation_data(tmp_path_factory.mktemp("data"), list(SITES), n_train=3, n_valid=2)


@pytest.fixture(scope="session")
def fast_config(tmp_path_factory) -> Path:
    """The demo's config, trimmed so a round takes seconds: the tests check the machinery, not learning."""
    config = demo_gandlf_config()
    config["q_samples_per_volume"] = 1
    config["q_max_length"] = 1
    path = tmp_path_factory.mktemp("config") / "gandlf.yaml"
    path.write_text(yaml.safe_dump(config))
    return path



# --- container tests (tests/integration/test_containers.py) ---------------------------------------

TEST_IMAGE = "cofe-test:latest"


@pytest.fixture(scope="session")
def container_engine():
    """A client for the engine DOCKER_HOST names. Absent: skipped on a laptop, a failure in CI (CI=true),
    where .ci/run starts the engine and a skipped container test would hide a broken setup."""
    import os

    from cofe_cli.errors import CofeError
    from cofe_cli.launch.docker_engine import connect

    try:
        return connect()
    except CofeError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container tests, but: {error}")
        pytest.skip(f"no container engine: {error.message} (`eval \"$(scripts/start-docker-engine.sh)\"` starts one)")


@pytest.fixture(scope="session")
def container_image(container_engine):
    """cofe's image, built once per session from the repo's Dockerfile. The base image comes from
    COFE_TEST_BASE_IMAGE (no registry is reachable in CI: scripts/start-docker-engine.sh makes one),
    the extra CA bundle (a TLS-intercepting proxy's) from COFE_TEST_EXTRA_CA."""
    import os
    import time

    from federation_helpers import cofe

    base = os.environ.get("COFE_TEST_BASE_IMAGE", "python:3.11-slim")
    args = ["image", "build", "--base-image", base, "--tag", TEST_IMAGE]
    if os.environ.get("COFE_TEST_EXTRA_CA"):
        args += ["--extra-ca-bundle", os.environ["COFE_TEST_EXTRA_CA"]]
    started = time.monotonic()
    result = cofe(*args, timeout=3000)
    assert result.returncode == 0, f"cofe image build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    print(f"\nimage {TEST_IMAGE} built in {time.monotonic() - started:.0f} s")
    return TEST_IMAGE
