"""Differential privacy as GaNDLF 0.1.5 configures it: `cofe init` fills in GaNDLF's defaults and
refuses every bad value of a `differential_privacy` key (exit 2, one line), before anything is written;
secure aggregation, which OpenFL's aggregator can unmask, is refused as an option and in a plan.

The training itself (Opacus at every site) is tested in tests/integration/test_privacy.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from cofe_cli.doctor.plan_and_versions import check_plan
from cofe_cli.errors import CofeError
from cofe_cli.federation import plan_hash
from cofe_cli.plan.builder import PlanOptions, build_plan, refuse_secure_aggregation
from cofe_cli.plan.gandlf_config import DP_DEFAULTS, normalise_gandlf_config
from cofe_cli.plan.workspaces import CollaboratorData
from cli_assertions import refused, run_cofe
from unit_federation import gandlf_config, write_federation

GANDLF_DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp", "delta": 1e-5}


def _init(tmp_path, privacy, *options):
    config = tmp_path / "with_dp.yaml"
    config.write_text(yaml.safe_dump({**gandlf_config(), "differential_privacy": privacy}))
    # The site gives its data itself: init checks the config and options alone.
    return run_cofe("init", "--dir", tmp_path / "fed", "--gandlf-config", config, "--collaborator", "site_a",
                    *options, cwd=tmp_path)


@pytest.mark.parametrize("key,value,message", [
    ("noise_multiplier", -1.0, "noise_multiplier must be more than 0"),
    ("noise_multiplier", 0, "noise_multiplier must be more than 0"),
    ("max_grad_norm", 0, "max_grad_norm (the per-sample clipping norm) must be more than 0"),
    ("delta", 1.0, "delta must be between 0 and 1"),
    ("delta", 0, "delta must be between 0 and 1"),
    ("epsilon", -2, "epsilon must be more than 0"),
    ("accountant", "moments", "accountant 'moments' is not one GaNDLF knows"),
    ("noise_multiplier", "loud", "noise_multiplier must be a number"),
    ("secure_mode", "yes", "secure_mode must be true or false"),
    ("noise_multipler", 1.0, "has no key 'noise_multipler'"),
])
def test_a_bad_dp_value_is_refused_at_init_with_one_line(tmp_path, key, value, message):
    result = _init(tmp_path, {**GANDLF_DP, key: value})
    refused(result, message)
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "fed").exists()


@pytest.mark.parametrize("privacy", [True, {}])
def test_dp_with_gandlf_defaults(privacy):
    normalised = normalise_gandlf_config({**gandlf_config(), "differential_privacy": privacy, "batch_size": 2})
    assert normalised["differential_privacy"] == {**DP_DEFAULTS, "physical_batch_size": 2}


def test_given_dp_values_are_kept_as_floats():
    normalised = normalise_gandlf_config({**gandlf_config(), "differential_privacy": {**GANDLF_DP, "epsilon": "8"}})
    assert normalised["differential_privacy"]["epsilon"] == 8.0
    assert normalised["differential_privacy"]["accountant"] == "rdp"


@pytest.mark.parametrize("privacy", [None, False])
def test_a_config_that_does_not_ask_for_privacy_trains_without_it(privacy):
    normalised = normalise_gandlf_config({**gandlf_config(), "differential_privacy": privacy})
    # GaNDLF 0.1.5 would read `false` as DP with its defaults; off means off.
    assert "differential_privacy" not in normalised


def test_the_plan_gives_each_site_the_epochs_epsilon_is_spread_over_and_reports_epsilon():
    config = normalise_gandlf_config({**gandlf_config(), "differential_privacy": GANDLF_DP})
    plan = build_plan(config, PlanOptions(rounds=3, aggregator_address="localhost", aggregator_port=50051,
                                          epochs_per_round=2, max_epsilon=5.0))
    settings = plan["task_runner"]["settings"]
    assert settings["privacy_planned_epochs"] == 6 and settings["max_epsilon"] == 5.0
    assert "epsilon" in plan["tasks"]["train"]["kwargs"]["metrics"]


def test_max_epsilon_without_dp_is_refused(tmp_path):
    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump(gandlf_config()))
    result = run_cofe("init", "--dir", tmp_path / "fed", "--gandlf-config", config, "--collaborator", "site_a",
                      "--max-epsilon", "4", cwd=tmp_path)
    refused(result, "--max-epsilon needs differential privacy")


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_bad_max_epsilon_is_refused(tmp_path, value):
    refused(_init(tmp_path, GANDLF_DP, "--max-epsilon", value), "--max-epsilon must be a number more than 0")


def test_fedprox_with_dp_is_refused(tmp_path):
    refused(_init(tmp_path, GANDLF_DP, "--algorithm", "fedprox"), "FedProx cannot be combined with differential privacy")


def test_running_norm_statistics_with_dp_are_refused(tmp_path):
    refused(_init(tmp_path, GANDLF_DP, "--validation-norm", "running"), "--validation-norm running cannot be combined")


def test_the_secure_aggregation_option_is_refused_with_the_reason(tmp_path):
    result = _init(tmp_path, GANDLF_DP, "--secure-aggregation")
    refused(result, "reconstructs every site's secrets during set-up")
    assert not (tmp_path / "fed").exists()


def test_a_plan_asking_for_secure_aggregation_is_refused(tmp_path):
    plan = build_plan(gandlf_config(), PlanOptions(rounds=1, aggregator_address="localhost", aggregator_port=50051))
    refuse_secure_aggregation(plan)
    plan["aggregator"]["settings"]["secure_aggregation"] = True
    with pytest.raises(CofeError, match="reconstructs every site's secrets"):
        refuse_secure_aggregation(plan)

    # cofe doctor, on a plan hand-edited into asking for it (its hash re-recorded, as a careless edit would).
    layout = write_federation(tmp_path / "fed", config=gandlf_config(), address="localhost",
                              collaborators=[CollaboratorData("site_a", None)])
    text = (layout.plans / "plan.yaml").read_text().replace("rounds_to_train:", "secure_aggregation: true\n    rounds_to_train:", 1)
    (layout.plans / "plan.yaml").write_text(text)
    manifest = dataclasses.replace(layout.load_manifest(), plan_sha384=plan_hash(text))
    check = check_plan(layout, manifest, "site_a")
    assert check.status == "FAIL" and "reconstructs every site's secrets" in check.detail
