"""The OpenFL plan built from every GaNDLF sample, and the files `plans/` and the workspaces get; no torch."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

import cofe_cli
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, plan_hash
from cofe_cli.plan.builder import (
    ALGORITHMS,
    PlanOptions,
    build_plan,
    check_plan_options,
    dump_yaml,
    parse_on_off,
    parse_validation_batch,
    render_cols,
    render_data_config,
)
from cofe_cli.plan.gandlf_config import load_gandlf_yaml, normalise_gandlf_config
from cofe_cli.plan.workspaces import (
    COLS_FILE,
    GANDLF_FILE,
    PLAN_FILE,
    CollaboratorData,
    build_federation,
    collaborator_data_folder,
    set_collaborator_data,
)
from gandlf_samples import is_training_sample, sample_params

GANDLF_VERSION = "0.1.5"

# What each algorithm must put into the plan, written out independently of builder.ALGORITHMS:
# the `train` task's aggregation template and the FedProx mu the task runner gets (None: no key).
EXPECTED_AGGREGATION = {
    "fedavg": ("openfl.interface.aggregation_functions.WeightedAverage", None),
    "fedprox": ("openfl.interface.aggregation_functions.WeightedAverage", 0.01),
    "median": ("openfl.interface.aggregation_functions.Median", None),
    "geometric-median": ("openfl.interface.aggregation_functions.GeometricMedian", None),
}
TASK_NAMES = ("aggregated_model_validation", "train", "locally_tuned_model_validation")


TRAINING_SAMPLES = sample_params(is_training_sample)
OTHER_SAMPLES = sample_params(lambda path: not is_training_sample(path))


def minimal_config() -> dict:
    return normalise_gandlf_config({
        "model": {"architecture": "resunet", "dimension": 3, "final_layer": "sigmoid", "class_list": [0, 1],
                  "num_channels": 1},
        "patch_size": [32, 32, 32],
        "loss_function": "dc",
        "metrics": ["dice"],
    }, gandlf_version=GANDLF_VERSION)


def options(**changes) -> PlanOptions:
    values = {"rounds": 3, "aggregator_address": "fl.example.org", "aggregator_port": 50051}
    values.update(changes)
    return PlanOptions(**values)


def all_keys(data) -> set:
    if isinstance(data, dict):
        return set(data) | {key for value in data.values() for key in all_keys(value)}
    if isinstance(data, list):
        return {key for value in data for key in all_keys(value)}
    return set()


# ---------------------------------------------------------------- every training sample


def test_the_sample_lists_are_not_empty() -> None:
    assert len(TRAINING_SAMPLES) >= 10 and len(OTHER_SAMPLES) >= 3


@pytest.mark.parametrize("algorithm", sorted(EXPECTED_AGGREGATION))
@pytest.mark.parametrize("path", TRAINING_SAMPLES)
def test_plan_of_every_training_sample(path: Path, algorithm: str) -> None:
    gandlf_config = normalise_gandlf_config(load_gandlf_yaml(path), gandlf_version=GANDLF_VERSION)
    untouched = copy.deepcopy(gandlf_config)

    plan = build_plan(gandlf_config, options(rounds=4, algorithm=algorithm, epochs_per_round=2))

    assert gandlf_config == untouched, "building the plan must not change the GaNDLF config"
    assert plan["aggregator"]["settings"]["rounds_to_train"] == 4
    network = plan["network"]["settings"]
    assert (network["agg_addr"], network["agg_port"]) == ("fl.example.org", 50051)
    assert network["use_tls"] is True and network["require_client_auth"] is True
    runner = plan["task_runner"]["settings"]
    assert runner["gandlf_config"] == untouched
    assert runner["device"] == "cpu"
    assert plan["data_loader"]["settings"]["feature_shape"] == untouched["patch_size"]

    assert tuple(plan["tasks"]) == TASK_NAMES
    (group,) = plan["assigner"]["settings"]["task_groups"]
    assert tuple(group["tasks"]) == TASK_NAMES and group["percentage"] == 1.0
    assert plan["tasks"]["train"]["function"] == "train"
    assert plan["tasks"]["train"]["kwargs"]["epochs"] == 2
    assert plan["tasks"]["train"]["kwargs"]["metrics"][0] == "loss"
    for name, apply in (("aggregated_model_validation", "global"), ("locally_tuned_model_validation", "local")):
        assert plan["tasks"][name]["function"] == "validate"
        assert plan["tasks"][name]["kwargs"]["apply"] == apply
        assert "valid_loss" in plan["tasks"][name]["kwargs"]["metrics"]

    template, mu = EXPECTED_AGGREGATION[algorithm]
    assert plan["tasks"]["train"]["aggregation_type"]["template"] == template
    assert runner.get("proximal_mu") == mu

    # Self-contained (no OpenFL `defaults:` includes) and exactly what a YAML reader gets back.
    assert "defaults" not in all_keys(plan)
    text = dump_yaml(plan)
    assert yaml.safe_load(text) == plan
    assert plan_hash(text) == plan_hash(dump_yaml(build_plan(untouched, options(rounds=4, algorithm=algorithm, epochs_per_round=2))))


@pytest.mark.parametrize("path", OTHER_SAMPLES)
def test_every_non_training_sample_is_refused(path: Path) -> None:
    with pytest.raises(CofeError, match="not a training config") as refused:
        normalise_gandlf_config(load_gandlf_yaml(path), gandlf_version=GANDLF_VERSION)
    assert refused.value.hint


# ---------------------------------------------------------------- algorithms and options


def test_every_algorithm_is_covered_here() -> None:
    assert set(ALGORITHMS) == set(EXPECTED_AGGREGATION)


def test_fedprox_takes_the_given_mu() -> None:
    plan = build_plan(minimal_config(), options(algorithm="fedprox", proximal_mu=0.5))
    assert plan["task_runner"]["settings"]["proximal_mu"] == 0.5


@pytest.mark.parametrize(("given", "in_plan"), [("8", 8), (8, 8), (" 16 ", 16), ("gandlf", "gandlf"), ("GANDLF", "gandlf")])
def test_the_validation_batch_goes_into_the_task_runner_settings(given, in_plan) -> None:
    plan = build_plan(minimal_config(), options(validation_batch=parse_validation_batch(given)))
    assert plan["task_runner"]["settings"]["validation_batch"] == in_plan
    assert yaml.safe_load(dump_yaml(plan))["task_runner"]["settings"]["validation_batch"] == in_plan


@pytest.mark.parametrize("given", ["auto", " AUTO ", None])
def test_an_automatic_validation_batch_leaves_the_plan_as_it_was(given) -> None:
    """auto is the task runner's default: the plan of a federation made before the option keeps its hash."""
    plan = build_plan(minimal_config(), options(validation_batch=parse_validation_batch(given)))
    assert "validation_batch" not in plan["task_runner"]["settings"]
    assert dump_yaml(plan) == dump_yaml(build_plan(minimal_config(), options()))


@pytest.mark.parametrize("given", ["0", "-4", "many", "", "2.5", "8 patches"])
def test_a_bad_validation_batch_is_refused_with_a_hint(given) -> None:
    with pytest.raises(CofeError, match="--validation-batch .* is not a batch size") as refused:
        parse_validation_batch(given)
    assert "auto" in refused.value.hint and "gandlf" in refused.value.hint
    with pytest.raises(CofeError, match="is not a batch size"):
        build_plan(minimal_config(), options(validation_batch=given))


def test_the_default_plan_validates_the_global_and_the_locally_tuned_model() -> None:
    plan = build_plan(minimal_config(), options())
    assert tuple(plan["assigner"]["settings"]["task_groups"][0]["tasks"]) == TASK_NAMES
    assert tuple(plan["tasks"]) == TASK_NAMES


def test_without_local_validation_openfl_is_never_given_the_locally_tuned_validation() -> None:
    plan = build_plan(minimal_config(), options(local_validation=False))
    (group,) = plan["assigner"]["settings"]["task_groups"]
    assert group["tasks"] == ["aggregated_model_validation", "train"]
    assert list(plan["tasks"]) == ["aggregated_model_validation", "train"]
    assert "locally_tuned_model_validation" not in dump_yaml(plan)
    on = dump_yaml(build_plan(minimal_config(), options(local_validation=True)))
    assert plan_hash(dump_yaml(plan)) != plan_hash(on)


@pytest.mark.parametrize(("given", "expected"), [("on", True), ("OFF", False), (" off ", False)])
def test_local_validation_is_on_or_off(given: str, expected: bool) -> None:
    assert parse_on_off(given, option="--local-validation") is expected


@pytest.mark.parametrize("given", ["", "no", "maybe", "0"])
def test_local_validation_other_than_on_or_off_is_refused(given: str) -> None:
    with pytest.raises(CofeError, match="--local-validation must be on or off") as refused:
        parse_on_off(given, option="--local-validation")
    assert refused.value.hint == "e.g. --local-validation off"


def test_the_manifest_records_which_validations_run() -> None:
    fields = dict(name="f", collaborators=("a",), rounds=1, aggregator_address="localhost", aggregator_port=1,
                  algorithm="fedavg", plan_sha384="0" * 96, versions={})
    off = Manifest(**fields, local_validation=False)
    assert Manifest.from_dict(yaml.safe_load(yaml.safe_dump(off.to_dict()))) == off
    assert off.validations == "aggregated model only" and off.tasks == ("aggregated_model_validation", "train")
    on = Manifest(**fields)
    assert on.validations == "aggregated + locally tuned" and on.tasks == TASK_NAMES
    assert "local_validation" not in on.to_dict()  # as a manifest written before the choice existed: both ran
    assert Manifest.from_dict(on.to_dict()).local_validation is True


def test_proximal_mu_with_a_non_fedprox_algorithm_is_not_silently_applied() -> None:
    try:
        plan = build_plan(minimal_config(), options(algorithm="fedavg", proximal_mu=0.5))
    except CofeError:
        return  # refusing it is fine too
    assert "proximal_mu" not in plan["task_runner"]["settings"]


def test_templates_name_engine_classes_that_exist() -> None:
    # Checked on the source, not by import: the engine modules import OpenFL and torch.
    plan = build_plan(minimal_config(), options())
    package = Path(cofe_cli.__file__).parent
    for section in ("aggregator", "data_loader", "task_runner"):
        module, _, cls = plan[section]["template"].rpartition(".")
        assert module.startswith("cofe_cli.engine."), plan[section]["template"]
        source = package.joinpath(*module.split(".")[1:]).with_suffix(".py")
        assert f"class {cls}(" in source.read_text(), f"{plan[section]['template']} not found in {source}"


def test_plan_metrics_follow_the_gandlf_metrics() -> None:
    config = minimal_config() | {"metrics": ["dice", {"hd95": {"connectivity": 1}}]}
    plan = build_plan(config, options())
    assert plan["tasks"]["train"]["kwargs"]["metrics"] == ["loss", "train_dice", "train_hd95"]
    assert plan["tasks"]["aggregated_model_validation"]["kwargs"]["metrics"] == ["valid_loss", "valid_dice", "valid_hd95"]


def test_plan_hash_is_sha384_of_the_text_and_changes_with_the_plan() -> None:
    config = minimal_config()
    text = dump_yaml(build_plan(config, options(rounds=3)))
    assert plan_hash(text) == hashlib.sha384(text.encode()).hexdigest() and len(plan_hash(text)) == 96
    assert plan_hash(dump_yaml(build_plan(copy.deepcopy(config), options(rounds=3)))) == plan_hash(text)
    assert plan_hash(dump_yaml(build_plan(config, options(rounds=4)))) != plan_hash(text)
    assert plan_hash(dump_yaml(build_plan(config, options(rounds=3, aggregator_port=50052)))) != plan_hash(text)


def test_plan_yaml_has_no_anchors_or_aliases() -> None:
    text = dump_yaml(build_plan(minimal_config(), options()))
    assert "&id" not in text and "*id" not in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rounds": 0}, "--rounds must be between 1 and 10000, got 0"),
        ({"rounds": -2}, "--rounds must be between 1 and 10000"),
        ({"rounds": 1_000_000_000}, "--rounds must be between 1 and 10000, got 1000000000"),
        ({"aggregator_port": 70000}, "port 70000 is out of range"),
        ({"aggregator_port": 0}, "port 0 is out of range"),
        ({"algorithm": "fedsgd"}, "unknown aggregation algorithm 'fedsgd'"),
        ({"epochs_per_round": 0}, "--epochs-per-round must be between 1 and 1000"),
        ({"epochs_per_round": -1}, "--epochs-per-round must be between 1 and 1000"),
        ({"epochs_per_round": 1_000_000}, "--epochs-per-round must be between 1 and 1000"),
        ({"algorithm": "fedprox", "proximal_mu": -0.5}, "--proximal-mu must be a number 0 or more"),
        ({"algorithm": "fedprox", "proximal_mu": float("nan")}, "--proximal-mu must be a number 0 or more"),
        ({"aggregator_address": "fl example.org"}, "is not a host name or IP"),
        ({"aggregator_address": ""}, "is not a host name or IP"),
        ({"device": "tpu"}, "--device 'tpu' is not a device torch can train on"),
        ({"device": "cuda:"}, "is not a device torch can train on"),
        ({"device": "CUDA"}, "is not a device torch can train on"),
        ({"device": "cuda:0 "}, "is not a device torch can train on"),
    ],
    ids=["rounds-0", "rounds-negative", "rounds-absurd", "port-70000", "port-0", "unknown-algorithm", "epochs-0",
         "epochs-negative", "epochs-absurd", "mu-negative", "mu-nan", "address-space", "address-empty", "device-tpu",
         "device-cuda-colon", "device-uppercase", "device-trailing-space"],
)
def test_bad_plan_options_are_refused_with_a_hint(changes: dict, message: str) -> None:
    with pytest.raises(CofeError, match=message) as refused:
        build_plan(minimal_config(), options(**changes))
    assert refused.value.hint
    with pytest.raises(CofeError, match=message):
        check_plan_options(options(**changes))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:3"])
def test_devices_torch_trains_on_go_into_the_plan(device: str) -> None:
    assert build_plan(minimal_config(), options(device=device))["task_runner"]["settings"]["device"] == device


def test_unknown_algorithm_hint_lists_the_known_ones() -> None:
    with pytest.raises(CofeError) as refused:
        check_plan_options(options(algorithm="fedsgd"))
    assert all(name in refused.value.hint for name in ALGORITHMS)


# ---------------------------------------------------------------- rendered files


def test_render_cols() -> None:
    text = render_cols(["hospital_a", "hospital_b"])
    assert yaml.safe_load(text) == {"collaborators": ["hospital_a", "hospital_b"]}


def test_render_data_config_is_name_comma_path_lines() -> None:
    text = render_data_config({"hospital_a": "/data/a", "hospital_b": "/data/b,with comma"})
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0].startswith("#")
    assert lines[1:] == ["hospital_a,/data/a", "hospital_b,/data/b,with comma"]
    assert render_data_config({}).splitlines()[1:] == []


# ---------------------------------------------------------------- plans/ and workspaces/


def _manifest(plan_yaml: str, collaborators: tuple[str, ...]) -> Manifest:
    return Manifest(name="unit", collaborators=collaborators, rounds=3, aggregator_address="fl.example.org",
                    aggregator_port=50051, algorithm="fedavg", plan_sha384=plan_hash(plan_yaml),
                    versions={"cofe": cofe_cli.__version__})


@pytest.fixture
def built(tmp_path: Path) -> tuple[FederationLayout, str, dict, Manifest]:
    config = minimal_config()
    plan_yaml = dump_yaml(build_plan(config, options()))
    manifest = _manifest(plan_yaml, ("hospital_a", "hospital_b"))
    layout = FederationLayout(tmp_path / "fed")
    build_federation(layout, plan_yaml, config, manifest, [
        CollaboratorData("hospital_a", tmp_path / "data_a"),
        CollaboratorData("hospital_b", None),
    ])
    return layout, plan_yaml, config, manifest


def test_build_federation_writes_plans(built) -> None:
    layout, plan_yaml, config, manifest = built
    assert (layout.plans / PLAN_FILE).read_text() == plan_yaml
    assert yaml.safe_load((layout.plans / COLS_FILE).read_text()) == {"collaborators": ["hospital_a", "hospital_b"]}
    assert yaml.safe_load((layout.plans / GANDLF_FILE).read_text()) == config
    assert layout.is_initialised()
    assert layout.load_manifest() == manifest
    assert plan_hash((layout.plans / PLAN_FILE).read_text()) == manifest.plan_sha384


def test_build_federation_writes_one_workspace_per_participant(built, tmp_path: Path) -> None:
    layout, plan_yaml, _, _ = built
    assert sorted(p.name for p in layout.workspaces.iterdir()) == [AGGREGATOR, "hospital_a", "hospital_b"]
    for participant in (AGGREGATOR, "hospital_a", "hospital_b"):
        workspace = layout.workspace(participant)
        assert (workspace / "plan" / PLAN_FILE).read_text() == plan_yaml
        assert (workspace / "plan" / COLS_FILE).read_bytes() == (layout.plans / COLS_FILE).read_bytes()
        assert (workspace / "plan" / "data.yaml").is_file()
        for sub in ("cert", "save", "logs", "local_state"):
            assert (workspace / sub).is_dir()

    def entries(participant: str) -> list[str]:
        text = (layout.workspace(participant) / "plan" / "data.yaml").read_text()
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    assert entries(AGGREGATOR) == []
    assert entries("hospital_a") == [f"hospital_a,{tmp_path / 'data_a'}"]
    assert entries("hospital_b") == []  # data given at the site with `cofe start collaborator --data`


def test_collaborator_data_folder_round_trip(built, tmp_path: Path) -> None:
    layout = built[0]
    assert collaborator_data_folder(layout, "hospital_a") == tmp_path / "data_a"
    assert collaborator_data_folder(layout, "hospital_b") is None
    assert collaborator_data_folder(layout, "nobody") is None

    site_data = tmp_path / "site b" / "data,v2"
    set_collaborator_data(layout, "hospital_b", site_data)
    assert collaborator_data_folder(layout, "hospital_b") == site_data
    assert collaborator_data_folder(layout, "hospital_a") == tmp_path / "data_a", "other sites are not touched"
