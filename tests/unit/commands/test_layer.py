"""Commands only parse and print: a command module never imports another command module.

What several commands share lives outside commands/ (init_pipeline.py, launch/, plan/), or in the few
modules of commands/ that app.py does not wire as commands (shared options, shared printing). Read from
the source with `ast`: nothing is imported, so no torch either."""

from __future__ import annotations

import ast
from pathlib import Path

import cofe_cli

PACKAGE = Path(cofe_cli.__file__).parent
COMMANDS = PACKAGE / "commands"


def imported_command_modules(source: Path) -> set[str]:
    """The modules of cofe_cli.commands that `source` imports, by their short name."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.ImportFrom) and node.module == "cofe_cli.commands":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cofe_cli.commands."):
            names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[2] for alias in node.names if alias.name.startswith("cofe_cli.commands.")}
    return names


def command_modules() -> set[str]:
    """The modules of commands/ that app.py wires into the CLI."""
    return imported_command_modules(PACKAGE / "app.py")


def test_app_wires_the_commands() -> None:
    assert {"init", "run", "demo", "start", "evaluate", "kit"} <= command_modules()


def test_no_command_module_imports_another() -> None:
    commands = command_modules()
    crossing = {module.stem: sorted(imported & commands)
                for module in sorted(COMMANDS.glob("*.py")) if (imported := imported_command_modules(module) & commands)}
    assert crossing == {}, "move what commands share out of commands/ (init_pipeline.py, launch/, plan/)"


def test_only_app_imports_the_commands() -> None:
    importers = sorted(str(module.relative_to(PACKAGE)) for module in PACKAGE.rglob("*.py")
                       if module != PACKAGE / "app.py" and module.parent != COMMANDS and imported_command_modules(module))
    assert importers == []


def test_what_commands_share_in_commands_is_not_a_command() -> None:
    shared = set().union(*(imported_command_modules(module) for module in COMMANDS.glob("*.py")))
    assert shared and not shared & command_modules()
    for name in shared:
        assert "Not a command" in ast.get_docstring(ast.parse((COMMANDS / f"{name}.py").read_text())), name
