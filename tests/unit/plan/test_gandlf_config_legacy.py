"""Configs written for FeTS, MedPerf and GaNDLF before 0.1: each quirk in a config the test writes itself,
converted with a note saying what changed, or refused in one line. Torch-free."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import yaml

from cli_assertions import refused, run_cofe
from cofe_cli.errors import CofeError
from cofe_cli.init_pipeline import gandlf_config_guard
from cofe_cli.plan.data import data_facts, expectations_of
from cofe_cli.plan.gandlf_config import normalise_gandlf_config_with_notes

INSTALLED = "0.1.5"


def config(**changes) -> dict:
    """A small segmentation config; `model=` merges into the model, a value of None deletes the key."""
    cfg = {
        "model": {"architecture": "resunet", "dimension": 3, "final_layer": "sigmoid", "class_list": [0, 1],
                  "base_filters": 8, "num_channels": 1},
        "patch_size": [32, 32, 32],
        "loss_function": "dc",
        "metrics": ["dice"],
    }
    for key, value in changes.pop("model", {}).items():
        cfg["model"][key] = value
    cfg.update(changes)
    return cfg


def without(cfg: dict, *keys: str) -> dict:
    for key in keys:
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg).pop(name)
    return cfg


def normalise(cfg: dict, data=None) -> tuple[dict, str]:
    result, notes = normalise_gandlf_config_with_notes(cfg, gandlf_version=INSTALLED, data=data)
    return result, "\n".join(notes)


def write_csv(path: Path, header: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n")  # data_facts reads the header only
    return path


# ---------------------------------------------------------------- "None" as text, numbers as text


@pytest.mark.parametrize("spelling", ["None", "none", "null", "NULL", "~", None])
@pytest.mark.parametrize("where", ["q_num_workers", "clip_grad", "verbose", "scheduler", "patch_sampler",
                                   "model.base_filters", "model.ignore_label_validation", "model.amp", "model.type"])
def test_unset_values_are_dropped_so_gandlf_uses_its_default(where: str, spelling) -> None:
    # GaNDLF 0.1.5 rejects each of these ("Input should be a valid integer ... got 'None'"); older
    # releases read the string "none" as None.
    section, _, key = where.rpartition(".")
    cfg = config(model={key: spelling}) if section else config(**{key: spelling})

    result, notes = normalise(cfg)

    assert key not in (result["model"] if section else result)
    assert f"{where}: {spelling!r} dropped (older GaNDLF read it as unset" in notes


def test_unset_default_is_named_in_the_note() -> None:
    _result, notes = normalise(config(model={"base_filters": "None"}))
    assert "GaNDLF 0.1.5 then uses its default 32" in notes


@pytest.mark.parametrize(
    ("where", "text", "value"),
    [("num_epochs", "10", 10), ("learning_rate", "1e-4", 0.0001), ("verbose", "True", True),
     ("in_memory", "no", False), ("q_max_length", "40", 40), ("model.dimension", "3", 3),
     ("model.amp", "false", False), ("model.base_filters", "16", 16)],
)
def test_numbers_and_booleans_written_as_text_become_values(where: str, text: str, value) -> None:
    section, _, key = where.rpartition(".")
    cfg = config(model={key: text}) if section else config(**{key: text})

    result, notes = normalise(cfg)

    got = (result["model"] if section else result)[key]
    assert got == value and type(got) is type(value)
    assert f"{where} {text!r} -> {value!r} (written as text)" in notes


def test_text_that_is_no_number_is_left_for_gandlf_to_name() -> None:
    result, _notes = normalise(config(batch_size="two"))
    assert result["batch_size"] == "two"


def test_unset_dimension_is_taken_from_the_patch_size() -> None:
    result, notes = normalise(config(model={"dimension": "None"}))
    assert result["model"]["dimension"] == 3
    assert "model.dimension: 'None' dropped" in notes and "model.dimension set to 3 from patch_size" in notes


def test_unset_channel_count_is_filled_in_like_a_missing_one() -> None:
    result, notes = normalise(config(model={"num_channels": "None"}))
    assert result["model"]["num_channels"] == 3
    assert "assumed GaNDLF's default 3" in notes


# ---------------------------------------------------------------- legacy keys


def test_opt_becomes_optimizer() -> None:
    result, notes = normalise(config(opt="sgd"))
    assert result["optimizer"] == "sgd" and "opt" not in result
    assert "opt 'sgd' -> optimizer" in notes


def test_opt_beside_optimizer_is_dropped() -> None:
    result, notes = normalise(config(opt="sgd", optimizer={"type": "adam"}))
    assert result["optimizer"] == {"type": "adam"} and "opt" not in result
    assert "opt 'sgd' dropped" in notes


def test_top_level_enable_padding_moves_into_the_patch_sampler() -> None:
    # FeTS Task 1 (GaNDLF 0.0.14) wrote `enable_padding` and `patch_sampler: label` side by side.
    result, notes = normalise(config(enable_padding=True, patch_sampler="label"))

    assert "enable_padding" not in result
    assert result["patch_sampler"] == {"type": "label", "enable_padding": True}
    assert expectations_of(result)["padding"] is True
    assert "enable_padding: true -> patch_sampler" in notes


def test_top_level_enable_padding_false_is_dropped() -> None:
    result, notes = normalise(config(enable_padding="False", patch_sampler="label"))
    assert "enable_padding" not in result and result["patch_sampler"] == "label"
    assert "enable_padding: false dropped" in notes


def test_top_level_enable_padding_that_is_no_boolean_is_refused() -> None:
    with pytest.raises(CofeError, match="enable_padding must be true or false, not 'sometimes'"):
        normalise(config(enable_padding="sometimes"))


def test_padding_written_as_text_in_the_sampler_is_read_as_a_boolean() -> None:
    result, _notes = normalise(config(patch_sampler={"type": "uniform", "enable_padding": "False"}, enable_padding="no"))
    assert expectations_of(result)["padding"] is False


@pytest.mark.parametrize(
    ("changes", "where", "expected"),
    [({"optimizer": "Adam"}, "optimizer", "adam"), ({"optimizer": {"type": "SGD", "momentum": 0.9}}, "optimizer", {"type": "sgd", "momentum": 0.9}),
     ({"scheduler": {"type": "Triangle"}}, "scheduler", {"type": "triangle"})],
)
def test_choice_names_are_lowercased(changes: dict, where: str, expected) -> None:
    result, notes = normalise(config(**changes))
    assert result[where] == expected
    assert "(GaNDLF's config check is case-sensitive)" in notes


def test_model_type_is_lowercased() -> None:
    result, notes = normalise(config(model={"type": "Torch"}))
    assert result["model"]["type"] == "torch" and "model.type 'Torch' -> 'torch'" in notes


# ---------------------------------------------------------------- metrics, channels, problem type


@pytest.mark.parametrize(
    ("changes", "metric", "told_by"),
    [({}, "dice", "loss_function dc"),
     ({"model": {"final_layer": "none"}, "loss_function": "mse"}, "mse", "the final layer"),
     ({"model": {"final_layer": "logits"}, "loss_function": "cel"}, "classification_accuracy", "the final layer"),
     ({"model": {"final_layer": "softmax"}, "loss_function": "ce"}, "classification_accuracy", "loss_function ce")],
)
def test_missing_metrics_get_the_problem_types_usual_metric(changes: dict, metric: str, told_by: str) -> None:
    result, notes = normalise(without(config(**changes), "metrics"))
    assert result["metrics"] == [metric]
    assert f"metrics not set: using ['{metric}']" in notes and told_by in notes


def test_missing_metrics_follow_the_datas_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "site" / "train.csv", "SubjectID,Channel_0,ValueToPredict")
    cfg = without(config(model={"final_layer": "softmax"}, loss_function="focal"), "metrics")

    result, notes = normalise(cfg, data_facts([None, tmp_path / "site"]))

    assert result["metrics"] == ["classification_accuracy"]
    assert f"the columns of {csv}" in notes


def test_missing_metrics_without_any_clue_are_asked_for() -> None:
    with pytest.raises(CofeError, match="no `metrics`, and neither its loss function nor the data tell") as error:
        normalise(without(config(model={"final_layer": "softmax"}, loss_function="focal"), "metrics"))
    assert "metrics: [dice]" in error.value.hint


@pytest.mark.parametrize("metrics", [[None], [1], [""], [{}], 5, True])
def test_metrics_that_name_nothing_are_refused(metrics) -> None:
    with pytest.raises(CofeError, match="metrics must name GaNDLF metrics"):
        normalise(config(metrics=metrics))


@pytest.mark.parametrize("as_folder", [True, False])
def test_missing_channel_count_comes_from_the_datas_csv(tmp_path: Path, as_folder: bool) -> None:
    # BraTS: four MRI sequences. GaNDLF itself would build a 3-channel model (its default) and fail.
    csv = write_csv(tmp_path / "site" / "train.csv", "SubjectID,Channel_0,Channel_1,Channel_2,Channel_3,Label")

    result, notes = normalise(without(config(), "model.num_channels"),
                              data_facts([tmp_path / "site" if as_folder else csv]))

    assert result["model"]["num_channels"] == 4
    assert f"model.num_channels not set: using 4, the Channel columns of {csv}" in notes


def test_missing_channel_count_without_data_says_3_was_assumed_and_how_to_set_it() -> None:
    result, notes = normalise(without(config(), "model.num_channels"), data_facts([None]))
    assert result["model"]["num_channels"] == 3
    assert "no data given here: assumed GaNDLF's default 3" in notes and "`num_channels: N` under `model:`" in notes


def test_a_written_channel_count_wins_over_the_data(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "one.csv", "SubjectID,Channel_0,Channel_1,Label")
    result, _notes = normalise(config(), data_facts([csv]))
    assert result["model"]["num_channels"] == 1  # the data check then names the mismatch


def test_imagenet_unet_gets_the_problem_type_it_reads() -> None:
    # Without it the aggregator's initial model died with KeyError: 'problem_type' (OpenFL builds it without data).
    result, notes = normalise(config(model={"architecture": "imagenet_unet", "dimension": 2}, patch_size=[64, 64]))
    assert result["problem_type"] == "segmentation"
    assert "problem_type set to 'segmentation' (imagenet_unet reads it" in notes


def test_imagenet_unet_classifier_takes_its_problem_type_from_the_data(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "one.csv", "SubjectID,Channel_0,ValueToPredict")
    cfg = config(model={"architecture": "imagenet_unet", "dimension": 2, "final_layer": "softmax"},
                 patch_size=[64, 64], loss_function="focal", metrics=["accuracy"])
    result, _notes = normalise(cfg, data_facts([csv]))
    assert result["problem_type"] == "classification"


def test_imagenet_unet_without_any_clue_asks_for_the_problem_type() -> None:
    cfg = config(model={"architecture": "imagenet_unet", "dimension": 2, "final_layer": "softmax"},
                 patch_size=[64, 64], loss_function="focal", metrics=["accuracy"])
    with pytest.raises(CofeError, match="imagenet_unet needs to know whether it segments or classifies") as error:
        normalise(cfg)
    assert "problem_type: segmentation" in error.value.hint


def test_other_models_get_no_problem_type_written() -> None:
    result, _notes = normalise(config())
    assert "problem_type" not in result


def test_a_contradicting_problem_type_is_corrected() -> None:
    # FeTS Task 1's gandlf_config.yaml: a BraTS segmentation config that says `problem_type: classification`.
    result, notes = normalise(config(problem_type="classification"))
    assert result["problem_type"] == "segmentation"
    assert "problem_type 'classification' -> 'segmentation'" in notes


def test_a_problem_type_with_capitals_is_lowercased() -> None:
    result, notes = normalise(config(problem_type="Segmentation"))
    assert result["problem_type"] == "segmentation" and "problem_type 'Segmentation' -> 'segmentation'" in notes


def test_an_unknown_problem_type_is_refused() -> None:
    with pytest.raises(CofeError, match="unknown problem_type 'segmentaton'"):
        normalise(config(problem_type="segmentaton"))


# ---------------------------------------------------------------- a whole FeTS-era config

FETS_TASK1_CONFIG = """\
batch_size: 1
clip_grad: null
clip_mode: null
data_augmentation: {}
data_postprocessing: {}
data_preprocessing:
  normalize: null
enable_padding: false
in_memory: false
inference_mechanism  :
  grid_aggregator_overlap: crop
  patch_overlap: 0
learning_rate: 0.001
loss_function: dc
medcam_enabled: false
output_dir: '.'
metrics:
- dice
- dice_per_label
- hd95_per_label
model:
  amp: true
  architecture: resunet
  base_filters: 32
  class_list: [0, 1, 2, 4]
  dimension: 3
  final_layer: softmax
  ignore_label_validation: None
  norm_type: instance
nested_training:
  testing: 1
  validation: -5
num_epochs: 1
optimizer:
  type: sgd
parallel_compute_command: ''
patch_sampler: label
patch_size: [64, 64, 64]
patience: 100
q_max_length: 100
q_num_workers: 0
q_samples_per_volume: 40
scheduler:
  type: triangle_modified
version:
  maximum: 0.1.0
  minimum: 0.0.14
weighted_loss: true
modality: rad
problem_type: classification
"""


def test_fets_challenge_config_converts_with_a_note_per_change(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "brats.csv", "SubjectID,Channel_0,Channel_1,Channel_2,Channel_3,Label")

    result, notes = normalise(yaml.safe_load(FETS_TASK1_CONFIG), data_facts([csv]))

    assert result["model"]["num_channels"] == 4 and result["problem_type"] == "segmentation"
    assert not {"clip_grad", "clip_mode", "enable_padding"} & result.keys()
    assert "ignore_label_validation" not in result["model"]
    for topic in ("version pin", "clip_grad", "clip_mode", "enable_padding", "model.ignore_label_validation: 'None'",
                  "model.num_channels not set: using 4", "problem_type 'classification' -> 'segmentation'"):
        assert topic in notes


# ---------------------------------------------------------------- `cofe init`: one line, never a traceback


def write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "legacy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_init_refuses_an_imagenet_unet_it_cannot_place_in_one_line(tmp_path: Path) -> None:
    cfg = config(model={"architecture": "imagenet_unet", "dimension": 2, "final_layer": "softmax"},
                 patch_size=[64, 64], loss_function="focal", metrics=["accuracy"])
    result = run_cofe("init", "-c", write_config(tmp_path, cfg), "-C", "a", "--dir", tmp_path / "fed", cwd=tmp_path)
    refused(result, "imagenet_unet needs to know whether it segments or classifies")
    assert not (tmp_path / "fed" / "plans").exists()


def test_init_refuses_a_config_without_metrics_or_clue_in_one_line(tmp_path: Path) -> None:
    cfg = without(config(model={"final_layer": "softmax"}, loss_function="focal"), "metrics")
    result = run_cofe("init", "-c", write_config(tmp_path, cfg), "-C", "a", "--dir", tmp_path / "fed", cwd=tmp_path)
    refused(result, "no `metrics`")


@pytest.mark.parametrize("building_model", [False, True])
def test_an_unexpected_failure_while_the_config_becomes_a_plan_is_one_cofe_error(building_model: bool) -> None:
    with pytest.raises(CofeError, match=r"GaNDLF could not .* the config cfg.yaml: KeyError: 'problem_type'") as error:
        with gandlf_config_guard(Path("cfg.yaml"), building_model=building_model):
            raise KeyError("problem_type")
    assert error.value.hint


def test_a_download_the_model_needs_is_named_as_such() -> None:
    with pytest.raises(CofeError, match="could not download what the model in cfg.yaml starts from") as error:
        with gandlf_config_guard(Path("cfg.yaml"), building_model=True):
            raise URLError("[Errno -2] Name or service not known")
    assert "pretrained: false" in error.value.hint


def test_the_guard_lets_cofe_errors_through_unchanged() -> None:
    original = CofeError("as it was", hint="h")
    with pytest.raises(CofeError) as error:
        with gandlf_config_guard(Path("cfg.yaml")):
            raise original
    assert error.value is original
