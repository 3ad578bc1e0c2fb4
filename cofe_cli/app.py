"""Wires the commands together; each command lives in its own module under commands/."""

from __future__ import annotations

import os
import sys

import typer

from cofe_cli import __version__
from cofe_cli.commands import certify, demo, image, init, run, start
from cofe_cli.commands import kit
from cofe_cli.commands import doctor
from cofe_cli.commands import data
from cofe_cli.commands import status
from cofe_cli.commands import evaluate, export_model, infer
from cofe_cli.console import err_console, print_error
from cofe_cli.errors import CofeError, FederationFailed, os_failure

DEBUG_ENV = "COFE_DEBUG"

app = typer.Typer(
    name="cofe",
    help="From a GaNDLF model configuration to a running, certified OpenFL federation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cofe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    pass


app.command("init")(init.init)
app.add_typer(certify.app, name="certify")
app.add_typer(start.app, name="start")
app.command("run")(run.run)
app.command("demo")(demo.demo)
app.command("infer")(infer.infer)
app.command("evaluate")(evaluate.evaluate)
app.add_typer(image.app, name="image")
kit.export_app.command("model")(export_model.export_model)
app.add_typer(kit.export_app, name="export")
app.command("import")(kit.import_kit)
app.command("doctor")(doctor.doctor)
app.add_typer(data.app, name="data")
app.command("status")(status.status)
app.command("stop")(status.stop)


def main(argv: list[str] | None = None) -> None:
    try:
        try:
            app(args=argv, prog_name="cofe")
        except OSError as error:  # e.g. a read-only or full disk where a command writes: one line, not a traceback
            raise os_failure(error) from None
        except CofeError:
            raise
        except Exception as error:  # a defect of cofe's, never the user's input: still one line, not a traceback
            if os.environ.get(DEBUG_ENV):
                raise
            reason = str(error).splitlines()[0][:200] if str(error) else ""
            raise CofeError(f"cofe failed unexpectedly ({type(error).__name__}{': ' + reason if reason else ''})",
                            hint=f"this is a defect in cofe: run again with {DEBUG_ENV}=1 for the traceback and report it") from None
    except CofeError as error:
        if isinstance(error, FederationFailed) and error.log_tail:
            err_console.rule(f"last log lines of {error.participant}")
            for line in error.log_tail:
                err_console.print(line, markup=False, highlight=False, soft_wrap=True)
            err_console.rule()
        print_error(error.message, error.hint)
        sys.exit(error.exit_code)
