"""One participant of a federation: its role, name, the name its certificate carries, where its
workspace keeps each file, the `cofe start` that runs it and how many threads it may use.

As NVIDIA FLARE's lighter keeps one `Participant` (with a type) and one owner of the paths
(`ctx.get_ws_dir`), cofe keeps one here: launchers, the supervisor, PKI, kits and the engine ask a
Participant instead of assembling `workspaces/NAME/logs/NAME.log` or `cert/...` themselves.
Pure: no torch, no OpenFL (launchers import it without loading the engine).

FED/workspaces/NAME/          the participant's OpenFL workspace (its working directory)
  plan/plan.yaml, cols.yaml, data.yaml
  cert/cert_chain.crt         the CA chain
  cert/server/agg_<address>.{crt,key}   the aggregator's, named by the address collaborators dial
  cert/client/col_<name>.{crt,key}      a collaborator's
  logs/<name>.log, logs/events.jsonl     its log; the aggregator's round events
  save/, local_state/         models and the aggregator's state between starts
  data/                       a site's data that cofe prepared (a split CSV, an evaluation-only set)
  .tmp/, .home/               TMPDIR and HOME while it runs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

AGGREGATOR = "aggregator"
ROLE_AGGREGATOR = "aggregator"
ROLE_COLLABORATOR = "collaborator"

# Set by a launcher that already writes the participant's output to its log file (the engine then
# logs to the console only, which is that file).
LOG_CAPTURED_ENV = "COFE_LOG_CAPTURED"

# Folders and files relative to a workspace: OpenFL resolves the plan's paths from the working
# directory, so the plan (plan/builder.py) names them relative as well.
PLAN_DIR = "plan"
CERT_DIR = "cert"
LOGS_DIR = "logs"
SAVE_DIR = "save"
LOCAL_STATE_DIR = "local_state"
DATA_DIR = "data"
TMP_DIR = ".tmp"
HOME_DIR = ".home"
PLAN_FILE = "plan.yaml"  # the OpenFL plan, in plans/ and in every workspace's plan/
COLS_FILE = "cols.yaml"  # the collaborator list, likewise
DATA_FILE = "data.yaml"  # a workspace's own: which folder holds each collaborator's data
CHAIN_FILE = "cert_chain.crt"
CRL_FILE = "crl.pem"  # beside the chain in the aggregator's cert/, as the CA's ca/crl.pem
EVENTS_FILE = f"{LOGS_DIR}/events.jsonl"
# What an aggregator keeps between starts; `cofe start aggregator --restart` clears it.
AGGREGATOR_STATE = (LOCAL_STATE_DIR, "save/best.pbuf", "save/last.pbuf", "save/best.pt", "save/last.pt",
                    "save/gandlf_model", EVENTS_FILE)


def role_of(name: str) -> str:
    return ROLE_AGGREGATOR if name == AGGREGATOR else ROLE_COLLABORATOR


def is_aggregator(name: str) -> bool:
    """Whether `name` is the aggregator (also the site name of aggregated metrics)."""
    return name == AGGREGATOR


@dataclass(frozen=True)
class Participant:
    """Handed out by FederationLayout.participant(). `aggregator_address` (the plan's) is the name the
    aggregator's certificate carries; without the manifest only that certificate's name is unknown."""

    name: str
    root: Path  # the federation's directory
    workspace: Path
    aggregator_address: str | None = None

    # -- who

    @property
    def is_aggregator(self) -> bool:
        return is_aggregator(self.name)

    @property
    def role(self) -> str:
        return role_of(self.name)

    @property
    def common_name(self) -> str:
        """The name its certificate carries: the aggregator's address (what clients dial), or the collaborator's name."""
        if not self.is_aggregator:
            return self.name
        if self.aggregator_address is None:
            raise ValueError("the aggregator's certificate name needs the federation's manifest (its address)")
        return self.aggregator_address

    def subject_alt_names(self, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The names its certificate is valid for: the aggregator's address, `extra` host names, and for
        localhost the loopback addresses local clients dial too; a collaborator's name only."""
        if not self.is_aggregator:
            return [self.name]
        names = [self.common_name, *extra]
        if self.common_name == "localhost":
            names += ["127.0.0.1", "::1"]
        return list(dict.fromkeys(names))

    @property
    def certificate_kind(self) -> str:
        """OpenFL's word for the certificate: the aggregator serves, collaborators are clients."""
        return "server" if self.is_aggregator else "client"

    # -- where

    @property
    def plan_dir(self) -> Path:
        return self.workspace / PLAN_DIR

    @property
    def plan_file(self) -> Path:
        return self.plan_dir / PLAN_FILE

    @property
    def cols_file(self) -> Path:
        return self.plan_dir / COLS_FILE

    @property
    def data_config(self) -> Path:
        return self.plan_dir / DATA_FILE

    @property
    def cert_dir(self) -> Path:
        return self.workspace / CERT_DIR

    @property
    def chain(self) -> Path:
        return self.cert_dir / CHAIN_FILE

    @property
    def cert(self) -> Path:
        return self._cert_file(".crt")

    @property
    def key(self) -> Path:
        return self._cert_file(".key")

    def _cert_file(self, suffix: str) -> Path:
        if self.is_aggregator:
            # OpenFL lowercases the address when it looks for the files.
            return self.cert_dir / "server" / f"agg_{self.common_name.lower()}{suffix}"
        return self.cert_dir / "client" / f"col_{self.name}{suffix}"

    @property
    def crl_file(self) -> Path:
        """The CRL a running aggregator refuses clients by (`cofe certify revoke` copies the CA's here)."""
        return self.cert_dir / CRL_FILE

    @property
    def logs_dir(self) -> Path:
        return self.workspace / LOGS_DIR

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    @property
    def exit_file(self) -> Path:
        """A collaborator's exit code, written by the shared worker that ran it (`cofe run --workers`):
        its launcher sees the worker's process, not the site's."""
        return self.logs_dir / "exit_code"

    @property
    def events_file(self) -> Path:
        """Round events the aggregator writes (OpenFL's aggregator writes them; a collaborator has none)."""
        return self.workspace / EVENTS_FILE

    @property
    def save_dir(self) -> Path:
        return self.workspace / SAVE_DIR

    @property
    def local_state_dir(self) -> Path:
        return self.workspace / LOCAL_STATE_DIR

    @property
    def data_dir(self) -> Path:
        """Where cofe puts data it prepared for a site (a CSV it split, an evaluation-only set)."""
        return self.workspace / DATA_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.workspace / TMP_DIR

    @property
    def home_dir(self) -> Path:
        return self.workspace / HOME_DIR

    def output_dirs(self) -> list[Path]:
        """What the participant writes while it runs (a container's bind mounts must exist beforehand)."""
        return [self.logs_dir, self.save_dir, self.local_state_dir, self.tmp_dir, self.home_dir]

    def restart_state(self) -> list[Path]:
        """What `--restart` clears: the aggregator's saved state; a collaborator keeps none between starts."""
        return [self.workspace / relative for relative in AGGREGATOR_STATE] if self.is_aggregator else []

    # -- how it starts

    def start_command(self, *, python: str | None = None, restart: bool = False, device: str | None = None) -> list[str]:
        """Its `cofe start`: run by `python -m cofe_cli` when `python` is given, else the arguments after
        an image's `cofe` entrypoint. --restart is the aggregator's, --device a collaborator's."""
        args = [python, "-m", "cofe_cli"] if python else []
        args += ["start", self.role] + ([] if self.is_aggregator else [self.name]) + ["--dir", str(self.root)]
        if self.is_aggregator:
            return args + (["--restart"] if restart else [])
        return args + (["--device", device] if device else [])

    def thread_budget(self, *, sharing: int = 1, cpus: int | None = None) -> int:
        """torch/OpenMP threads: the aggregator only averages tensors (one); a collaborator gets its share of
        `cpus` (this machine's by default) with `sharing` collaborators training on them at once. torch's
        default of one thread per core in every process oversubscribes a shared CPU and makes each round
        several times slower. Validation keeps the same share: on 2 cores, with the other site's process busy
        at the same count (benchmarks/validation_threads.py, 128x128x64 volumes, 32^3 patches), a training
        step took 0.46 s at 1 thread and 0.70 s at 2, batched validation 1.79 s and 2.43 s a volume."""
        if self.is_aggregator:
            return 1
        return max(1, (cpus or os.cpu_count() or 1) // max(1, sharing))

    def launch_env(self, threads: int) -> dict[str, str]:
        """What a launcher adds to the environment of the participant it starts: it writes the output to the
        log file itself, and sets the thread budget."""
        return {LOG_CAPTURED_ENV: "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
