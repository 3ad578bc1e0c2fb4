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

