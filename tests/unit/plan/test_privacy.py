"""A privacy setting that cofe cannot apply is refused at `cofe init`, never silently dropped.

OpenFL's GaNDLF runner trains through GaNDLF's train_network, which has no Opacus wiring; until cofe
applies DP-SGD itself, a config with `differential_privacy` must not become a federation.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from cofe_cli.errors import CofeError
from cofe_cli.plan.gandlf_config import normalise_gandlf_config
from cli_assertions import refused
from unit_federation import gandlf_config

GANDLF_DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp", "delta": 1e-5}


@pytest.mark.parametrize("privacy", [GANDLF_DP, {"epsilon": 8.0}, True, {"noise_multiplier": 0}])
def test_a_config_asking_for_differential_privacy_is_refused(privacy):
    with pytest.raises(CofeError, match="differential_privacy") as refusal:
        normalise_gandlf_config({**gandlf_config(), "differential_privacy": privacy})
    assert refusal.value.hint


@pytest.mark.parametrize("privacy", [None, False, {}])
def test_a_config_that_does_not_ask_for_privacy_is_accepted(privacy):
    normalised = normalise_gandlf_config({**gandlf_config(), "differential_privacy": privacy})
    assert normalised["model"]["architecture"] == "resunet"


def test_cofe_init_refuses_a_dp_config_and_writes_nothing(tmp_path):
    config = tmp_path / "with_dp.yaml"
    config.write_text(yaml.safe_dump({**gandlf_config(), "differential_privacy": GANDLF_DP}))
    data = tmp_path / "site_a"
    data.mkdir()
    fed = tmp_path / "fed"
    result = subprocess.run([sys.executable, "-m", "cofe_cli", "init", "--dir", str(fed), "--gandlf-config", str(config),
                             "--collaborator", f"site_a={data}"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    refused(result, "differential_privacy")
    assert not fed.exists()
