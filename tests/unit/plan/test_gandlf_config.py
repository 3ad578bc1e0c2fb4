"""The pure GaNDLF config layer against every GaNDLF sample config; no torch, no GaNDLF import."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cofe_cli.errors import CofeError
from cofe_cli.plan.gandlf_config import (
    CHANNEL_COUNT_ALIASES,
    GANDLF_DEFAULT_QUEUE_MAX_LENGTH,
    GANDLF_DEFAULT_QUEUE_SAMPLES_PER_VOLUME,
    SUPPORTED_ARCHITECTURES,
    config_kind,
    load_gandlf_yaml,
    normalise_gandlf_config,
    normalise_gandlf_config_with_notes,
)
from gandlf_samples import IN_REPO_CONFIGS, SAMPLES_ROOT, sample_name, sample_params, sample_paths

REPO_ROOT = Path(__file__).resolve().parents[3]

# What each non-training sample is; every other sample file is expected to be a training config,
# so a new sample of an unknown kind fails a test here instead of passing unnoticed.
NON_TRAINING_SAMPLES = {
    "samples/config_anonymizer.yaml": "anonymizer",
    "samples/config_generator_sample_strategy.yaml": "generator-sample-strategy",
    "samples/config_getting_started_segmentation_histo2d_patchExtraction.yaml": "patch-extraction",
    "samples/config_segmentation_metrics_brats_concise.yaml": "metrics-only",
    "samples/config_segmentation_metrics_brats_default.yaml": "metrics-only",
}

INSTALLED = "0.1.5"


def sample_params_of(*, training: bool | None = None) -> list:
    """One pytest param per sample file (id: folder/name), training ones or the others by NON_TRAINING_SAMPLES."""
    return sample_params(
        lambda path: training is None or training == (sample_name(path) not in NON_TRAINING_SAMPLES))


def minimal_training_config() -> dict:
    return {
        "model": {
            "architecture": "resunet", "dimension": 3, "final_layer": "sigmoid", "class_list": [0, 1], "base_filters": 8,
        },
        "patch_size": [32, 32, 32],
        "loss_function": "dc",
        "metrics": ["dice"],
    }


# ---------------------------------------------------------------- every sample file


@pytest.mark.parametrize("path", sample_params_of())
def test_every_sample_loads_and_has_its_expected_kind(path: Path) -> None:
    cfg = load_gandlf_yaml(path)
    assert config_kind(cfg) == NON_TRAINING_SAMPLES.get(sample_name(path), "training")


@pytest.mark.parametrize("path", sample_params_of(training=True))
def test_training_sample_normalises_with_the_fixed_fields(path: Path) -> None:
    cfg = load_gandlf_yaml(path)
    untouched = copy.deepcopy(cfg)

    result = normalise_gandlf_config(cfg, gandlf_version=INSTALLED)

    assert cfg == untouched, "the input config must not be changed"
    assert result is not cfg and result["model"] is not cfg["model"]
    assert result["version"] == {"minimum": INSTALLED, "maximum": INSTALLED}
    assert result["modality"] in ("rad", "histo", "path")
    assert result["output_dir"] == cfg.get("output_dir") or result["output_dir"] == "."
    for key in ("clip_mode", "clip_grad"):
        assert key not in result or result[key] is not None
    model = result["model"]
    assert isinstance(model["num_channels"], int) and model["num_channels"] >= 1
    assert not {"n_channels", "channels", "model_channels"} & model.keys()
    assert model["architecture"] in SUPPORTED_ARCHITECTURES
    assert model["dimension"] in (2, 3)
    assert isinstance(result["patch_size"], list) and len(result["patch_size"]) in (2, 3)
    assert isinstance(model.get("class_list", []), list)
    assert result.get("q_max_length", 100) >= result.get("q_samples_per_volume", 10)
    assert result.get("parallel_compute_command", "") == ""
    assert isinstance(result["nested_training"], dict)
    # What cofe writes into the OpenFL plan must survive a plain YAML round trip.
    assert yaml.safe_load(yaml.safe_dump(result)) == result


@pytest.mark.parametrize("path", sample_params_of(training=False))
def test_non_training_sample_is_refused_naming_its_kind(path: Path) -> None:
    kind = NON_TRAINING_SAMPLES[sample_name(path)]
    with pytest.raises(CofeError) as refused:
        normalise_gandlf_config(load_gandlf_yaml(path), gandlf_version=INSTALLED)
    assert refused.value.message == f"{kind} config, not a training config"
    assert "training config with a `model:` section" in refused.value.hint


def test_samples_cover_every_kind_listed() -> None:
    present = {sample_name(path) for path in sample_paths(SAMPLES_ROOT)}
    assert set(NON_TRAINING_SAMPLES) <= present


# What each quirk cofe normalises looks like in a raw config (name, cfg); at least one in-repo config
# must show each, so that the sample tests here, in test_plan_builder.py and GaNDLF's own check in
# tests/integration/test_gandlf_samples_validate.py exercise every one of them as real configs carry it.
SAMPLE_VERSION_PIN = {"minimum": "0.1.6-dev", "maximum": "0.1.6-dev"}
TRAINING_CONFIG_QUIRKS = {
    "version pinned to 0.1.6-dev": lambda name, cfg: cfg.get("version") == SAMPLE_VERSION_PIN,
    "version pinned to another release": lambda name, cfg: cfg.get("version") not in (None, SAMPLE_VERSION_PIN),
    "no version": lambda name, cfg: "version" not in cfg,
    **{
        f"channel count as `{alias}`": (lambda alias: lambda name, cfg: alias in cfg["model"])(alias)
        for alias in CHANNEL_COUNT_ALIASES
    },
    "no channel count": lambda name, cfg: not set(CHANNEL_COUNT_ALIASES) & cfg["model"].keys(),
    "class_list as a `||` string": lambda name, cfg: "||" in str(cfg["model"].get("class_list", "")),
    "class_list as a `*range` string": lambda name, cfg: "*range" in str(cfg["model"].get("class_list", "")),
    "scalar patch_size in 2D": lambda name, cfg: isinstance(cfg["patch_size"], int) and cfg["model"]["dimension"] == 2,
    "scalar patch_size in 3D": lambda name, cfg: isinstance(cfg["patch_size"], int) and cfg["model"]["dimension"] == 3,
    "clip_mode: null": lambda name, cfg: "clip_mode" in cfg and cfg["clip_mode"] is None,
    "no modality, radiology": lambda name, cfg: "modality" not in cfg and normalised_modality(cfg) == "rad",
    "no modality, histology slide markers": lambda name, cfg: "modality" not in cfg and normalised_modality(cfg) == "histo",
    "no output_dir": lambda name, cfg: "output_dir" not in cfg,
    "q_max_length below q_samples_per_volume (torchio crashes)": lambda name, cfg: (
        cfg.get("q_max_length", GANDLF_DEFAULT_QUEUE_MAX_LENGTH)
        < cfg.get("q_samples_per_volume", GANDLF_DEFAULT_QUEUE_SAMPLES_PER_VOLUME)
    ),
    "an HPC parallel_compute_command": lambda name, cfg: bool(cfg.get("parallel_compute_command")),
    "nested_training: null": lambda name, cfg: "nested_training" in cfg and cfg["nested_training"] is None,
    "nested_training.testing above 10": lambda name, cfg: (cfg.get("nested_training") or {}).get("testing", 0) > 10,
    "final_layer with capitals (not GaNDLF's own 'None')": lambda name, cfg: (
        cfg["model"].get("final_layer") not in (None, "None")
        and cfg["model"]["final_layer"] != cfg["model"]["final_layer"].lower()
    ),
    "'None' written as text": lambda name, cfg: "None" in (cfg.get("q_num_workers"), cfg["model"].get("base_filters")),
    "a number written as text": lambda name, cfg: isinstance(cfg.get("batch_size"), str),
    "top-level enable_padding (GaNDLF 0.0.14)": lambda name, cfg: "enable_padding" in cfg,
    "opt instead of optimizer": lambda name, cfg: "opt" in cfg,
    "problem_type contradicting the metrics' type": lambda name, cfg: cfg.get("problem_type") == "classification",
    "no metrics": lambda name, cfg: "metrics" not in cfg,
    "2D": lambda name, cfg: cfg["model"].get("dimension") == 2,
    "3D": lambda name, cfg: cfg["model"].get("dimension") == 3,
    "classification": lambda name, cfg: "classification" in name,
    "regression": lambda name, cfg: "regression" in name,
    "segmentation": lambda name, cfg: "segmentation" in name,
}


def normalised_modality(cfg: dict) -> str:
    return normalise_gandlf_config(cfg, gandlf_version=INSTALLED)["modality"]


def test_in_repo_configs_cover_every_quirk() -> None:
    configs = {sample_name(path): load_gandlf_yaml(path) for path in sample_paths(IN_REPO_CONFIGS)}
    training = {name: cfg for name, cfg in configs.items() if config_kind(cfg) == "training"}

    missing = [quirk for quirk, shows in TRAINING_CONFIG_QUIRKS.items()
               if not any(shows(name, cfg) for name, cfg in training.items())]

    assert not missing, f"no in-repo training config has: {'; '.join(missing)}"
    kinds = {config_kind(cfg) for cfg in configs.values()}
    assert kinds == {"training", *NON_TRAINING_SAMPLES.values()}
    metrics_only = [name for name, cfg in configs.items() if config_kind(cfg) == "metrics-only"]
    assert any("!Panoptica_Evaluator" in (IN_REPO_CONFIGS / name).read_text() for name in metrics_only)


# ---------------------------------------------------------------- loading


def test_custom_tags_load_as_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "panoptica_config: !Panoptica_Evaluator\n"
        "  expected_input: !InputType SEMANTIC\n"
        "  global_metrics: [!Metric DSC]\n"
        "  listmetric: {!Metric NSD: !Handler {normal: !EdgeCaseResult INF}}\n"
        "evil: !!python/object/apply:os.system ['echo pwned']\n"
    )
    cfg = load_gandlf_yaml(path)
    assert cfg["panoptica_config"] == {
        "expected_input": "SEMANTIC",
        "global_metrics": ["DSC"],
        "listmetric": {"NSD": {"normal": "INF"}},
    }
    assert cfg["evil"] == ["echo pwned"]  # read as data, never run


def test_missing_file_is_a_cofe_error(tmp_path: Path) -> None:
    with pytest.raises(CofeError, match="GaNDLF config not found: .*nope.yaml"):
        load_gandlf_yaml(tmp_path / "nope.yaml")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  architecture: unet\n  dimension: [3\npatch_size: 64\n")
    with pytest.raises(CofeError, match=r"not valid YAML at line \d+") as error:
        load_gandlf_yaml(path)
    assert error.value.hint


@pytest.mark.parametrize(("text", "found"), [("", "empty"), ("- a\n- b\n", "a list"), ("just text\n", "a str")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(CofeError, match=f"must be a YAML mapping at the top level, but it is {found}"):
        load_gandlf_yaml(path)


def test_folder_instead_of_file_is_a_cofe_error(tmp_path: Path) -> None:
    with pytest.raises(CofeError, match="is a folder"):
        load_gandlf_yaml(tmp_path)


# ---------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("cfg", "kind"),
    [
        ({"modality": "rad", "delete_private_tags": True}, "anonymizer"),
        ({"num_patches": 3, "patch_size": ["1000m", "1000m"]}, "patch-extraction"),
        ({"model": {"architecture": ["unet", "resunet"]}, "learning_rate": [0.1, 0.01]}, "generator-sample-strategy"),
        ({"model": {"architecture": "unet"}, "patch_size": [[32, 32, 32], [64, 64, 64]]}, "generator-sample-strategy"),
        ({**minimal_training_config(), "panoptica_config": {}}, "metrics-only"),
        ({"aggregator": {}, "task_runner": {"settings": {"gandlf_config": {}}}}, "openfl-plan"),
        ({"batch_size": 4}, "unrecognised"),
        ({}, "unrecognised"),
        (minimal_training_config(), "training"),
    ],
)
def test_config_kind(cfg: dict, kind: str) -> None:
    assert config_kind(cfg) == kind


@pytest.mark.parametrize("kind_cfg", [{}, {"batch_size": 4}, {"aggregator": {}, "task_runner": {}}])
def test_every_non_training_kind_is_refused(kind_cfg: dict) -> None:
    with pytest.raises(CofeError, match="config, not a training config"):
        normalise_gandlf_config(kind_cfg)


# ---------------------------------------------------------------- individual fixes


# Marks a key to remove from minimal_training_config() in normalised().
DROP = object()


def normalised(**changes) -> dict:
    """minimal_training_config() with `changes` applied (`model=` merges into the model), normalised."""
    cfg = minimal_training_config()
    model_changes = changes.pop("model", {})
    cfg["model"].update(model_changes)
    cfg.update(changes)
    return normalise_gandlf_config({key: value for key, value in cfg.items() if value is not DROP}, gandlf_version=INSTALLED)


def test_unknown_architecture_is_refused_with_suggestions() -> None:
    with pytest.raises(CofeError, match="unknown GaNDLF architecture 'resunett'") as error:
        normalised(model={"architecture": "resunett"})
    assert "resunet" in error.value.hint


def test_architecture_case_is_normalised() -> None:
    assert normalised(model={"architecture": "ResUNet"})["model"]["architecture"] == "resunet"


def test_missing_architecture_is_refused() -> None:
    cfg = minimal_training_config()
    del cfg["model"]["architecture"]
    with pytest.raises(CofeError, match="no `model.architecture`"):
        normalise_gandlf_config(cfg)


def test_version_pin_follows_the_installed_gandlf() -> None:
    openfl_template_pin = {"minimum": "0.0.13", "maximum": "0.0.14"}
    assert normalised(version=openfl_template_pin)["version"] == {"minimum": INSTALLED, "maximum": INSTALLED}
    other_version = normalise_gandlf_config(minimal_training_config(), gandlf_version="0.1.7")
    assert other_version["version"] == {"minimum": "0.1.7", "maximum": "0.1.7"}


def test_missing_modality_defaults_to_rad() -> None:
    assert normalised()["modality"] == "rad"


@pytest.mark.parametrize(
    "histology_marker",
    [
        {"data_preprocessing": {"rgba2rgb": ""}},
        {"slide_level": 2},
        {"stride_size": [256, 256]},
        {"data_augmentation": {"hed_transform": {}}},
    ],
)
def test_missing_modality_is_histo_for_2d_slides(histology_marker: dict) -> None:
    result = normalised(model={"dimension": 2, "num_channels": 3}, patch_size=[128, 128], **histology_marker)
    assert result["modality"] == "histo"


def test_2d_rgb_without_slide_markers_stays_rad() -> None:
    # GaNDLF's DFU 2021 sample: 2D RGB photographs, modality rad.
    assert normalised(model={"dimension": 2, "num_channels": 3}, patch_size=[128, 128])["modality"] == "rad"


def test_explicit_modality_is_kept_and_unknown_refused() -> None:
    assert normalised(modality="path")["modality"] == "path"
    assert normalised(modality="Histo")["modality"] == "histo"
    with pytest.raises(CofeError, match="unknown GaNDLF modality 'ct'"):
        normalised(modality="ct")


@pytest.mark.parametrize("alias", CHANNEL_COUNT_ALIASES)
def test_channel_aliases_become_num_channels(alias: str) -> None:
    model = normalised(model={alias: 4})["model"]
    assert model["num_channels"] == 4
    assert [key for key in CHANNEL_COUNT_ALIASES if key in model] == ["num_channels"]


def test_missing_channel_count_gets_gandlfs_default_written_out() -> None:
    assert normalised()["model"]["num_channels"] == 3


def test_conflicting_channel_counts_are_refused() -> None:
    with pytest.raises(CofeError, match="channel count is given twice"):
        normalised(model={"num_channels": 1, "n_channels": 3})


def test_agreeing_channel_aliases_are_merged() -> None:
    assert normalised(model={"num_channels": 1, "channels": 1})["model"]["num_channels"] == 1


@pytest.mark.parametrize("bad", [0, -1, "three", True, 2.5])
def test_bad_channel_count_is_refused(bad) -> None:
    with pytest.raises(CofeError, match="must be a positive whole number"):
        normalised(model={"n_channels": bad})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("[1||2||4,1||4,4]", ["1||2||4", "1||4", "4"]),
        ("[0, 1||2||3, 1||4, 4]", ["0", "1||2||3", "1||4", "4"]),
        ("[0,1,2]", [0, 1, 2]),
        ("[*range(0,5,1)]", [0, 1, 2, 3, 4]),
        ("[*range(3)]", [0, 1, 2]),
        ([0, 255], [0, 255]),
    ],
)
def test_class_list_forms(given, expected) -> None:
    assert normalised(model={"class_list": given})["model"]["class_list"] == expected


def test_class_list_with_and_is_refused() -> None:
    # ConfigManager would accept it; GaNDLF 0.1.5's one_hot() crashes on it at the first batch.
    with pytest.raises(CofeError, match="'&&'"):
        normalised(model={"class_list": "[1&&2,4]"})


def test_unreadable_class_list_is_refused() -> None:
    with pytest.raises(CofeError, match="not a list GaNDLF can read"):
        normalised(model={"class_list": "zero and one"})


@pytest.mark.parametrize(("dimension", "expected"), [(2, [64, 64]), (3, [64, 64, 64])])
def test_scalar_patch_size_is_expanded(dimension: int, expected: list) -> None:
    assert normalised(model={"dimension": dimension}, patch_size=64)["patch_size"] == expected


def test_missing_dimension_comes_from_patch_size() -> None:
    cfg = minimal_training_config()
    del cfg["model"]["dimension"]
    cfg["patch_size"] = [128, 128, 1]
    assert normalise_gandlf_config(cfg)["model"]["dimension"] == 2


@pytest.mark.parametrize("bad", [["1000m", "1000m"], [0, 64, 64], [64, 64, 64, 64]])
def test_bad_patch_size_is_refused(bad) -> None:
    with pytest.raises(CofeError, match="patch_size"):
        normalised(patch_size=bad)


def test_null_clipping_is_dropped_but_real_values_kept() -> None:
    result = normalised(clip_mode=None, clip_grad=None)
    assert "clip_mode" not in result and "clip_grad" not in result
    result = normalised(clip_mode="value", clip_grad=0.5)
    assert (result["clip_mode"], result["clip_grad"]) == ("value", 0.5)


def test_output_dir_defaults_to_workspace_and_explicit_is_kept() -> None:
    assert normalised()["output_dir"] == "."
    assert normalised(output_dir="results")["output_dir"] == "results"


@pytest.mark.parametrize(
    ("queue", "expected_max_length"),
    [
        ({"q_max_length": 1, "q_samples_per_volume": 5}, 5),
        ({"q_samples_per_volume": 200}, 200),  # GaNDLF's default q_max_length is 100
        ({"q_max_length": 40, "q_samples_per_volume": 5}, 40),
    ],
)
def test_queue_holds_at_least_one_volume_of_patches(queue: dict, expected_max_length: int) -> None:
    assert normalised(**queue).get("q_max_length", 100) == expected_max_length


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (DROP, {"testing": -5, "validation": -5}),
        (None, {"testing": -5, "validation": -5}),
        ({"testing": 50, "validation": 5}, {"testing": -5, "validation": 5}),
        ({"testing": 1, "validation": -2}, {"testing": 1, "validation": -2}),
        ({"stratified": False}, {"stratified": False, "testing": -5, "validation": -5}),
    ],
)
def test_nested_training_is_made_acceptable(given, expected) -> None:
    assert normalised(nested_training=given)["nested_training"] == expected


@pytest.mark.parametrize("command", ["qsub -b y -l gpu `pwd`/sge_wrapper", None])
def test_parallel_compute_command_is_emptied(command) -> None:
    assert normalised(parallel_compute_command=command)["parallel_compute_command"] == ""


def test_null_sections_become_empty_mappings() -> None:
    result = normalised(data_preprocessing=None, data_augmentation=None, data_postprocessing=None)
    assert result["data_preprocessing"] == result["data_augmentation"] == result["data_postprocessing"] == {}


def test_final_layer_null_and_case() -> None:
    assert normalised(model={"final_layer": None})["model"]["final_layer"] == "none"
    assert normalised(model={"final_layer": "Softmax"})["model"]["final_layer"] == "softmax"
    assert normalised(model={"final_layer": "None"})["model"]["final_layer"] == "None"
    with pytest.raises(CofeError, match="unknown GaNDLF final_layer 'relu'"):
        normalised(model={"final_layer": "relu"})


def test_norm_type_none_is_refused_for_non_vgg() -> None:
    with pytest.raises(CofeError, match="norm_type none is only allowed for VGG"):
        normalised(model={"norm_type": "none"})
    assert normalised(model={"architecture": "vgg16", "norm_type": "None"})["model"]["norm_type"] == "none"
    assert "norm_type" not in normalised(model={"norm_type": None})["model"]


@pytest.mark.parametrize("key", ["patch_size", "loss_function"])
def test_required_modelling_choices_are_asked_for(key: str) -> None:
    with pytest.raises(CofeError, match=f"no `{key}`"):
        normalised(**{key: DROP})


def test_model_must_be_a_mapping() -> None:
    with pytest.raises(CofeError, match="`model` must be a mapping"):
        normalise_gandlf_config({**minimal_training_config(), "model": "resunet"})


def test_notes_explain_each_change() -> None:
    pinned_elsewhere = {"minimum": "0.1.6-dev", "maximum": "0.1.6-dev"}
    cfg = {**minimal_training_config(), "clip_mode": None, "version": pinned_elsewhere}
    _result, notes = normalise_gandlf_config_with_notes(cfg, gandlf_version=INSTALLED)
    text = "\n".join(notes)
    for topic in ("version pin", "modality", "output_dir", "clip_mode", "num_channels"):
        assert topic in text


def test_normalising_twice_changes_nothing_more() -> None:
    once = normalised(patch_size=64, model={"n_channels": 1, "class_list": "[1||2,4]"})
    twice, notes = normalise_gandlf_config_with_notes(once, gandlf_version=INSTALLED)
    assert twice == once and notes == []


# ---------------------------------------------------------------- purity


def test_module_imports_no_torch_gandlf_or_openfl() -> None:
    # A fresh interpreter: this test session may already hold torch from other tests.
    probe = (
        "import sys, cofe_cli.plan.gandlf_config; "
        "heavy = sorted(m for m in ('torch', 'GANDLF', 'openfl') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO_ROOT, timeout=60)
