"""GaNDLF 0.1.5 with cofe's stand-ins for its rarely used heavy modules (engine/gandlf_imports.py):
a participant's start imports none of them, the lists match GaNDLF's sources, and a config that does
use one (imagenet_unet, dynunet, novograd, the warm-up cosine scheduler) still builds."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from cofe_cli.engine.gandlf_imports import DEFERRED_FOR, DEFERRED_MODULES

pytestmark = pytest.mark.skipif(metadata.version("GANDLF") != DEFERRED_FOR, reason="the lists are GaNDLF 0.1.5's")

HEAVY_PACKAGES = ("segmentation_models_pytorch", "timm", "pretrainedmodels", "monai", "sklearn")


def gandlf_root() -> Path:
    spec = metadata.distribution("GANDLF").locate_file("GANDLF")
    return Path(str(spec))


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_participant_imports_none_of_the_heavy_modules_it_does_not_use():
    # What a collaborator imports before its first task: the plan's task runner and data loader.
    seen = run_python(
        "import json, sys\n"
        "import cofe_cli.engine.openfl_task_runner, cofe_cli.engine.openfl_dataloader\n"
        "from cofe_cli.engine.gandlf_imports import DEFERRED_MODULES, DeferredModule\n"
        f"print(json.dumps({{'heavy': [p for p in {HEAVY_PACKAGES!r} if p in sys.modules],\n"
        "  'stand_ins': sorted(m for m in DEFERRED_MODULES if isinstance(sys.modules.get(m), DeferredModule))}))\n")
    assert seen["heavy"] == []
    assert seen["stand_ins"] == sorted(DEFERRED_MODULES)


def imported_names(module: str) -> set[str]:
    """Every name GaNDLF's own code takes from `module`: `from .x import a, b` and `import a.b.x as y; y.f`."""
    names: set[str] = set()
    for path in gandlf_root().rglob("*.py"):
        package = ".".join(path.relative_to(gandlf_root().parent).parts[:-1])  # what `from .x` is relative to
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []  # `..` is one up
                source = ".".join(base + ([node.module] if node.module else []))
                if source == module:
                    names |= {alias.name for alias in node.names}
                elif source == module.rsplit(".", 1)[0] and any(a.name == module.rsplit(".", 1)[1] for a in node.names):
                    aliases |= {a.asname or a.name for a in node.names if a.name == module.rsplit(".", 1)[1]}
            elif isinstance(node, ast.Import):
                aliases |= {alias.asname for alias in node.names if alias.name == module and alias.asname}
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and isinstance(node.value, ast.Name) and node.value.id in aliases}
    return names


@pytest.mark.parametrize("module", sorted(DEFERRED_MODULES))
def test_a_stand_in_holds_every_name_gandlf_takes_from_its_module(module):
    taken = imported_names(module)
    assert taken, f"nothing in GaNDLF imports {module}: drop it from the list"
    assert taken <= set(DEFERRED_MODULES[module])
    real = ast.parse((gandlf_root().parent / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    defined = {node.name for node in real.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert set(DEFERRED_MODULES[module]) <= defined


def test_configs_that_use_the_deferred_modules_still_build():
    built = run_python(r"""
import json, sys
from cofe_cli.engine.gandlf_validation import validate_with_gandlf
from cofe_cli.engine.gandlf_imports import DeferredModule
from cofe_cli.plan.gandlf_config import normalise_gandlf_config
from GANDLF.models import get_model
from GANDLF.optimizers import get_optimizer
from GANDLF.schedulers import get_scheduler

before = {m: isinstance(sys.modules[m], DeferredModule) for m in ("GANDLF.models.imagenet_unet",
          "GANDLF.models.dynunet_wrapper", "GANDLF.optimizers.wrap_monai", "GANDLF.schedulers.wrap_monai")}
sizes = {}
for model in ({"architecture": "imagenet_unet", "dimension": 2, "pretrained": False, "encoder_name": "resnet18"},
              {"architecture": "dynunet", "dimension": 3}):
    cfg = {"model": {**model, "final_layer": "sigmoid", "class_list": [0, 1], "num_channels": 1},
           "patch_size": [32, 32, 32] if model["dimension"] == 3 else [64, 64], "loss_function": "dc",
           "optimizer": {"type": "novograd"}, "scheduler": {"type": "warmupcosineschedule"}, "num_epochs": 2}
    parameters = validate_with_gandlf(normalise_gandlf_config(cfg, gandlf_version="0.1.5"))
    network = get_model(parameters)
    parameters["model_parameters"] = network.parameters()
    parameters["optimizer_object"] = get_optimizer(parameters)
    scheduler = get_scheduler(parameters)
    sizes[model["architecture"]] = [sum(p.numel() for p in network.parameters()),
                                    type(parameters["optimizer_object"]).__name__, type(scheduler).__name__]
after = {m: type(sys.modules[m]).__name__ for m in before}
print(json.dumps({"before": before, "after": after, "sizes": sizes}))
""")
    assert all(built["before"].values()), built["before"]  # they were stand-ins when GaNDLF took their names
    assert "DeferredModule" not in built["after"].values()  # and are the real modules once used
    for architecture in ("imagenet_unet", "dynunet"):
        parameters, optimizer, scheduler = built["sizes"][architecture]
        assert parameters > 0 and optimizer == "Novograd" and scheduler == "WarmupCosineSchedule"
