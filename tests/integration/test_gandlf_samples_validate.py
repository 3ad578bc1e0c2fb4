"""Every normalised GaNDLF training sample passes GaNDLF 0.1.5's own ConfigManager, and the constants
the pure module copied from GaNDLF still match it. Imports GANDLF (and so torch): ~8 s once."""

from __future__ import annotations

import os
import typing
from importlib import metadata
from pathlib import Path

import pytest

from cofe_cli.errors import CofeError
from cofe_cli.plan.gandlf_config import (
    GANDLF_MODEL_DEFAULTS,
    GANDLF_PATCH_SAMPLER_DEFAULTS,
    GANDLF_TOP_LEVEL_DEFAULTS,
    SUPPORTED_ARCHITECTURES,
    SUPPORTED_FINAL_LAYERS,
    load_gandlf_yaml,
    normalise_gandlf_config,
)
from gandlf_samples import SAMPLES_ROOT, is_training_sample, sample_params

INSTALLED_GANDLF = metadata.version("GANDLF")


@pytest.fixture(scope="module")
def validate_with_gandlf():
    from cofe_cli.engine.gandlf_validation import validate_with_gandlf

    return validate_with_gandlf


# Only training samples: cofe refuses the others before GaNDLF sees them (tests/unit covers that).
@pytest.mark.parametrize("path", sample_params(is_training_sample))
def test_normalised_training_sample_passes_gandlf(path: Path, validate_with_gandlf) -> None:
    normalised = normalise_gandlf_config(load_gandlf_yaml(path), gandlf_version=INSTALLED_GANDLF)

    parameters = validate_with_gandlf(normalised)

    assert parameters["version"] == {"minimum": INSTALLED_GANDLF, "maximum": INSTALLED_GANDLF}
    assert parameters["output_dir"] == normalised["output_dir"]
    assert parameters["model"]["architecture"] == normalised["model"]["architecture"]
    # The channel count cofe wrote is the one GaNDLF builds the model with.
    assert parameters["model"]["num_channels"] == normalised["model"]["num_channels"]
    assert parameters["q_max_length"] >= parameters["q_samples_per_volume"]


def test_unnormalised_sample_is_rejected_with_the_reason(validate_with_gandlf) -> None:
    # The premise of the normaliser: GaNDLF 0.1.5 refuses its own samples' 0.1.6-dev pin.
    path = SAMPLES_ROOT / "testing" / "config_segmentation.yaml"
    with pytest.raises(CofeError, match=r"^GaNDLF rejected the config: version") as rejected:
        validate_with_gandlf(load_gandlf_yaml(path))
    assert rejected.value.hint


def test_gandlf_rejection_becomes_a_cofe_error(validate_with_gandlf) -> None:
    cfg = {
        "model": {"architecture": "resunet", "dimension": 3, "final_layer": "sigmoid", "class_list": [0, 1]},
        "patch_size": [32, 32, 32],
        "loss_function": "dc",
        "metrics": ["dice"],
    }
    normalised = normalise_gandlf_config(cfg, gandlf_version=INSTALLED_GANDLF)
    validate_with_gandlf(normalised)
    with pytest.raises(CofeError, match=r"^GaNDLF rejected the config: .*'not-an-optimizer'"):
        validate_with_gandlf({**normalised, "optimizer": "not-an-optimizer"})


def test_validation_leaves_its_input_and_home_alone(validate_with_gandlf, tmp_path, monkeypatch) -> None:
    path = SAMPLES_ROOT / "samples" / "config_all_options.yaml"
    normalised = normalise_gandlf_config(load_gandlf_yaml(path), gandlf_version=INSTALLED_GANDLF)
    before = repr(normalised)
    monkeypatch.setenv("HOME", str(tmp_path))

    validate_with_gandlf(normalised)

    assert repr(normalised) == before, "ConfigManager's in-place edits must not reach the caller's dict"
    assert os.environ["HOME"] == str(tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing (e.g. ~/.gandlf logs) may be written under HOME"


def test_supported_architectures_match_gandlf() -> None:
    from GANDLF.models import global_models_dict

    assert SUPPORTED_ARCHITECTURES == frozenset(global_models_dict)


def test_supported_final_layers_match_gandlf() -> None:
    from GANDLF.configuration.model_config import ModelConfig

    annotation = ModelConfig.model_fields["final_layer"].annotation
    assert SUPPORTED_FINAL_LAYERS == frozenset(typing.get_args(annotation))


def test_default_tables_match_gandlf() -> None:
    # The pure module names these defaults in its notes ("then uses its default ..."); they must be GaNDLF's.
    from GANDLF.configuration.model_config import ModelConfig
    from GANDLF.configuration.parameters_config import Parameters
    from GANDLF.configuration.patch_sampler_config import PatchSamplerConfig

    for table, fields in ((GANDLF_TOP_LEVEL_DEFAULTS, Parameters.model_fields), (GANDLF_MODEL_DEFAULTS, ModelConfig.model_fields),
                          (GANDLF_PATCH_SAMPLER_DEFAULTS, PatchSamplerConfig.model_fields)):
        for name, (_kind, default) in table.items():
            if not isinstance(default, (bool, int, float, str)) or name in ("scheduler", "optimizer", "patch_sampler"):
                continue  # model objects in GaNDLF, named by their type here; `_UNSET` and None have no value to compare
            # base_filters' field default is None, which ModelConfig's validator turns into 32.
            gandlf_default = 32 if name == "base_filters" else fields[name].default
            assert default == gandlf_default, name


def test_imagenet_unet_without_problem_type_builds_without_data(validate_with_gandlf) -> None:
    # OpenFL builds the aggregator's initial model without data; GaNDLF's imagenet_unet read
    # params["problem_type"] there and `cofe init` died with KeyError: 'problem_type'.
    from GANDLF.models import get_model

    cfg = {"model": {"architecture": "imagenet_unet", "dimension": 2, "final_layer": "sigmoid", "class_list": [0, 1],
                     "num_channels": 1, "pretrained": False, "encoder_name": "resnet18"},
           "patch_size": [64, 64], "loss_function": "dc"}  # no metrics either: dice is chosen from the loss
    parameters = validate_with_gandlf(normalise_gandlf_config(cfg, gandlf_version=INSTALLED_GANDLF))

    model = get_model(parameters)

    assert parameters["problem_type"] == "segmentation"
    assert sum(p.numel() for p in model.parameters()) > 0
