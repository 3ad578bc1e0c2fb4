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
