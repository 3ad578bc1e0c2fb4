"""Every command of the CLI, fed bad input one parameter at a time: it must fail cleanly.

The commands and their parameters are read from the Typer app itself, so a new command or option is
walked without touching this file (a Path parameter with a name this file does not know fails the
walk: say below what it holds). Each case changes exactly one parameter to a bad value, in an empty
folder, and expects: a non-zero exit, no traceback (no exception other than SystemExit leaves
`cofe_cli.app.main`), and an `error:` line (or Typer's usage error).

The CLI runs in this process (a few hundred cases in seconds). torch, GaNDLF and OpenFL are made
unimportable while it runs, so a bad value that is wrongly accepted, and lets a command go on to
build a model or train, fails here at once instead of running a federation. No container engine and
no Slurm are reachable either (DOCKER_HOST names no socket, PATH has no sbatch).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import traceback
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import typer
import yaml
from unit_federation import gandlf_config, write_federation
from volumes import write_volume

from cofe_cli.app import app, main
from cofe_cli.pki.local_issuing import certify_locally
from cofe_cli.plan.workspaces import CollaboratorData

HEAVY = ("torch", "GANDLF", "openfl")


def leaf_commands(command=None, path: tuple[str, ...] = ()):
    """(words, click command) for every command a user can run, groups that run on their own included."""
    command = command if command is not None else typer.main.get_command(app)
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    if path and getattr(command, "invoke_without_command", False):
        yield path, command  # e.g. `cofe certify` (everything at once) beside `cofe certify ca`
    for name, sub in subcommands.items():
        yield from leaf_commands(sub, path + (name,))


def annotation(command, name: str):
    hints = typing.get_type_hints(getattr(command.callback, "__wrapped__", command.callback))
    hint = hints[name]
    return typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint


# ---------------------------------------------------------------- the bad values

Maker = Callable[[Path], str]


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


NON_UTF8 = "caf\xe9;na\xefve\n".encode("latin-1") + b"\xff\xfe\x00garbage\n"


def regular_file(tmp: Path) -> str:
    return str(_file(tmp, "a-file.txt", b"just a file\n"))


def missing(tmp: Path) -> str:
    return str(tmp / "inputs" / "does-not-exist")


def empty_folder(tmp: Path) -> str:
    folder = tmp / "inputs" / "empty-folder"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def non_utf8_file(tmp: Path) -> str:
    return str(_file(tmp, "latin1.yaml", NON_UTF8))


def empty_file(tmp: Path) -> str:
    return str(_file(tmp, "empty.bin", b""))


def under_a_file(tmp: Path) -> str:
    return str(Path(regular_file(tmp)) / "out.tar.gz")


def folder_with_latin1_manifest(tmp: Path) -> str:
    folder = tmp / "inputs" / "latin1-fed"
    (folder / "plans").mkdir(parents=True, exist_ok=True)
    (folder / "plans" / "federation.yaml").write_bytes(NON_UTF8)
    return str(folder)


def _site(tmp: Path, name: str, csv: bytes | None = None, image: bytes | None = None) -> Path:
    folder = tmp / "inputs" / name
    folder.mkdir(parents=True, exist_ok=True)
    label = write_volume(folder / "s1_seg.nii.gz")
    scan = _file(tmp, f"{name}/s1_t1.nii.gz", image) if image is not None else write_volume(folder / "s1_t1.nii.gz")
    text = csv if csv is not None else f"SubjectID,Channel_0,Label\ns1,{scan},{label}\n".encode()
    for csv_name in ("train.csv", "valid.csv"):
        (folder / csv_name).write_bytes(text)
    return folder


def site_with_latin1_csvs(tmp: Path) -> str:
    return str(_site(tmp, "latin1-site", csv=b"SubjectID,Channel_0,Label\ns\xe9,a.nii.gz,b.nii.gz\n"))


def site_with_text_as_image(tmp: Path) -> str:
    return str(_site(tmp, "text-site", image=b"this is not an image\n"))


def latin1_csv_file(tmp: Path) -> str:
    return str(_site(tmp, "latin1-csv", csv=b"SubjectID,Channel_0,Label\ns\xe9,a.nii.gz,b.nii.gz\n") / "train.csv")


def collaborator(make: Maker) -> Maker:
    return lambda tmp: f"hospital_a={make(tmp)}"


def text(value: str) -> Maker:
    return lambda tmp: value


# What a Path parameter holds, by its name: a federation/site folder, a data folder, another folder,
# a file read, or a file written.
PATH_ROLES = {
    "dir": "federation folder",
    "data": "data folder",
    "source": "folder",
    "gandlf_config": "input file", "kit": "input file", "request_file": "input file", "signed_file": "input file",
    "extra_ca_bundle": "input file", "data_csv": "input file", "csv": "input file", "partition_csv": "input file",
    "out": "output file",
    "sites_from": "folder",
}
BAD_PATHS: dict[str, dict[str, Maker]] = {
    "federation folder": {"a file": regular_file, "missing": missing, "empty": empty_folder,
                          "latin-1 manifest": folder_with_latin1_manifest},
    "data folder": {"a file": regular_file, "missing": missing, "empty": empty_folder,
                    "latin-1 CSVs": site_with_latin1_csvs, "text as image": site_with_text_as_image},
    "folder": {"a file": regular_file, "missing": missing, "empty": empty_folder},
    "input file": {"missing": missing, "a folder": empty_folder, "latin-1": non_utf8_file, "empty": empty_file},
    "output file": {"under a file": under_a_file},
}
BAD_NUMBERS = {int: {"abc": text("abc"), "negative": text("-5"), "absurd": text("1000000000")},
               float: {"abc": text("abc"), "negative": text("-5"), "nan": text("nan")}}
BAD_TEXT = {"empty": text(""), "garbage": text("Bad Name!")}
BAD_COLLABORATORS = {"empty": text(""), "garbage": text("Bad Name!"),
                     "missing data": collaborator(missing), "latin-1 CSV": collaborator(latin1_csv_file),
                     "latin-1 CSVs": collaborator(site_with_latin1_csvs),
                     "text as image": collaborator(site_with_text_as_image)}
# A folder these commands are given may be missing or empty: they make it.
MAKE_THEIR_FOLDER = {("init",), ("demo",), ("import",)}


def write_config(tmp: Path) -> str:
    path = tmp / "inputs" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(gandlf_config()))
    return str(path)


# Values for the required parameters that are not the one under test: as good as can be had without
# torch (a valid GaNDLF config; files that are not a kit or a request, which those commands refuse).
REQUIRED = {"gandlf_config": write_config, "collaborator": text("hospital_a"), "name": text("hospital_a"),
            "kit": regular_file, "request_file": regular_file, "signed_file": regular_file,
            "data_csv": regular_file, "csv": regular_file, "out": lambda tmp: str(tmp / "inputs" / "new-folder"),
            "sites": text("hospital_a")}  # `cofe start worker --sites` (what `cofe run --workers` starts)
# Options that are each optional but of which one must be given: the first is given unless another is under test.
ONE_OF = {("init",): ("collaborator", "sites_from")}


def given_beside(words: tuple[str, ...], param, other) -> bool:
    """Whether `other` is given (with its value from REQUIRED) in the case that tests `param`."""
    if other is param:
        return False
    if other.required:
        return True
    alternatives = ONE_OF.get(words, ())
    return bool(alternatives) and other.name == alternatives[0] and param.name not in alternatives


def bad_values(words: tuple[str, ...], command, param) -> dict[str, Maker]:
    if getattr(param, "is_flag", False):
        return {}
    kind = annotation(command, param.name)
    if param.name == "collaborator":
        return BAD_COLLABORATORS
    if kind is Path:
        assert param.name in PATH_ROLES, f"`cofe {' '.join(words)}` has a Path parameter {param.name!r}: add it to PATH_ROLES"
        values = dict(BAD_PATHS[PATH_ROLES[param.name]])
        if words in MAKE_THEIR_FOLDER and param.name == "dir":
            del values["missing"], values["empty"]
        return values
    if kind in BAD_NUMBERS:
        return BAD_NUMBERS[kind]
    assert kind is str, f"`cofe {' '.join(words)}` {param.name}: no bad values known for {kind}"
    return BAD_TEXT


@dataclass(frozen=True)
class Case:
    words: tuple[str, ...]
    param: str
    value: str
    make: Maker
    required: tuple[tuple[object, Maker], ...]  # (the other required parameters, their values)
    target: object

    def argv(self, tmp: Path) -> list[str]:
        args = list(self.words)
        for param, make in ((*self.required, (self.target, self.make))):
            if param.param_type_name == "argument":
                args.append(make(tmp))
            else:
                args += [param.opts[0], make(tmp)]
        return args


def cases() -> list:
    found = []
    for words, command in leaf_commands():
        for param in command.params:
            for value, make in bad_values(words, command, param).items():
                required = tuple((other, REQUIRED[other.name]) for other in command.params
                                 if given_beside(words, param, other))
                case = Case(words, param.name, value, make, required, param)
                found.append(pytest.param(case, id=f"{' '.join(words)} {param.name}={value}"))
    return found


# ---------------------------------------------------------------- running one case


@dataclass
class Outcome:
    code: int
    output: str
    escaped: str | None  # the traceback of an exception other than SystemExit, as a user would see it


def run_in_process(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:
            code, escaped = 1, traceback.format_exc()
    return Outcome(code, out.getvalue() + err.getvalue(), escaped)


class ReachedHeavyWork(BaseException):
    """Not an ImportError (which cofe turns into an error line): nothing in cofe catches it."""


class HeavyImportBlocker:
    """A meta path finder that stops any import of torch, GaNDLF or OpenFL."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in HEAVY:
            raise ReachedHeavyWork(f"the command went on to import {fullname}: the bad value was accepted")
        return None


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder; no heavy package, container engine or Slurm within reach."""
    monkeypatch.setattr(sys, "meta_path", [HeavyImportBlocker(), *sys.meta_path])
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("HOME", "TMPDIR"):  # restored after the case, whatever a wrongly started participant set them to
        monkeypatch.setenv(name, os.environ.get(name, str(tmp_path)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_the_walk_covers_every_command() -> None:
    walked = {" ".join(words) for words, _ in leaf_commands()}
    assert {"init", "run", "demo", "certify", "certify sign", "start collaborator", "image build", "doctor",
            "export collaborator", "export model", "import", "status", "stop", "evaluate", "infer", "data split"} <= walked
    assert len(cases()) > 200


@pytest.fixture(scope="module")
def certified_federation(tmp_path_factory) -> Path:
    """A federation as `cofe init` and `cofe certify` leave it (no init.pbuf: no torch), its collaborator
    without data, so that nothing can start training in it."""
    root = tmp_path_factory.mktemp("certified") / "fed"
    layout = write_federation(root, config=gandlf_config(), address="localhost",
                              collaborators=[CollaboratorData("hospital_a", None)])
    certify_locally(layout, layout.load_manifest())
    return root


def assert_fails_cleanly(argv: list[str]) -> None:
    outcome = run_in_process(argv)
    shown = f"cofe {' '.join(argv)}\nexit {outcome.code}\n{outcome.output}\n{outcome.escaped or ''}"
    assert outcome.escaped is None and "Traceback" not in outcome.output, shown
    assert outcome.code != 0, shown
    lines = outcome.output.splitlines()
    usage_error = outcome.code == 2 and any(line.startswith("Usage: cofe") for line in lines)
    doctor_failed = outcome.code == 1 and argv[0] == "doctor" and any(" checks failed" in line for line in lines)
    assert usage_error or doctor_failed or any(line.startswith("error: ") and len(line) > len("error: ")
                                               for line in lines), shown


@pytest.mark.parametrize("case", cases())
def test_bad_input_fails_cleanly(sealed: Path, case: Case) -> None:
    assert_fails_cleanly(case.argv(sealed))


@pytest.mark.parametrize("case", cases())
def test_bad_input_fails_cleanly_in_a_federation(sealed: Path, certified_federation: Path, case: Case) -> None:
    """The same, run in a certified federation (the default --dir), so checks past "no federation" are reached."""
    shutil.rmtree(sealed / "work")
    shutil.copytree(certified_federation, sealed / "work", symlinks=True)
    os.chdir(sealed / "work")  # the folder was replaced; the fixture restores the cwd afterwards
    assert_fails_cleanly(case.argv(sealed))

