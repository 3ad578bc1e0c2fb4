"""GaNDLF's own verdict on a config: the one module of cofe that imports GANDLF.

GANDLF is imported inside the function: importing it pulls torch, monai and friends (~8 s, ~1.7 GB),
which `cofe` commands that never validate must not pay for.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from typing import Iterator

import yaml

from cofe_cli.errors import CofeError

_REJECTED_HINT = (
    "fix that setting in the GaNDLF config; GaNDLF's samples/config_all_options.yaml documents every option"
)


def validate_with_gandlf(cfg: dict) -> dict:
    """Run GaNDLF's ConfigManager on `cfg` (left unchanged) and return the parameters it parsed.

    Any rejection becomes CofeError("GaNDLF rejected the config: <reason>"). GaNDLF's prints, warnings
    and log records during the check are swallowed: the reason is in the CofeError.
    """
    # The plan stores the config as YAML and OpenFL's runner hands ConfigManager what it reads back,
    # so check exactly that: this also catches values a plan cannot hold.
    try:
        as_the_plan_holds_it = yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False))
    except yaml.YAMLError as error:
        raise CofeError(
            f"the GaNDLF config holds a value that cannot be written to an OpenFL plan: {error}",
            hint="use only plain YAML values (mappings, lists, strings, numbers, booleans)",
        ) from None

    with _quiet():
        try:
            from GANDLF.config_manager import ConfigManager
            from pydantic import ValidationError
        except ImportError as error:
            raise CofeError(
                f"GaNDLF cannot be imported: {error}",
                hint="reinstall cofe's dependencies, e.g. `pip install gandlf==0.1.5`; `gandlf verify-install` checks it",
            ) from None

        with _home_in_temporary_folder():
            try:
                # ConfigManager accepts a dict directly (no temp file), and its validators edit
                # nested mappings in place: hand it a copy.
                return ConfigManager(copy.deepcopy(as_the_plan_holds_it))
            except ValidationError as error:
                reason = _describe_validation_error(error)
            except AssertionError as error:
                reason = _describe_assertion(error)
            except Exception as error:  # noqa: BLE001 - any GaNDLF failure is a rejection of the config
                reason = f"{type(error).__name__}: {error}"
    raise CofeError(f"GaNDLF rejected the config: {reason}", hint=_REJECTED_HINT)


def _describe_validation_error(error) -> str:
    problems = error.errors()
    if not problems:
        return str(error).splitlines()[0]
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "config"
    message = first.get("msg", "invalid value")
    # Sections GaNDLF checks inside its top-level validator (optimizer, scheduler, ...) report a
    # location relative to themselves, e.g. just "type"; the offending value tells the user where.
    offending = first.get("input")
    got = f" (got {offending!r})" if isinstance(offending, (str, int, float)) and len(repr(offending)) <= 60 else ""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{where}: {message}{got}{more}"


def _describe_assertion(error: AssertionError) -> str:
    # ConfigManager wraps other failures as
    # "Config parsing failed: config_file_path=..., version_check_flag=..., Exception: <reason>, <traceback>".
    text = str(error)
    marker = "Exception: "
    if marker in text:
        text = text.split(marker, 1)[1].split(", Traceback", 1)[0]
    return text.strip().splitlines()[0] if text.strip() else "assertion failed"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow what GaNDLF prints, warns and logs while it is imported and checks a config."""
    sink = io.StringIO()
    previous_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_disable)


@contextlib.contextmanager
def _home_in_temporary_folder() -> Iterator[None]:
    """Point HOME at a throw-away folder for the call only.

    GaNDLF's logger_setup() writes ~/.gandlf/<timestamp>.log. ConfigManager in 0.1.5 does not call it
    (only the `gandlf` CLI entry points do), so this is a guard for other GaNDLF versions. It wraps the
    call and not the import on purpose: matplotlib fixes its config and font-cache folders under HOME
    at import, and a folder deleted afterwards would leave it pointing nowhere. HOME is process-wide:
    cofe validates from its main thread, before it starts any other.
    """
    previous_home = os.environ.get("HOME")
    with tempfile.TemporaryDirectory(prefix="cofe-gandlf-home-") as temporary_home:
        os.environ["HOME"] = temporary_home
        try:
            yield
        finally:
            if previous_home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = previous_home
