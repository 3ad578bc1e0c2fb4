"""The example federation committed at the repository's top level is what `cofe init` makes today."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cofe_cli.demo.synthetic import demo_gandlf_config
from cofe_cli.federation import FederationLayout, plan_hash
from cofe_cli.plan.builder import PlanOptions, build_plan, dump_yaml
from cofe_cli.plan.gandlf_config import normalise_gandlf_config

REPO = Path(__file__).resolve().parents[3]


def test_committed_example_plan_matches_the_builder():
    layout = FederationLayout(REPO)
    manifest = layout.load_manifest()
    config = normalise_gandlf_config(demo_gandlf_config(), gandlf_version=manifest.versions["gandlf"])
    plan_yaml = dump_yaml(build_plan(config, PlanOptions(rounds=manifest.rounds, aggregator_address=manifest.aggregator_address,
                                                         aggregator_port=manifest.aggregator_port)))
    assert (layout.plans / "plan.yaml").read_text() == plan_yaml
    assert manifest.plan_sha384 == plan_hash(plan_yaml)
    # The initial model's weights are random and not committed; `cofe init` records their SHA-384.
    assert re.fullmatch(r"[0-9a-f]{96}", manifest.init_model_sha384 or "")
    assert yaml.safe_load((layout.plans / "gandlf_config.yaml").read_text()) == config
    for participant in ("aggregator", *manifest.collaborators):
        assert (layout.workspace(participant) / "plan" / "plan.yaml").read_text() == plan_yaml
