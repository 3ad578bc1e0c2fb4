"""The seam between cofe and OpenFL: everything that builds or runs a participant from its workspace.

Only this module (and the plan's template classes beside it) import OpenFL's runtime and, through
it, torch and GaNDLF; it is imported lazily by the commands that need it, so `cofe --help` stays
instant and another engine could sit beside it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from cofe_cli.errors import CofeError, FederationFailed
from cofe_cli.fsutil import staged_file
from cofe_cli.participant import (
    AGGREGATOR,
    CERT_DIR,
    COLS_FILE,
    CRL_FILE,
    DATA_FILE,
    LOG_CAPTURED_ENV,
    PLAN_DIR,
    PLAN_FILE,
    Participant,
)

# Relative to the workspace, the working directory while OpenFL runs.
PLAN = Path(PLAN_DIR, PLAN_FILE)
COLS = Path(PLAN_DIR, COLS_FILE)
DATA = Path(PLAN_DIR, DATA_FILE)
logger = logging.getLogger("cofe")

# OpenFL logs the whole plan (~140 lines, with rich markup) each time it parses one.
PLAN_LOGGER = "openfl.federated.plan.plan"
# Set in a record's `extra` for what belongs in the log file only (a traceback the console sums up in one line).
FILE_ONLY = "cofe_file_only"


class _ConsoleFilter(logging.Filter):
    """What a person at the terminal reads: OpenFL's progress, not the plan dump or our tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != PLAN_LOGGER and not getattr(record, FILE_ONLY, False)


def enter_workspace(participant: Participant) -> None:
    """Make the process belong to its workspace: OpenFL resolves plan, cert and save paths from the
    working directory, and OpenFL/GaNDLF drop temp files and ~/.gandlf logs that must not leak."""
    for folder in (participant.logs_dir, participant.tmp_dir, participant.home_dir):
        folder.mkdir(exist_ok=True)
    os.chdir(participant.workspace)
    os.environ["TMPDIR"] = str(participant.tmp_dir)
    os.environ["HOME"] = str(participant.home_dir)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if not os.environ.get(LOG_CAPTURED_ENV):  # else a launcher already writes our stderr to this file
        handlers[0].addFilter(_ConsoleFilter())
        handlers.append(logging.FileHandler(participant.log_file))
        # gRPC's C core writes its errors straight to stderr; cofe says what went wrong in its own words.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _parse_plan(*, with_data: bool = True):
    from openfl.federated import Plan

    from cofe_cli.plan.builder import refuse_secure_aggregation

    try:
        plan = Plan.parse(plan_config_path=PLAN.resolve(), cols_config_path=COLS.resolve(),
                          data_config_path=DATA.resolve() if with_data else None)
    except Exception as exc:  # OpenFL raises bare exceptions for any plan problem
        raise CofeError(f"OpenFL rejected the plan in {Path.cwd()}: {exc}", hint="re-create it with `cofe init --force`") from exc
    refuse_secure_aggregation(plan.config)
    return plan


@contextlib.contextmanager
def quiet():
    """GaNDLF prints and OpenFL warns a lot while a model is built; a CLI user needs none of it."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def check_plan(workspace: Path) -> None:
    """OpenFL's own structural check of a workspace's plan (cheap: no model is built)."""
    with _in_directory(workspace):
        _parse_plan()


def write_initial_model(workspace: Path, output: Path) -> None:
    """Build the GaNDLF model once and save its initial weights as OpenFL's init.pbuf."""
    from openfl.utilities.dataloading import initialize_minimal_dataloader
    from openfl.utilities.split import split_tensor_dict_for_holdouts

    import torch

    with _in_directory(workspace):
        plan = _parse_plan(with_data=False)
        torch.manual_seed(0)  # one initial model for one plan: reruns and `--workers` start from the same weights
        task_runner = plan.get_task_runner(initialize_minimal_dataloader(plan))
        tensor_dict, _ = split_tensor_dict_for_holdouts(task_runner.get_tensor_dict(False),
                                                        **task_runner.tensor_dict_split_fn_kwargs)
        output = Path(output).resolve()
        partial = output.with_name(f".{output.name}.partial")
        plan.save_model_to_state_file(tensor_dict=tensor_dict, round_number=0, output_path=str(partial))
        os.replace(partial, output)
        write_native_skeleton(plan, task_runner)


def serve_aggregator(workspace: Path) -> None:
    """Serve until every collaborator still polling was told to quit, then write the models; or stop
    when too few sites are left (FederationFailed naming them). A restarted aggregator (after a crash or
    a kill -9, at any moment) resumes from its database: the unfinished round, or, once every round was
    done, what was left of quitting and writing the models. A federation whose models were all written
    is refused."""
    with _in_directory(workspace):
        plan, aggregator = aggregator_of_plan()
        if aggregator.models_exported():
            raise CofeError(f"this federation already finished all {aggregator.rounds_to_train} rounds",
                            hint="its models are in workspaces/aggregator/save; `--restart` trains again from round 0")
        if aggregator.is_finished():
            logger.info("all %d rounds were done before the aggregator stopped: writing the models", aggregator.rounds_to_train)
        elif aggregator.round_number:
            logger.info("resuming at round %d of %d", aggregator.round_number + 1, aggregator.rounds_to_train)
        writer = NativeModelWriter(workspace)
        try:
            aggregator.when_last_round_begins(writer.start)
            _revocation_checking_server(plan).serve()
            if aggregator.sites_lost is not None:
                raise FederationFailed(f"the federation stopped: {aggregator.sites_lost.message()}",
                                       hint="restart the lost sites (`cofe start collaborator NAME`), then "
                                            "`cofe start aggregator` resumes this round", participant=AGGREGATOR)
            if not aggregator.is_finished():
                raise RuntimeError("the aggregator stopped before the last round")
            writer.write()
        finally:
            writer.close()
        aggregator.announce_finished()


def aggregator_of_plan():
    """The plan in the working directory and its aggregator, built without torch (see
    _import_aggregator_side_without_torch)."""
    _import_aggregator_side_without_torch()
    plan = _parse_plan(with_data=False)
    return plan, plan.get_aggregator()


# OpenFL's packages import torch whenever it is installed (openfl.federated for its PyTorch task runner,
# openfl.pipelines for one compression pipeline, tensorboardX for its writer), though an aggregator only
# averages numpy arrays. Measured on the demo's config with 6 sites, the serving aggregator held 607 MB RSS /
# 392 MB PSS with torch and 245 MB / 179 MB without. Imported while torch is hidden, they leave their torch parts out;
# a later `import torch` (a plugin's aggregation function, say) still loads it.
def _import_aggregator_side_without_torch() -> None:
    if "torch" in sys.modules:
        return  # already loaded in this process: nothing left to save
    importlib.import_module("scipy.stats")  # its array-API helpers look torch up in sys.modules, where None breaks them
    sys.modules["torch"] = None  # `import torch` raises ImportError, importlib.util.find_spec("torch") is None
    try:
        for module in ("openfl.federated", "openfl.callbacks", "openfl.pipelines", "openfl.interface.aggregation_functions",
                       "cofe_cli.engine.openfl_aggregator", "cofe_cli.engine.openfl_server"):  # (the plan's templates)
            importlib.import_module(module)
    finally:
        del sys.modules["torch"]


class NativeModelWriter:
    """export_native_models in a short-lived process of its own: it loads torch (and, without init's
    skeleton, builds GaNDLF's whole task runner), which the serving aggregator never needs. Measured on the
    demo's config with 6 sites: the aggregator's peak was 1.21 GiB PSS (1.48 GiB RSS), at this export; now
    it is 0.25 GiB PSS, and this process's 1.36 GiB PSS lasts seconds, once the sites have left.

    The process is started when the last round begins (`start`) and imports what the export needs while
    the sites train; `write` then tells it to write. Started after the last round, the export held
    `cofe run` 4.7 s, 3 of them importing torch (issue 12). A process never told to write writes nothing:
    the aggregator that failed stops it (`close`), and when the aggregator was killed it reads the end of
    its input and leaves.
    """

    WRITE = "write\n"

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.process: subprocess.Popen | None = None  # the writing process, once started

    def start(self) -> None:
        if self.process is not None:
            return
        import cofe_cli

        # The same cofe_cli as this process's, wherever it was imported from.
        source = str(Path(cofe_cli.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
        code = "from cofe_cli.engine.participant import write_native_models_when_told; write_native_models_when_told()"
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=self.workspace, env=env,
                                         stdin=subprocess.PIPE, text=True)

    def write(self) -> None:
        """Write the models now (starting the process if the last round never began here) and wait for it."""
        self.start()
        try:
            self.process.stdin.write(self.WRITE)
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # it died before it was told: its exit code says so below
        if self.process.wait() != 0:
            raise RuntimeError(f"writing the native models (save/*.pt, save/gandlf_model) failed (exit "
                               f"{self.process.returncode}); its traceback precedes this line")

    def close(self) -> None:
        """After `write`, nothing; without it, the process is stopped: until told, it has written nothing."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()


def export_native_models_here(plan=None) -> None:
    """export_native_models of the aggregator whose workspace is the working directory (or of `plan`):
    from the skeleton `cofe init` left when it matches the plan (torch only), else by building GaNDLF's
    task runner."""
    plan = plan or _parse_plan(with_data=False)
    if not export_native_models_from_skeleton(plan):
        export_native_models(plan)


def write_native_models_when_told() -> None:
    """NativeModelWriter's process: get ready (imports, plan), then export_native_models_here once
    NativeModelWriter.WRITE arrives on stdin; at the end of its input without it, leave writing nothing."""
    plan = _parse_plan(with_data=False)
    # What the export imports, loaded while the last round runs: torch, the protobuf helpers, and the
    # tensor pipe, whose package imports scikit-learn (2.7 s of the export's 3 s measured after them).
    for module in ("torch", "openfl.protocols.utils", "cofe_cli.engine.gandlf_model"):
        importlib.import_module(module)
    plan.get_tensor_pipe()
    if sys.stdin.readline() != NativeModelWriter.WRITE:
        return  # the aggregator stopped without finishing: nothing to write
    export_native_models_here(plan)
    # Every file is written, closed and renamed into place. The interpreter's teardown with torch
    # loaded took 0.75 s of the 0.9 s the aggregator waited after telling it to write.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _revocation_checking_server(plan):
    from cofe_cli.engine.openfl_server import RevocationCheckingServer, RevokedCertificates

    server_args = plan.get_server_args(None, None, None, {})
    server_args["aggregator"] = plan.get_aggregator()
    revoked = RevokedCertificates(Path(CERT_DIR) / CRL_FILE, Path(server_args["root_certificate"]))
    plan.server_ = RevocationCheckingServer(revoked=revoked, **server_args)  # get_server() builds no other
    return plan.get_server()


def export_native_models(plan) -> None:
    """Also keep best/last as PyTorch checkpoints that plain torch loads, and both as a GaNDLF model
    directory (save/gandlf_model) that GaNDLF's own `gandlf run --infer` loads."""
    from openfl.utilities.dataloading import initialize_minimal_dataloader

    task_runner = plan.get_task_runner(initialize_minimal_dataloader(plan))

    def native_state(tensor_dict: dict) -> dict:  # what the runner's save_native writes
        task_runner.set_tensor_dict(tensor_dict, with_opt_vars=False)
        return copy.deepcopy({"model_state_dict": task_runner.model.state_dict(),
                              "optimizer_state_dict": task_runner.optimizer.state_dict()})

    _write_native_models(plan, native_state, task_runner.params, _gandlf_inference_buffers(task_runner))


# Building GaNDLF's task runner only to give the final weights their native form cost the end of every
# federation 12-13 s of imports (GANDLF.models alone 8 s on 2 cores; the writing itself 0.4 s), after the
# last round, while `cofe run` waited: most of what made cofe's run phase slower than fx's (issue 12).
# `cofe init` builds that runner anyway for the initial model, so it keeps what the export needs from it
# beside init.pbuf: the model's state-dict layout (names, order, dtypes, shapes), the optimizer's untouched
# state and GaNDLF's parsed parameters. The export then needs torch alone. It is used only for the plan and
# GaNDLF version it was built with; otherwise (an edited plan, a kit-built aggregator) GaNDLF builds it.
NATIVE_SKELETON = "native_skeleton.pt"


def _native_skeleton_path(plan) -> Path:
    return Path(plan.config["aggregator"]["settings"]["last_state_path"]).parent / NATIVE_SKELETON


def _skeleton_identity() -> dict:
    from GANDLF.version import __version__ as gandlf_version  # (GANDLF/__init__ imports only its version)

    from cofe_cli.federation import file_sha384

    return {"plan_sha384": file_sha384(PLAN), "gandlf_version": gandlf_version}


def write_native_skeleton(plan, task_runner) -> None:
    """What export_native_models_from_skeleton needs of the runner GaNDLF just built for this plan."""
    import torch

    with staged_file(_native_skeleton_path(plan)) as partial:
        torch.save({**_skeleton_identity(), "model_state_dict": task_runner.model.state_dict(),
                    "optimizer_state_dict": task_runner.optimizer.state_dict(), "parameters": task_runner.params,
                    "gandlf_inference_buffers": _gandlf_inference_buffers(task_runner)},
                   str(partial))


def _gandlf_inference_buffers(task_runner) -> dict:
    """What save/gandlf_model's checkpoints add to the trained state for `gandlf run --infer`: nothing,
    except for a DP model (engine/privacy.py gandlf_inference_buffers)."""
    if not task_runner.dp:
        return {}
    from cofe_cli.engine.privacy import gandlf_inference_buffers

    return gandlf_inference_buffers(task_runner.model.state_dict(), task_runner.params)


def export_native_models_from_skeleton(plan) -> bool:
    """export_native_models without GaNDLF, from the skeleton `cofe init` wrote: False (nothing written)
    when there is none, or it belongs to another plan or GaNDLF version, or does not fit the models."""
    import torch

    path = _native_skeleton_path(plan)
    if not path.is_file():
        return False
    skeleton = torch.load(path, map_location="cpu", weights_only=False)
    if {key: skeleton.get(key) for key in ("plan_sha384", "gandlf_version")} != _skeleton_identity():
        return False
    layout = skeleton["model_state_dict"]

    def native_state(tensor_dict: dict) -> dict:
        # As OpenFL's set_pt_model_from_tensor_dict + load_state_dict + save_native: every tensor of the
        # model's state dict, in its order, copied into the model's own dtype.
        model_state = copy.copy(layout)  # (an OrderedDict that keeps the state dict's _metadata)
        for name, tensor in layout.items():
            value = torch.from_numpy(tensor_dict[name])
            if value.shape != tensor.shape:
                raise _SkeletonMismatch(name)
            model_state[name] = tensor.clone().copy_(value)
        return {"model_state_dict": model_state, "optimizer_state_dict": copy.deepcopy(skeleton["optimizer_state_dict"])}

    try:
        _write_native_models(plan, native_state, skeleton["parameters"], skeleton["gandlf_inference_buffers"])
    except (_SkeletonMismatch, KeyError):
        return False  # written models are only ever replaced whole: GaNDLF's path writes them all again
    return True


class _SkeletonMismatch(Exception):
    pass


def _write_native_models(plan, native_state, parameters: dict, gandlf_buffers: dict) -> None:
    """best/last as `native_state(tensor_dict)` makes them (save/*.pt), then save/gandlf_model, whose
    checkpoints also hold `gandlf_buffers` (see _gandlf_inference_buffers)."""
    import torch
    from openfl.protocols import utils

    from cofe_cli.engine.gandlf_model import MODEL_DIR, write_model_dir

    settings = plan.config["aggregator"]["settings"]
    models = {}
    for kind, key in (("best", "best_state_path"), ("final", "last_state_path")):
        state = Path(settings[key])
        if state.is_file():
            tensor_dict, _ = utils.deconstruct_model_proto(utils.load_proto(str(state)), plan.get_tensor_pipe())
            models[kind] = native_state(tensor_dict)
            with staged_file(state.with_suffix(".pt")) as partial:
                torch.save(models[kind], str(partial))
    for state in models.values():
        if gandlf_buffers:  # (a copy otherwise loses the state dict's _metadata)
            state["model_state_dict"] = {**gandlf_buffers, **state["model_state_dict"]}
    if models:
        write_model_dir(Path(settings["last_state_path"]).parent / MODEL_DIR, models=models,
                        gandlf_config=plan.config["task_runner"]["settings"]["gandlf_config"],
                        parameters=parameters, rounds=int(settings["rounds_to_train"]))


def write_evaluated_model(workspace: Path, source: Path, output: Path) -> None:
    """The model to evaluate as an initial model (.pbuf) of this federation's plan: an OpenFL model
    (.pbuf) or a PyTorch/GaNDLF checkpoint (.pt, .pth.tar). A model of another architecture or class
    list is refused, not evaluated."""
    import torch
    from openfl.protocols import utils
    from openfl.utilities.dataloading import initialize_minimal_dataloader
    from openfl.utilities.split import split_tensor_dict_for_holdouts

    source = Path(source).resolve()
    hint = "give --model best, final, or a model file this federation (or GaNDLF with its config) wrote"
    with _in_directory(workspace):
        plan = _parse_plan(with_data=False)
        task_runner = plan.get_task_runner(initialize_minimal_dataloader(plan))
        expected, _ = split_tensor_dict_for_holdouts(task_runner.get_tensor_dict(False),
                                                     **task_runner.tensor_dict_split_fn_kwargs)
        try:
            if source.suffix == ".pbuf":
                tensor_dict, _ = utils.deconstruct_model_proto(utils.load_proto(str(source)), plan.get_tensor_pipe())
            else:
                state = torch.load(source, map_location="cpu", weights_only=False)
                state = state.get("model_state_dict", state) if isinstance(state, dict) else state
                if task_runner.dp:  # a DP model: also the GaNDLF directory's checkpoints, with GaNDLF's buffers
                    from cofe_cli.engine.privacy import load_trained_state

                    load_trained_state(task_runner.model, state)
                else:
                    task_runner.model.load_state_dict(state)
                tensor_dict, _ = split_tensor_dict_for_holdouts(task_runner.get_tensor_dict(False),
                                                                **task_runner.tensor_dict_split_fn_kwargs)
        except Exception as exc:  # protobuf, pickle and state-dict errors alike: not a model of this plan
            raise CofeError(f"{source} is not a model of this federation's plan ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})", hint=hint) from None
        mismatched = sorted(name for name, tensor in expected.items()
                            if name not in tensor_dict or tuple(tensor_dict[name].shape) != tuple(tensor.shape))
        if mismatched:
            raise CofeError(f"{source} is not a model of this federation's plan ({len(mismatched)} tensor(s) differ, "
                            f"e.g. {mismatched[0]})", hint=hint)
        output = Path(output).resolve()
        partial = output.with_name(f".{output.name}.partial")
        plan.save_model_to_state_file(tensor_dict={name: tensor_dict[name] for name in expected}, round_number=0,
                                      output_path=str(partial))
        os.replace(partial, output)


def require_data_path(plan, name: str) -> None:
    if name not in plan.cols_data_paths:
        raise CofeError(f"no data path for {name} in {DATA}", hint=f"start it with `cofe start collaborator {name} --data PATH`")


def use_device(plan, device: str | None) -> None:
    if device:
        # A site's own hardware, not the federation's: applied after parsing, which has already fixed
        # the federation's identity from the plan's hash, so plan.yaml stays as every party has it.
        plan.config["task_runner"]["settings"]["device"] = device
        logger.info("training on %s (this site's --device)", device)


def run_collaborator(workspace: Path, name: str, device: str | None = None) -> None:
    with _in_directory(workspace):
        plan = _parse_plan()
        require_data_path(plan, name)
        use_device(plan, device)
        from cofe_cli.engine.openfl_client import RefusalAwareClient

        plan.client_ = RefusalAwareClient(**plan.get_client_args(name))  # get_collaborator() builds no other
        plan.get_collaborator(name).run()


def load_model(workspace: Path, checkpoint: Path):
    """The GaNDLF model of a federation with a native checkpoint's weights (for tests and users)."""
    import torch
    from openfl.utilities.dataloading import initialize_minimal_dataloader

    with _in_directory(workspace):
        plan = _parse_plan(with_data=False)
        task_runner = plan.get_task_runner(initialize_minimal_dataloader(plan))
    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    task_runner.model.load_state_dict(state["model_state_dict"])
    return task_runner.model.eval()


@contextlib.contextmanager
def _in_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
