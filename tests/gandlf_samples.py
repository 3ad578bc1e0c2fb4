"""The GaNDLF configs the sample tests read. They live inside the repository, in tests/data/gandlf_configs
(its README says where each came from and which quirk it covers), so the test suite needs no file from
outside the repository.

COFE_TEST_GANDLF_SAMPLES may name another folder laid out the same way (samples/, testing/): `.ci/run`
points it at a copy of GaNDLF's upstream samples when one is at hand, so that a new upstream sample of an
unknown kind fails a test there. The test command never sets it.

Tests import it as `gandlf_samples`: pytest puts tests/ (the folder of tests/conftest.py) on sys.path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cofe_cli.plan.gandlf_config import config_kind, load_gandlf_yaml

IN_REPO_CONFIGS = Path(__file__).resolve().parent / "data" / "gandlf_configs"
SAMPLES_ROOT = Path(os.environ.get("COFE_TEST_GANDLF_SAMPLES") or IN_REPO_CONFIGS)
# samples/ and testing/: GaNDLF's own folders; quirks/: cofe's hand-written configs.
SAMPLE_FOLDERS = ("samples", "testing", "quirks")


def sample_name(path: Path) -> str:
    """folder/file.yaml, the sample's test id."""
    return f"{path.parent.name}/{path.name}"


def sample_paths(root: Path = SAMPLES_ROOT) -> list[Path]:
    """Every sample config under `root`, in a stable order. A missing or empty folder is an error, not a
    skip: the in-repo configs are always there."""
    paths = [path for folder in SAMPLE_FOLDERS for path in sorted((root / folder).glob("*.yaml"))]
    if not paths:
        raise FileNotFoundError(f"no GaNDLF sample configs under {root}/{{{','.join(SAMPLE_FOLDERS)}}}")
    return paths


def sample_params(include=lambda path: True) -> list:
    """One pytest param per sample config that `include` accepts (id: folder/file.yaml)."""
    return [pytest.param(path, id=sample_name(path)) for path in sample_paths() if include(path)]


def is_training_sample(path: Path) -> bool:
    """Whether cofe reads the sample as a training config (the others are refused before GaNDLF sees them)."""
    return config_kind(load_gandlf_yaml(path)) == "training"
