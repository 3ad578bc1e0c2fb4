"""Differential privacy at every site (engine/privacy.py): a real 2-site federation reports each site's
epsilon per round, equal to an Opacus accountant computed here; a restarted collaborator continues its
accountant; and the training really clips per-sample gradients and adds noise of the configured scale."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cofe_cli.demo.synthetic import demo_gandlf_config, make_site_dataset
from cofe_cli.plan.gandlf_config import normalise_gandlf_config
from federation_helpers import SITES, cofe, collaborator_args, free_port

pytestmark = pytest.mark.federation
DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp", "delta": 1e-5}
N_TRAIN = 3  # conftest's site_data: training subjects per site


def _expected_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(delta=delta)


def test_dp_federation_reports_each_sites_growing_epsilon(tmp_path, site_data, fast_config):
    from cofe_cli.events import read_events
    from cofe_cli.federation import FederationLayout

    config = {**yaml.safe_load(fast_config.read_text()), "differential_privacy": DP}
    path = tmp_path / "with_dp.yaml"
    path.write_text(yaml.safe_dump(config))
    fed = tmp_path / "fed"
    result = cofe("run", "--dir", fed, "--gandlf-config", path, *collaborator_args(site_data),
                  "--rounds", 2, "--port", free_port(), "--timeout", 900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epsilon" in result.stdout  # the summary table

    # One step per batch of a Poisson-sampled epoch over the site's training patches.
    steps_per_round = N_TRAIN * config["q_samples_per_volume"] // config["batch_size"]
    sample_rate = 1 / steps_per_round
    events = list(read_events(FederationLayout(fed).aggregator().events_file))
    for site in SITES:
        reported = {e["round"]: e["value"] for e in events
                    if e.get("event") == "metric" and e["collaborator"] == site and e["metric"] == "epsilon"}
        assert sorted(reported) == [0, 1], reported
        for round_number, value in reported.items():
            expected = _expected_epsilon(DP["noise_multiplier"], sample_rate, steps_per_round * (round_number + 1), DP["delta"])
            assert value == pytest.approx(expected, abs=1e-6), (site, round_number)
        assert 0 < reported[0] < reported[1]
    assert "epsilon" in (fed / "results" / "metrics.csv").read_text()

    # The exported model has the model's own tensor names (none of Opacus's `_module.`) and loads.
    import torch

    from cofe_cli.engine.participant import load_model

    state = torch.load(fed / "results" / "final_model.pt", map_location="cpu", weights_only=True)["model_state_dict"]
    assert state and not any("_module." in name for name in state)
    load_model(fed / "workspaces" / "aggregator", fed / "results" / "final_model.pt")

    # GaNDLF's own CLI loads the model directory (its plain architecture, with the running statistics
    # Opacus's fix turned off at their initial values), and `cofe infer` predicts with the layers the
    # federation trained, as it validated: each input's own statistics.
    model_dir = tmp_path / "gandlf_model"  # a copy: GaNDLF writes its masks below the model directory
    shutil.copytree(fed / "results" / "gandlf_model", model_dir)
    # GaNDLF 0.1.5's inference crashes on a config that asks for DP: the exported one leaves it out.
    assert "differential_privacy" not in yaml.safe_load((model_dir / "config.yaml").read_text())
    site_csv = site_data["site_a"] / "valid.csv"
    gandlf = Path(sys.executable).with_name("gandlf")
    done = subprocess.run([str(gandlf), "run", "-c", str(model_dir / "config.yaml"), "-i", str(site_csv), "--infer",
                           "-m", str(model_dir), "-o", str(tmp_path / "gandlf_out")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list((model_dir / "output_inference").rglob("*_seg*.nii.gz"))
    inferred = cofe("infer", "--dir", fed, "--data", site_csv, "--out", tmp_path / "cofe_out")
    assert inferred.returncode == 0, inferred.stdout + inferred.stderr
    assert "input instance-norm statistics" in inferred.stdout
    dice = float(next(line for line in inferred.stdout.splitlines() if line.strip().startswith("dice:")).split(":")[1])
    validated = [e["value"] for e in events if e.get("event") == "metric" and e["collaborator"] == "site_a"
                 and e["task"] == "aggregated_model_validation" and e["metric"] == "valid_dice"]
    # The best model is one the federation validated: its Dice at site_a is one of those rounds'.
    assert any(abs(dice - value) < 1e-4 for value in validated), (dice, validated)
    # `cofe evaluate --model` takes the GaNDLF directory's checkpoint of a DP model too.
    from cofe_cli.engine.participant import write_evaluated_model

    best = next((fed / "results" / "gandlf_model").glob("*_best.pth.tar"))
    write_evaluated_model(fed / "workspaces" / "aggregator", best, tmp_path / "evaluated.pbuf")
    assert (tmp_path / "evaluated.pbuf").stat().st_size > 0
    refused = cofe("infer", "--dir", fed, "--data", site_csv, "--out", tmp_path / "running", "--validation-norm", "running")
    assert refused.returncode == 2 and "has no running instance-norm statistics" in refused.stderr


def test_a_target_epsilon_is_spent_over_the_planned_rounds_and_no_further(tmp_path, monkeypatch):
    """With `epsilon` in the config, the noise multiplier is the one that spends it over rounds x epochs."""
    from cofe_cli.engine.privacy import SiteAccountant

    monkeypatch.chdir(tmp_path)  # the accountant lives in the site's workspace (its working directory)
    target = {**DP, "epsilon": 2.0}
    accountant = SiteAccountant("site_a", target, planned_epochs=4, max_epsilon=None)
    sample_rate, steps_per_epoch = 0.25, 4
    noise = accountant.noise_multiplier(sample_rate)
    assert noise > 0
    spent = [_expected_epsilon(noise, sample_rate, steps_per_epoch * epochs, DP["delta"]) for epochs in (1, 4)]
    assert spent[0] < spent[1] <= 2.0 and spent[1] == pytest.approx(2.0, abs=0.05), (noise, spent)
    # A site that trains more than planned would pass the target: --max-epsilon 2 stops it there.
    capped = SiteAccountant("site_b", target, planned_epochs=4, max_epsilon=2.0)
    capped.save([(noise, sample_rate, steps_per_epoch * 4)])
    assert capped.would_exceed(noise, sample_rate, steps_per_epoch)


# --- engine level: one site's task runner, as OpenFL's collaborator drives it ---------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site_dataset(tmp_path_factory.mktemp("site"), site_index=1, n_train=N_TRAIN, n_valid=1, seed=0)


def _runner(site, privacy: dict, **config_changes):
    from cofe_cli.engine.openfl_dataloader import GaNDLFDataLoader
    from cofe_cli.engine.openfl_task_runner import GaNDLFTaskRunner

    config = {**demo_gandlf_config(), "q_samples_per_volume": 1, "q_max_length": 1, **config_changes}
    config = normalise_gandlf_config({**config, "differential_privacy": DP})
    config["differential_privacy"].update(privacy)  # noise 0, which init refuses, for the clipping check
    runner = GaNDLFTaskRunner(gandlf_config=config, device="cpu", instance_norm_statistics="input",
                              privacy_planned_epochs=2,
                              data_loader=GaNDLFDataLoader(data_path=str(site), feature_shape=config["patch_size"]))
    runner.set_optimizer_treatment("RESET")
    return runner


def _train(runner, round_number, weights):
    output, _ = runner.train("site_a", round_number, {name: value.copy() for name, value in weights.items()}, epochs=1)
    tensors = {key.tensor_name: value for key, value in output.items() if "metric" not in key.tags}
    metrics = {key.tensor_name: float(value) for key, value in output.items() if "metric" in key.tags}
    return tensors, metrics


def test_a_restarted_collaborator_continues_its_accountant(site, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the collaborator's workspace: the accountant is kept there
    runner = _runner(site, {})
    weights = runner.get_tensor_dict(with_opt_vars=False)
    assert not any(name.startswith("_module.") for name in weights)
    _, first = _train(runner, 0, weights)
    restarted = _runner(site, {})  # a new process: nothing in memory but the plan and the workspace
    restarted.validate("site_a", 1, {name: value.copy() for name, value in weights.items()}, apply="global")  # as OpenFL does first
    tensors, second = _train(restarted, 1, weights)
    assert set(tensors) == set(weights)  # the names OpenFL sends, not Opacus's wrapper names
    steps = N_TRAIN
    for round_number, metrics in enumerate((first, second)):
        expected = _expected_epsilon(DP["noise_multiplier"], 1 / steps, steps * (round_number + 1), DP["delta"])
        assert metrics["epsilon"] == pytest.approx(expected, abs=1e-6)

    # --max-epsilon: a site whose next round would pass it sends the model back untrained.
    capped = _runner(site, {})
    capped.max_epsilon = second["epsilon"] + 1e-3
    tensors, third = _train(capped, 2, weights)
    assert third["privacy_budget_exhausted"] == 1.0 and third["epsilon"] == pytest.approx(second["epsilon"])
    assert all((tensors[name] == weights[name]).all() for name in weights)


def test_updates_are_clipped_per_sample_and_noised_at_the_configured_scale(site, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    # Plain SGD: an update is the learning rate times the gradients, which DP-SGD bounds.
    sgd = {"optimizer": {"type": "sgd", "momentum": 0, "weight_decay": 0, "nesterov": False}, "learning_rate": 1.0}
    clip = 1e-4
    updates = {}
    for noise in (0.0, 1.0):
        torch.manual_seed(0)
        runner = _runner(site, {"max_grad_norm": clip, "noise_multiplier": noise}, **sgd)
        weights = runner.get_tensor_dict(with_opt_vars=False)
        if noise == 0.0:
            start = weights
        torch.manual_seed(1)
        tensors, _ = _train(runner, 0, start)
        updates[noise] = torch.cat([torch.as_tensor(tensors[n] - start[n]).flatten().double() for n in start])
    trainable = updates[0.0].numel()
    steps = N_TRAIN
    # Without noise each step moves the weights by at most lr x clip x (samples in its batch <= N_TRAIN).
    assert 0 < updates[0.0].norm() <= 1.0 * clip * steps * N_TRAIN * (1 + 1e-6)
    # With noise, each step adds N(0, (noise x clip)^2) per weight: over `steps` steps the difference's
    # norm is about noise x clip x sqrt(steps x weights), up to the two noiseless parts (<= the bound above).
    expected = 1.0 * clip * math.sqrt(steps * trainable)
    slack = 2 * clip * steps * N_TRAIN
    assert abs((updates[1.0] - updates[0.0]).norm() - expected) <= 0.05 * expected + slack


def test_an_empty_poisson_batch_is_a_noise_only_step_the_model_never_sees():
    # Poisson sampling drew an empty batch in ~30% of the demo's steps, and GaNDLF's train_network
    # ran the model on it (instance norm: IndexError). Such a step is noise alone, counted all the same.
    import torch
    from opacus import PrivacyEngine

    from cofe_cli.engine.privacy import _NonEmptyBatches, _step_on_empty_batches

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1, 4)), batch_size=1)
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, _ = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                              data_loader=data, noise_multiplier=1.0, max_grad_norm=1.0)
    _step_on_empty_batches(optimizer)
    params = {"channel_keys": ["1"], "differential_privacy": DP, "batch_size": 1}
    empty, full = {"1": {"data": torch.zeros(0, 1, 4)}}, {"1": {"data": torch.ones(2, 1, 4)}}
    before = [p.detach().clone() for p in model.parameters()]
    batches = _NonEmptyBatches([empty, full, empty], optimizer, params)
    assert len(batches) == 3  # before iterating: the loader's steps (train_network's progress bar)
    given = iter(batches)
    assert next(given) is full  # the empty batch before it was a step: noise only, nothing clipped
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert len(engine.accountant.history) == 1 and engine.accountant.history[0][2] == 1
    assert list(given) == []
    assert len(batches) == 1  # train_network averages its loss over the batches it trained on
    assert engine.accountant.history[0][2] == 2  # the trailing empty batch counted too; `full` was not trained here
