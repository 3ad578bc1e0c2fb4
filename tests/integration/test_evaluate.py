"""`cofe evaluate`: a real evaluation round (OpenFL's `evaluation` task group) over gRPC with mutual TLS,
at the demo's 3 training sites plus a 4th that never trained; the training sites' figures equal the
federation's own aggregated_model_validation of the same model."""

from __future__ import annotations

import csv

import pytest

from cofe_cli.demo.synthetic import make_demo_federation_data
from federation_helpers import cofe, free_port, processes_using

pytestmark = pytest.mark.federation
TRAINING_SITES = ("site_a", "site_b", "site_c")


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_best_model_at_three_training_sites_and_a_new_one(tmp_path, fast_config):
    from openfl.pipelines import NoCompressionPipeline
    from openfl.protocols import utils

    data = make_demo_federation_data(tmp_path / "data", [*TRAINING_SITES, "site_d"], n_train=3, n_valid=2)
    fed = tmp_path / "fed"
    sites = [arg for name in TRAINING_SITES for arg in ("--collaborator", f"{name}={data[name]}")]
    cofe("run", "--dir", fed, "--gandlf-config", fast_config, *sites, "--rounds", 2, "--port", free_port(),
         "--timeout", 900, check=True)

    result = cofe("evaluate", "--dir", fed, "--model", "best", *(f"--collaborator={name}" for name in TRAINING_SITES),
                  "--collaborator", f"site_d={data['site_d']}", "--timeout", 600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Federated evaluation" in result.stdout and "weighted mean" in result.stdout
    assert processes_using(fed) == []

    evaluation = _rows(fed / "results" / "evaluation.csv")
    plan_sha384 = (fed / "plans" / "federation.yaml").read_text().split("plan_sha384: ")[1].split()[0]
    assert {r["site"] for r in evaluation} == {*TRAINING_SITES, "site_d", "weighted mean"}
    assert all(r["model"] == "best" and r["plan_sha384"] == plan_sha384 for r in evaluation)

    # The best model is the global model of the round it was saved in; that round's validation at the
    # training sites is what the evaluation round must reproduce.
    best = utils.load_proto(str(fed / "workspaces" / "aggregator" / "save" / "best.pbuf"))
    _, best_round = utils.deconstruct_model_proto(best, NoCompressionPipeline())
    metrics = [r for r in _rows(fed / "results" / "metrics.csv") if r["task"] == "aggregated_model_validation"]
    # The best model is the round whose global model had the highest aggregated Dice (not OpenFL's
    # choice, which compares the loss with the same score).
    dice_by_round = {int(r["round"]): float(r["value"]) for r in metrics
                     if r["collaborator"] == "aggregator" and r["metric"] == "valid_dice"}
    assert best_round == max(dice_by_round, key=dice_by_round.get), (best_round, dice_by_round)
    training = {(r["collaborator"], r["metric"]): float(r["value"]) for r in metrics if int(r["round"]) == best_round}
    for row in evaluation:
        if row["site"] in TRAINING_SITES:
            assert abs(float(row["value"]) - training[(row["site"], row["metric"])]) < 1e-4, row
            assert row["subjects"] == "2"
    dice = {r["site"]: (float(r["value"]), int(r["subjects"])) for r in evaluation if r["metric"] == "valid_dice"}
    total = sum(n for site, (_, n) in dice.items() if site != "weighted mean")
    mean = sum(v * n for site, (v, n) in dice.items() if site != "weighted mean") / total
    assert dice["weighted mean"] == (pytest.approx(mean, abs=1e-4), total)

    # `cofe infer`: GaNDLF's inference path with the federation's instance-norm choice reproduces the
    # federation's validation of the best model at a site (the issue asks for 0.02 Dice; it is exact).
    out = tmp_path / "predictions"
    inferred = cofe("infer", "--dir", fed, "--data", data["site_a"] / "valid.csv", "--out", out, check=True)
    dice = float(next(line for line in inferred.stdout.splitlines() if line.strip().startswith("dice:")).split(":")[1])
    assert abs(dice - training[("site_a", "valid_dice")]) < 0.02, (dice, training[("site_a", "valid_dice")])
    subjects = [line.split(",")[0] for line in (data["site_a"] / "valid.csv").read_text().splitlines()[1:] if line]
    assert {mask.parent.name for mask in out.glob("testing/*/*_seg.nii.gz")} == set(subjects)

    # A model that is not of this plan is refused before anything starts.
    import torch

    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state_dict": {"conv.weight": torch.zeros(2, 2)}}, foreign)
    refused = cofe("evaluate", "--dir", fed, "--model", foreign)
    assert refused.returncode == 2 and "not a model of this federation's plan" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
