"""Shared pytest setup."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Unit tests must stay fast: none of them may import torch, GaNDLF or OpenFL (directly or through cofe_cli).
HEAVY_PACKAGES = frozenset({"torch", "GANDLF", "openfl"})
UNIT_TESTS = Path(__file__).resolve().parent / "unit"
# Shared test helpers (gandlf_samples, cli_assertions, unit_federation, volumes, federation_helpers) are imported by name.
for _helpers in (Path(__file__).resolve().parent, UNIT_TESTS, Path(__file__).resolve().parent / "integration"):
    sys.path.insert(0, str(_helpers))


def heavy_modules_loaded() -> set[str]:
    return {name for name in list(sys.modules) if name.split(".")[0] in HEAVY_PACKAGES}


@pytest.fixture(autouse=True)
def _unit_tests_import_no_torch(request: pytest.FixtureRequest):
    """After every test under tests/unit: it imported none of torch, GaNDLF, OpenFL.

    When tests/unit runs alone nothing heavy is loaded beforehand, so this is exactly "'torch' not in
    sys.modules after each test"; in a run that also holds integration tests (which do import torch)
    only what the unit test itself newly imported is blamed on it.
    """
    if UNIT_TESTS not in Path(str(request.node.path)).resolve().parents:
        yield
        return
    before = heavy_modules_loaded()
    yield
    imported = sorted({name.split(".")[0] for name in heavy_modules_loaded() - before})
    assert not imported, f"this unit test imported {', '.join(imported)}; unit tests must stay torch-free"
