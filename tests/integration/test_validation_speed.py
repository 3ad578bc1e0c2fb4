"""Batched validation (engine/batched_validation.py) against GaNDLF's own `validate_network`: the task
runner's validation, batched and served from the validation cache, reports GaNDLF's loss and metrics
within 1e-4 on the same model and data, for each aggregation mode GaNDLF accepts."""

from __future__ import annotations

import pytest

from cofe_cli.demo.synthetic import demo_gandlf_config, make_site_dataset

PATCH = [16, 16, 16]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # 40x36x32 is no multiple of the patch: the grid's last patches overlap the ones before them.
    return make_site_dataset(tmp_path_factory.mktemp("site"), site_index=1, n_train=1, n_valid=3,
                             shape=(40, 36, 32), seed=0)


def _runner(site, overlap_mode: str, overlap: int, metrics: list[str], **settings):
    from cofe_cli.engine.openfl_dataloader import GaNDLFDataLoader
    from cofe_cli.engine.openfl_task_runner import GaNDLFTaskRunner

    config = demo_gandlf_config()
    config.update(patch_size=PATCH, metrics=metrics,
                  inference_mechanism={"grid_aggregator_overlap": overlap_mode, "patch_overlap": overlap})
    runner = GaNDLFTaskRunner(gandlf_config=config, device="cpu", instance_norm_statistics="input",
                              data_loader=GaNDLFDataLoader(data_path=str(site), feature_shape=PATCH), **settings)
    runner.set_optimizer_treatment("RESET")  # as OpenFL's collaborator does from the plan
    return runner


def _numbers(value) -> list[float]:
    """GaNDLF reports per-label metrics as strings such as '0.1_0.2'."""
    return [float(part) for part in str(value).split("_")]


def _reported(output: dict) -> dict[str, list[float]]:
    return {key.tensor_name: _numbers(value.tolist()) for key, value in output.items()}


@pytest.mark.parametrize("overlap_mode,overlap,metrics", [
    ("crop", 0, ["dice"]),
    ("crop", 4, ["dice", "sensitivity"]),  # sensitivity binarises GaNDLF's patches in place
    ("average", 8, ["dice", "dice_per_label", "hd95", "jaccard"]),
])
def test_batched_validation_equals_gandlf(site, tmp_path, monkeypatch, overlap_mode, overlap, metrics):
    from GANDLF.compute.forward_pass import validate_network

    monkeypatch.chdir(tmp_path)  # GaNDLF creates its output folders under output_dir "."
    runner = _runner(site, overlap_mode, overlap, metrics, validation_batch=4)
    weights = runner.get_tensor_dict(with_opt_vars=False)
    # set_tensor_dict pops the tensors it loads: every round gets its own dict, as from the aggregator.
    rounds = [_reported(runner.validate("site_b", round_num, dict(weights), apply="global")[0]) for round_num in (0, 1)]
    assert runner.validation_subjects.complete and len(runner.validation_subjects.kept) == 3

    loss, gandlf_metrics = validate_network(runner.model, runner.data_loader.val_dataloader, None, runner.params)
    expected = {"valid_loss": [loss], **{f"valid_{name}": _numbers(value) for name, value in gandlf_metrics.items()}}
    assert set(expected) == {"valid_loss", *(f"valid_{name}" for name in metrics)}
    for reported in rounds:  # round 1 comes from the cache
        assert set(reported) == set(expected)
        for name, values in expected.items():
            assert reported[name] == pytest.approx(values, abs=1e-4), name


def test_validation_cache_is_bounded_and_keeps_loader_order(site, tmp_path, monkeypatch):
    import torch

    from cofe_cli.engine.batched_validation import ValidationCache

    monkeypatch.chdir(tmp_path)
    runner = _runner(site, "crop", 0, ["dice"])
    loader, channel = runner.data_loader.val_dataloader, runner.params["channel_keys"][0]
    fresh = list(loader)
    one_subject = sum(fresh[0][key]["data"].nbytes for key in (channel, "label"))
    cache = ValidationCache(loader, int(one_subject * 1.5))
    for _ in range(2):
        served = list(cache)
        assert [item["subject_id"] for item in served] == [item["subject_id"] for item in fresh]
        for item, reference in zip(served, fresh):
            assert torch.equal(item[channel]["data"], reference[channel]["data"])
        assert len(cache.kept) == 1 and not cache.complete
    assert served[0] is cache.kept[0]  # kept subjects are not read again
