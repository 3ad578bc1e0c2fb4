"""Several collaborators of one federation in one process (`cofe run --workers N`).

Each site keeps what makes it a site: its own plan, its own OpenFL Collaborator (with its own tensor
database), its own gRPC client over its own mutual-TLS channel with its own certificate and key, its
own data, and its own log file in its own workspace. What the sites share is the process: torch,
GaNDLF and OpenFL are loaded once, and only one site at a time runs its round's tasks (a lock, the
"turn"). A site's task runner (GaNDLF model, optimizer, data loaders, cached validation subjects)
exists only during its turn: it is built when the site's round starts and released when it ends, so
a worker holds one site's training state at a time however many sites it serves.

OpenFL and GaNDLF resolve paths from the working directory and write into $TMPDIR and $HOME, which
are per process: a site's turn is also when the process enters its workspace (under the same lock).
Sites waiting for their turn only poll the aggregator, which needs no working directory (their
certificate paths are absolute).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import tempfile
import threading
import time

from cofe_cli.engine.participant import PLAN_LOGGER, _in_directory, _parse_plan, require_data_path, use_device
from cofe_cli.errors import CofeError
from cofe_cli.fsutil import atomic_write_text
from cofe_cli.participant import Participant

logger = logging.getLogger("cofe")


class RoundScopedTaskRunner:
    """Stands in for a site's OpenFL task runner; the real one exists only inside `with` (the site's turn).
    OpenFL's Collaborator only touches its task runner while it runs tasks, apart from being told the
    optimizer treatment once, which is kept here and given to every runner built.

    The random numbers a site's round draws do not depend on the other sites of its worker: the task
    runner seeds each task from the site's name and the round (openfl_task_runner.seed_task), and the
    weights a fresh model is built with are replaced by the round's model before any task uses them."""

    def __init__(self, build):
        self._build = build
        self._runner = None
        self._opt_treatment = None

    def set_optimizer_treatment(self, treatment) -> None:
        self._opt_treatment = treatment

    def __enter__(self):
        self._runner = self._build()
        if self._opt_treatment is not None:
            self._runner.set_optimizer_treatment(self._opt_treatment)
        return self._runner

    def __exit__(self, *exc) -> None:
        self._runner = None
        _release_memory()

    def __getattr__(self, name):
        runner = self.__dict__.get("_runner")
        if runner is None:
            raise AttributeError(f"{name}: a site's task runner exists only during its turn")
        return getattr(runner, name)


def _release_memory() -> None:
    # The model, optimizer and loaders form reference cycles (torch modules, hooks); collect them now and
    # give the freed heap back to the system, so that a worker's memory is one site's, not its peak's.
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _site_directory(participant: Participant):
    """The process as the site's own for its turn: its workspace, its TMPDIR and HOME."""
    previous = {key: os.environ.get(key) for key in ("TMPDIR", "HOME")}
    os.environ["TMPDIR"] = str(participant.tmp_dir)
    os.environ["HOME"] = str(participant.home_dir)
    tempfile.tempdir = None  # tempfile caches $TMPDIR at first use
    try:
        with _in_directory(participant.workspace):
            yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tempfile.tempdir = None


class _Site:
    """One collaborator of the worker, set up in its own thread during a turn."""

    def __init__(self, participant: Participant, turn: threading.Lock, device: str | None):
        self.participant = participant
        self.turn = turn
        self.device = device
        self.collaborator = None
        self.runner: RoundScopedTaskRunner | None = None

    @contextlib.contextmanager
    def turn_taken(self):
        with self.turn, _site_directory(self.participant):
            yield

    def open(self) -> None:
        from cofe_cli.engine.openfl_client import RefusalAwareClient

        name, participant = self.participant.name, self.participant
        with self.turn_taken():
            plan = _parse_plan()
            require_data_path(plan, name)
            use_device(plan, self.device)
            # Absolute: the client reads them again when it reconnects, from whatever directory the worker is in.
            client = RefusalAwareClient(**plan.get_client_args(name, root_certificate=str(participant.chain),
                                                               private_key=str(participant.key),
                                                               certificate=str(participant.cert)))
            self.runner = RoundScopedTaskRunner(lambda: _build_task_runner(plan, name))
            self.collaborator = plan.get_collaborator(name, task_runner=self.runner, client=client)

    def run(self) -> None:
        """OpenFL's Collaborator.run, with a round's tasks in the site's turn and its task runner built for it."""
        collaborator = self.collaborator
        collaborator.callbacks.on_experiment_begin()
        while True:
            tasks, round_number, sleep_time, time_to_quit = collaborator.client.get_tasks()
            if time_to_quit:
                break
            if not tasks:
                time.sleep(sleep_time)
                continue
            with self.turn_taken(), self.runner:
                logger.info("Round: %d Received Tasks: %s", round_number, tasks)
                collaborator.callbacks.on_round_begin(round_number)
                logs = {}
                for task in tasks:
                    logs.update(collaborator.do_task(task, round_number))
                collaborator.tensor_db.clean_up(collaborator.db_store_rounds)
                collaborator.callbacks.on_round_end(round_number, logs)
        collaborator.callbacks.on_experiment_end()
        logger.info("Received shutdown signal. Exiting...")


def _build_task_runner(plan, name: str):
    # Plan caches what it built, and keeps the data loader in its config too: a fresh loader and runner
    # each turn, and no reference to either left in the plan, so that they go when the turn ends.
    plan.loader_ = plan.runner_ = None
    try:
        return plan.get_task_runner(plan.get_data_loader(name))
    finally:
        plan.loader_ = plan.runner_ = None
        plan.config["task_runner"]["settings"].pop("data_loader", None)


class _SiteLog(logging.Filter):
    """A site's records are those its thread logs (the thread carries the site's name)."""

    def __init__(self, name: str):
        super().__init__()
        self.site = name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.site


def _site_handler(participant: Participant, fmt: logging.Formatter) -> logging.Handler:
    for folder in (participant.logs_dir, participant.tmp_dir, participant.home_dir):
        folder.mkdir(exist_ok=True)
    handler = logging.FileHandler(participant.log_file)
    handler.addFilter(_SiteLog(participant.name))
    handler.setFormatter(fmt)
    return handler


def _setup_logging(participants: list[Participant]) -> None:
    """The worker's own output (the launcher's log of it) gets every site's lines; each site's log file in
    its workspace gets its own, as a collaborator in its own process writes it."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.addFilter(lambda record: record.name != PLAN_LOGGER)
    console.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(console)
    for participant in participants:
        root.addHandler(_site_handler(participant, fmt))
    root.setLevel(logging.INFO)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _run_site(participant: Participant, turn: threading.Lock, device: str | None, codes: dict[str, int]) -> None:
    """A site's whole life in the worker; its exit code goes to its exit file, as a process's would to its launcher."""
    site = _Site(participant, turn, device)
    try:
        site.open()
        site.run()
        code = 0
        logger.info("%s finished", participant.name)
    except CofeError as error:  # a refusal (revoked certificate, ...): one line says it all
        logger.error("error: %s", error.message, exc_info=error)
        if error.hint:
            logger.error("hint: %s", error.hint)
        code = error.exit_code
    except Exception as exc:
        logger.exception("%s failed: %s: %s", participant.name, type(exc).__name__, exc)
        code = 1
    site.collaborator = site.runner = None
    _release_memory()
    codes[participant.name] = code
    atomic_write_text(participant.exit_file, f"{code}\n")


def run_sites(participants: list[Participant], device: str | None = None) -> int:
    """Run every site to its end in this process (training on `device` instead of the plan's, when given);
    0 when all finished, else the first failure's code."""
    _setup_logging(participants)
    turn = threading.Lock()
    codes: dict[str, int] = {}
    threads = [threading.Thread(target=_run_site, args=(p, turn, device, codes), name=p.name, daemon=True) for p in participants]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a timed join, so that a SIGTERM (KeyboardInterrupt) reaches this thread
            thread.join(timeout=0.5)
    return next((code for code in (codes.get(p.name, 1) for p in participants) if code), 0)
