"""Stand-ins for GaNDLF's rarely used heavy modules (engine/gandlf_imports.py), on a package written
here: the real module is imported when one of its functions is first called, and not before.
tests/integration/test_gandlf_imports.py checks the same against GaNDLF 0.1.5 itself."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from cofe_cli.engine.gandlf_imports import DEFERRED_FOR, DeferredModule, _StandInsOnImport, defer_unused_modules

HEAVY = {"pkg.heavy": ("build", "Extractor")}


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch):
    """A package like GaNDLF's: its __init__ imports names from a module that imports something heavy."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("from .heavy import build, Extractor\nTABLE = {'build': build}\n")
    (root / "heavy.py").write_text(textwrap.dedent("""
        import pkg_heavy_dependency
        def build(x, scale=2):
            return x * scale
        class Extractor:
            def __init__(self, name):
                self.name = name
    """))
    (tmp_path / "pkg_heavy_dependency.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield root
    for name in [m for m in sys.modules if m == "pkg" or m.startswith(("pkg.", "pkg_heavy"))]:
        del sys.modules[name]


def test_nothing_is_stood_in_until_the_package_is_imported(pkg):
    defer_unused_modules("pkg", HEAVY)
    assert "pkg.heavy" not in sys.modules

    import pkg as imported

    assert isinstance(sys.modules["pkg.heavy"], DeferredModule)
    assert "pkg_heavy_dependency" not in sys.modules
    assert imported.TABLE["build"].__name__ == "build"


def test_the_first_call_imports_the_real_module_and_calls_it(pkg):
    defer_unused_modules("pkg", HEAVY)
    import pkg as imported

    assert imported.TABLE["build"](3, scale=5) == 15
    assert "pkg_heavy_dependency" in sys.modules
    real = sys.modules["pkg.heavy"]
    assert not isinstance(real, DeferredModule)
    assert imported.build(4) == 8 and sys.modules["pkg.heavy"] is real  # later calls reuse it
    extractor = imported.Extractor("macenko")  # a class is instantiated through its stand-in
    assert isinstance(extractor, real.Extractor) and extractor.name == "macenko"


def test_a_failed_import_keeps_the_stand_in_so_the_next_call_tries_again(pkg):
    (pkg / "heavy.py").write_text("raise ImportError('no segmentation_models_pytorch')\n")
    defer_unused_modules("pkg", HEAVY)
    import pkg as imported

    with pytest.raises(ImportError, match="segmentation_models_pytorch"):
        imported.build(1)
    assert isinstance(sys.modules["pkg.heavy"], DeferredModule)
    (pkg / "heavy.py").write_text("def build(x):\n    return -x\nclass Extractor:\n    pass\n")
    importlib.invalidate_caches()
    assert imported.build(1) == -1


def test_a_package_already_imported_gets_stand_ins_only_for_what_it_has_not_imported(pkg):
    importlib.import_module("pkg")  # imports pkg.heavy for real

    real = sys.modules["pkg.heavy"]
    defer_unused_modules("pkg", {**HEAVY, "pkg.other": ("f",)})
    assert sys.modules["pkg.heavy"] is real
    assert isinstance(sys.modules["pkg.other"], DeferredModule)


def test_only_gandlf_0_1_5_gets_stand_ins_and_only_once_it_is_imported(monkeypatch):
    # Triggered by a package nobody imports: in a run that also holds integration tests GaNDLF is loaded.
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    finders, modules = list(sys.meta_path), set(sys.modules)
    trigger = "cofe_test_package_never_imported"

    defer_unused_modules(trigger, installed_version="0.1.4")  # the lists are 0.1.5's
    assert sys.meta_path == finders

    defer_unused_modules(trigger, installed_version=DEFERRED_FOR)
    defer_unused_modules(trigger, installed_version=DEFERRED_FOR)  # cofe_cli.engine may be imported again: one finder
    added = [finder for finder in sys.meta_path if finder not in finders]
    assert len(added) == 1 and isinstance(added[0], _StandInsOnImport) and added[0].package == trigger
    assert set(sys.modules) == modules  # nothing until the package is imported
