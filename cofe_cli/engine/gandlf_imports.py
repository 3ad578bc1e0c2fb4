"""GaNDLF's rarely used heavy modules, loaded when first used instead of when GaNDLF is imported.

GaNDLF 0.1.5 imports every architecture, optimizer, scheduler and metric family as soon as any of its
training code is imported: segmentation_models_pytorch with timm and pretrainedmodels (`imagenet_unet`),
monai (`dynunet`, the novograd optimizer, the warm-up cosine scheduler) and scikit-learn
(classification metrics, cross-validation folds, histology stain normalisation). A segmentation
federation with a ResUNet uses none of them, yet each participant paid for them at start: importing
OpenFL's GaNDLF runner took 12.7 s without stand-ins and 8.0 s with them (medians of 4 alternating runs
each on this 2-core machine: 10.9-13.8 s and 7.7-11.3 s), and a simulation's collaborators all import
it at once.

`defer_unused_modules()` puts a stand-in for each of those modules into `sys.modules` when GaNDLF is
imported, before GaNDLF's own code runs. A stand-in holds the names GaNDLF imports from the module (`from
.imagenet_unet import imagenet_unet_wrapper`); each is a function that imports the real module the first
time it is called and then calls the real one. GaNDLF only calls these names (they sit in its lookup
tables: `global_models_dict`, the optimizer, scheduler and metric tables; the stain extractors are
classes it instantiates), so a config that uses one behaves as before, a little later.
tests/integration/test_gandlf_imports.py checks the lists against GaNDLF's sources.

The lists are GaNDLF 0.1.5's, so nothing is deferred for another version. cofe_cli/engine/__init__.py
calls this, so every way into GaNDLF through cofe (task runner, init, infer, export) has it; so does
`fx` on a cofe plan, whose task runner lives in this package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import sys
import types
from collections.abc import Callable, Mapping

DEFERRED_FOR = "0.1.5"  # the GaNDLF version whose module contents are listed below
DEFERRED_MODULES: Mapping[str, tuple[str, ...]] = {
    # module: the names GaNDLF imports from it (and why the module is heavy)
    "GANDLF.models.imagenet_unet": ("imagenet_unet_wrapper",),  # segmentation_models_pytorch, timm
    "GANDLF.models.dynunet_wrapper": ("dynunet_wrapper",),  # monai.networks
    "GANDLF.schedulers.wrap_monai": ("warmupcosineschedule",),  # monai.optimizers
    "GANDLF.optimizers.wrap_monai": ("novograd_wrapper",),  # monai.optimizers
    "GANDLF.utils.data_splitter": ("split_data",),  # sklearn.model_selection (cross-validation folds)
    # histology stain normalisation; GaNDLF instantiates these classes, which calling the stand-in does
    "GANDLF.data.preprocessing.template_matching.stain_extractors": (
        "VahadaneExtractor", "RuifrokExtractor", "MacenkoExtractor"),  # sklearn.decomposition
    "GANDLF.metrics.regression": ("classification_accuracy", "balanced_acc_score", "per_label_accuracy",
                                  "overall_stats"),  # sklearn.metrics
}


class DeferredModule(types.ModuleType):
    """Stands in for `name` in sys.modules until one of its functions is called."""

    def __init__(self, name: str, functions: tuple[str, ...]):
        super().__init__(name, f"stand-in for {name}, imported when one of its functions is first called")
        for function in functions:
            setattr(self, function, self._loads_then_calls(function))

    def real(self) -> types.ModuleType:
        """The real module, imported now if this stand-in is still in its place."""
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
            try:
                return importlib.import_module(self.__name__)
            except BaseException:
                sys.modules.setdefault(self.__name__, self)  # keep the stand-in: the next call tries again
                raise
        return importlib.import_module(self.__name__)  # already imported: this is a lookup in sys.modules

    def _loads_then_calls(self, function: str) -> Callable:
        def call(*args, **kwargs):
            return getattr(self.real(), function)(*args, **kwargs)

        call.__name__ = call.__qualname__ = function
        call.__module__ = self.__name__
        return call


def defer_unused_modules(package: str = "GANDLF", modules: Mapping[str, tuple[str, ...]] | None = None,
                         installed_version: str | None = None) -> None:
    """Stand-ins for `modules` (GaNDLF 0.1.5's list by default) from the moment `package` is imported.

    sys.modules is left alone until then, so a process that never imports GaNDLF holds no stand-ins.
    Does nothing for a GaNDLF other than 0.1.5, or when GaNDLF is missing: the list is 0.1.5's.
    """
    if modules is None:
        if (installed_version or _gandlf_version()) != DEFERRED_FOR:
            return
        modules = DEFERRED_MODULES
    if package in sys.modules:
        _stand_in(modules)
    elif not any(isinstance(finder, _StandInsOnImport) and finder.package == package for finder in sys.meta_path):
        sys.meta_path.insert(0, _StandInsOnImport(package, modules))


class _StandInsOnImport(importlib.abc.MetaPathFinder):
    """Puts the stand-ins in place when `package` is first imported, then steps aside; finds nothing itself."""

    def __init__(self, package: str, modules: Mapping[str, tuple[str, ...]]):
        self.package, self.modules = package, modules

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.package:
            sys.meta_path.remove(self)
            _stand_in(self.modules)
        return None


def _stand_in(modules: Mapping[str, tuple[str, ...]]) -> None:
    for name, functions in modules.items():
        if name not in sys.modules:  # one imported already stays as it is
            sys.modules[name] = DeferredModule(name, functions)


def _gandlf_version() -> str | None:
    try:
        return importlib.metadata.version("GANDLF")
    except importlib.metadata.PackageNotFoundError:
        return None
