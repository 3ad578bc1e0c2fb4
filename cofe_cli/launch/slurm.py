"""Every participant of a federation as a job of a Slurm cluster (`cofe run --slurm`, `cofe status`, `cofe stop`).

SlurmFederation implements the same Launcher protocol as ProcessFederation, so `supervise()` gives the
same live progress, failure handling, metrics and report. One job per participant, each running
`python -m cofe_cli start ...` with the submitting cofe's interpreter, its output appended to the
participant's workspace log. The federation directory must be on a filesystem every node shares.

The aggregator's address: the collaborators dial the address in the plan (the one the server
certificate names), so the aggregator's job must run where that address leads.
- The address is a node of the cluster (its NodeName or NodeHostname, or that name's FQDN): the
  aggregator's job is pinned there with --nodelist.
- The address is loopback (localhost): collaborators can reach it only on the aggregator's host, so
  when the cluster's nodes are on more than one host the collaborators are pinned to the aggregator's node.
- Anything else (a login host that forwards the port, a service name): used as is, with a warning.
The aggregator's job is submitted first; the collaborators are submitted once it is RUNNING on a known
node (they retry the connection until it listens): start() leaves that to a thread, which waits until
the supervisor's polling (states(), which only queries) has seen the aggregator running.

The sbatch scripts are kept in FED/slurm/<participant>.sbatch, the job ids in FED/slurm/jobs.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.locks import launched_env
from cofe_cli.launch.supervisor import ParticipantState, tail_lines

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"
QUERY_TIMEOUT = 15.0  # squeue/scontrol/sinfo hang while slurmctld is down
SUBMIT_TIMEOUT = 60.0
QUERY_INTERVAL = 1.0  # the controller is shared: no more than one squeue a second
CONTROLLER_PATIENCE = 120.0  # how long a running federation waits for a controller that stopped answering
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED"}
_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{1,2}){0,2}$|^\d+$|^UNLIMITED$|^INFINITE$", re.IGNORECASE)
_MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem_per_site: str | None = None
    cpus_per_site: int = 1
    gpus_per_site: int | None = None
    sbatch_args: tuple[str, ...] = ()

    def validate(self) -> "SlurmOptions":
        if self.time is not None and not _TIME.match(self.time):
            raise CofeError(f"--time {self.time!r} is not a Slurm time limit",
                            hint="use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS, e.g. --time 02:00:00")
        if self.mem_per_site is not None and not _MEMORY.match(self.mem_per_site):
            raise CofeError(f"--mem-per-site {self.mem_per_site!r} is not a memory size",
                            hint="a number with an optional unit K, M, G or T, e.g. --mem-per-site 4G")
        if self.cpus_per_site < 1:
            raise CofeError(f"--cpus-per-site must be at least 1, not {self.cpus_per_site}", hint="e.g. --cpus-per-site 2")
        if self.gpus_per_site is not None and self.gpus_per_site < 0:
            raise CofeError(f"--gpus-per-site must be 0 or more, not {self.gpus_per_site}", hint="e.g. --gpus-per-site 1")
        for name, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not re.match(r"^[A-Za-z0-9_.,-]+$", value):
                raise CofeError(f"{name} {value!r} is not a Slurm name", hint="letters, digits, '_', '-', '.' (a comma separates several)")
        for arg in self.sbatch_args:
            if not arg.startswith("-") or "\n" in arg:
                raise CofeError(f"--sbatch-arg {arg!r} is not an sbatch option",
                                hint="give one option per --sbatch-arg, with its value after '=', e.g. --sbatch-arg=--qos=high")
            if arg.split("=", 1)[0] in ("--output", "-o", "--error", "-e", "--job-name", "-J", "--chdir", "-D", "--parsable"):
                raise CofeError(f"--sbatch-arg {arg!r} would change what cofe relies on",
                                hint="cofe sets the job's name, output, error and working directory itself")
        return self


# --- the scripts ----------------------------------------------------------------------------------

def slurm_dir(layout: FederationLayout) -> Path:
    return layout.root / SLURM_DIR


def script_path(layout: FederationLayout, participant: str) -> Path:
    return slurm_dir(layout) / f"{participant}.sbatch"


def job_name(layout: FederationLayout, participant: str) -> str:
    from cofe_cli.launch.containers import federation_id

    return f"cofe-{federation_id(layout)}-{participant}"


def render_script(layout: FederationLayout, participant: str, options: SlurmOptions, *, python: str | None = None,
                  restart: bool = False, nodelist: str | None = None) -> str:
    """The batch script of one participant's job (kept in FED/slurm/ so a user can read or resubmit it)."""
    this = layout.participant(participant)
    # Each job trains alone on the CPUs it asks for: the aggregator one, collaborators what the user asked for.
    cpus = this.thread_budget(cpus=options.cpus_per_site)
    gpus = None if this.is_aggregator else options.gpus_per_site
    command = this.start_command(python=python or sys.executable, restart=restart, device="cuda" if gpus else None)
    return _batch_script(layout, participant, options, about=participant, output=this.log_file, chdir=this.workspace,
                         cpus=cpus, gpus=gpus, env=this.launch_env(cpus), command=command, nodelist=nodelist)


def render_worker_script(layout: FederationLayout, key: str, sites: tuple[str, ...], options: SlurmOptions, *,
                         python: str | None = None, nodelist: str | None = None) -> str:
    """The batch script of a shared worker's job (`--workers`): several collaborators in one job, which asks
    for what --cpus-per-site, --mem-per-site and --gpus-per-site say (one site trains at a time in it)."""
    from cofe_cli.launch.workers import worker_command, worker_log

    first = layout.participant(sites[0])
    cpus = first.thread_budget(cpus=options.cpus_per_site)
    gpus = options.gpus_per_site
    command = worker_command(layout, sites, python=python or sys.executable, device="cuda" if gpus else None)
    return _batch_script(layout, key, options, about=f"{key} ({', '.join(sites)})", output=worker_log(layout, key),
                         chdir=layout.root, cpus=cpus, gpus=gpus, env=first.launch_env(cpus), command=command,
                         nodelist=nodelist)


def _batch_script(layout: FederationLayout, job: str, options: SlurmOptions, *, about: str, output: Path, chdir: Path,
                  cpus: int, gpus: int | None, env: dict[str, str], command: list[str], nodelist: str | None) -> str:
    directives = [
        f"--job-name={job_name(layout, job)}",
        f"--output={output}",
        "--open-mode=append",
        f"--chdir={chdir}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={cpus}",
        "--no-requeue",
    ]
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.account:
        directives.append(f"--account={options.account}")
    if options.time:
        directives.append(f"--time={options.time}")
    if options.mem_per_site:
        directives.append(f"--mem={options.mem_per_site}")
    if gpus:
        directives.append(f"--gpus={gpus}")
    if nodelist:
        directives.append(f"--nodelist={nodelist}")
    directives += list(options.sbatch_args)
    lines = ["#!/bin/bash",
             f"# {about} of the federation in {layout.root}, written by `cofe run --slurm`.",
             *[f"#SBATCH {d}" for d in directives],
             "",
             # `cofe run` holds the federation's locks on the login node for as long as the jobs run.
             *[f"export {key}={value}" for key, value in {**launched_env(), **env}.items()],
             f"echo \"[slurm] job $SLURM_JOB_ID of {about} on $(hostname) (node $SLURMD_NODENAME)\"",
             "exec " + shlex.join(command),
             ""]
    return "\n".join(lines)


# --- talking to Slurm -----------------------------------------------------------------------------

def _slurm(args: list[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    timeout = timeout or QUERY_TIMEOUT
    if shutil.which(args[0]) is None:
        raise CofeError(f"no Slurm here: `{args[0]}` is not on PATH",
                        hint="run cofe on a Slurm login node (or load Slurm's module), or run without --slurm")
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CofeError(f"Slurm's controller did not answer `{args[0]}` within {timeout:.0f} s",
                        hint="is slurmctld running? (`scontrol ping`; SLURM_CONF names the cluster's configuration)") from None


def _slurm_message(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout).strip()
    lines = [re.sub(r"^s\w+: error: ", "", line) for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or f"exit code {result.returncode}"


def check_cluster(options: SlurmOptions) -> list[str]:
    """Slurm is there and answers, and the partition exists. Returns the partitions."""
    for tool in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
        if shutil.which(tool) is None:
            raise CofeError(f"no Slurm here: `{tool}` is not on PATH",
                            hint="run cofe on a Slurm login node (or load Slurm's module), or run without --slurm")
    result = _slurm(["sinfo", "-h", "-o", "%P"])
    if result.returncode != 0:
        raise CofeError(f"Slurm does not answer: {_slurm_message(result)}",
                        hint="is slurmctld running? (`scontrol ping`; SLURM_CONF names the cluster's configuration)")
    partitions = [p.strip().rstrip("*") for p in result.stdout.split() if p.strip()]
    if options.partition:
        missing = [p for p in options.partition.split(",") if p not in partitions]
        if missing:
            raise CofeError(f"Slurm has no partition {missing[0]!r} (it has: {', '.join(partitions) or 'none'})",
                            hint="pick one of those with --partition, or leave it out for the cluster's default")
    return partitions


def submit(script: Path, *, test_only: bool = False) -> str:
    args = ["sbatch", "--parsable"] + (["--test-only"] if test_only else []) + [str(script)]
    result = _slurm(args, timeout=SUBMIT_TIMEOUT)
    if result.returncode != 0:
        raise CofeError(f"Slurm refused the job of {script.stem}: {_slurm_message(result)}",
                        hint="ask for what the cluster's nodes have (--mem-per-site, --cpus-per-site, --gpus-per-site, "
                             "--time, --partition; `sinfo -N -l` lists them)")
    if test_only:
        return ""
    job = result.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise CofeError(f"sbatch answered {result.stdout.strip()!r} instead of a job id", hint="check the cluster with `squeue`")
    return job


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _slurm(["scancel", *job_ids])


@dataclass
class JobInfo:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, ... or UNKNOWN when Slurm no longer knows the job
    node: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int = 0
    start: str = ""  # when it started running (Slurm's local time, 2026-01-31T12:00:00), "" while pending

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def query_jobs(job_ids: list[str]) -> dict[str, JobInfo]:
    """States and nodes from one squeue; exit codes from `scontrol show job` for the jobs that ended."""
    if not job_ids:
        return {}
    result = _slurm(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%N|%r|%S"])
    found: dict[str, JobInfo] = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0] in job_ids:
            found[parts[0]] = JobInfo(parts[0], parts[1], parts[2], parts[3], start=_start_time(parts[4:]))
    for job in job_ids:
        info = found.get(job)
        if info is None or not info.active:
            found[job] = show_job(job) or info or JobInfo(job, "UNKNOWN")
    return found


def show_job(job_id: str) -> JobInfo | None:
    result = _slurm(["scontrol", "-o", "show", "job", job_id])
    if result.returncode != 0:
        return None
    fields = dict(re.findall(r"(\w+)=(\S*)", result.stdout))
    code, _, sig = fields.get("ExitCode", "0:0").partition(":")
    state = fields.get("JobState", "UNKNOWN")
    node = fields.get("NodeList", "")
    return JobInfo(job_id, state, "" if node == "(null)" else node, fields.get("Reason", ""),
                   exit_code=int(code) if code.isdigit() else None, signal=int(sig) if sig.isdigit() else 0,
                   start=_start_time([fields.get("StartTime", "")]))


def _start_time(values: list[str]) -> str:
    # Slurm writes N/A, Unknown or None, or a pending job's expected start, until the job runs.
    value = values[0] if values else ""
    return value if re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$", value) else ""


def returncode_of(info: JobInfo) -> int | None:
    """None while the job is queued or running; its command's exit code after (never 0 unless COMPLETED)."""
    if info.active:
        return None
    if info.state == "COMPLETED":
        return info.exit_code or 0
    if info.exit_code:
        return info.exit_code
    return -(info.signal or 15) if info.state == "CANCELLED" else 1


def node_hosts() -> dict[str, str]:
    """NodeName -> NodeHostname of every node of the cluster."""
    result = _slurm(["scontrol", "-o", "show", "node"])
    hosts = {}
    for line in result.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" in fields:
            hosts[fields["NodeName"]] = fields.get("NodeHostName") or fields.get("NodeHostname") or fields["NodeName"]
    return hosts


def placement(address: str, hosts: dict[str, str]) -> tuple[str | None, str]:
    """Where the aggregator must run for `address` to reach it: (a node to pin it to, or None; how)."""
    from cofe_cli.launch.containers import is_loopback

    if is_loopback(address):
        return None, "loopback"
    short = address.lower().split(".")[0]
    for node, host in hosts.items():
        if address.lower() in (node.lower(), host.lower()) or short in (node.lower(), host.lower().split(".")[0]):
            return node, "node"
    return None, "other"


# --- jobs.json ------------------------------------------------------------------------------------

def read_jobs(layout: FederationLayout) -> dict:
    path = slurm_dir(layout) / JOBS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, OSError) as exc:
        raise CofeError(f"{path} is damaged ({exc})", hint="check `squeue` for the federation's jobs; delete the file afterwards")


def write_jobs(layout: FederationLayout, jobs: dict[str, str]) -> None:
    path = slurm_dir(layout) / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{JOBS_FILE}.partial")
    partial.write_text(json.dumps({"federation": str(layout.root), "submitted": time.time(),
                                   "jobs": {name: {"job_id": job, "script": str(script_path(layout, name))}
                                            for name, job in jobs.items()}}, indent=2) + "\n")
    os.replace(partial, path)


def recorded_job_ids(layout: FederationLayout) -> dict[str, str]:
    return {name: entry["job_id"] for name, entry in (read_jobs(layout).get("jobs") or {}).items()}


def stop_jobs(job_ids: list[str], *, wait: float = 60.0) -> dict[str, JobInfo]:
    """scancel every job, then wait until none of them is queued or running any more."""
    try:
        infos = query_jobs(job_ids)
        active = [job for job, info in infos.items() if info.active]
    except CofeError:  # cancel them all anyway
        infos, active = {}, list(job_ids)
    cancel(active)
    deadline = time.monotonic() + wait
    while active and time.monotonic() < deadline:
        time.sleep(0.5)
        infos = query_jobs(job_ids)
        active = [job for job, info in infos.items() if info.active]
        if active:
            cancel(active)  # a job that was pending a moment ago may have started since
    return infos


# --- the launcher ---------------------------------------------------------------------------------

@dataclass
class _Job:
    name: str
    job_id: str | None = None
    info: JobInfo | None = None


@dataclass
class SlurmFederation:
    """One Slurm job per participant: the aggregator first, the collaborators once it runs."""

    layout: FederationLayout
    manifest: Manifest
    options: SlurmOptions = field(default_factory=SlurmOptions)
    restart: bool = False
    python: str = field(default_factory=lambda: sys.executable)
    notes: list[str] = field(default_factory=list)  # what cofe decided, for the console
    say: object = None  # a callable printing one line (the console's print), or None
    workers: int | None = None  # --workers: the collaborators in this many jobs, several sites in each

    def __post_init__(self):
        from cofe_cli.launch.workers import assign_sites

        self._jobs = {AGGREGATOR: _Job(AGGREGATOR)}
        self._worker_sites: dict[str, tuple[str, ...]] = {}  # a shared worker's job -> its sites
        self._worker_of: dict[str, str] = {}  # a site -> its shared worker's job
        if self.workers:
            for index, sites in enumerate(assign_sites(list(self.manifest.collaborators), self.workers), 1):
                self._add_worker(f"worker-{index}", sites)
        else:
            self._jobs.update((name, _Job(name)) for name in self.manifest.collaborators)
        self._last_query = 0.0
        self._unanswered_since: float | None = None
        self._stopping = threading.Event()
        self._submitter: threading.Thread | None = None
        self._submit_error: BaseException | None = None

    def participants(self) -> list[str]:
        return list(self.manifest.participant_names())

    def _add_worker(self, key: str, sites: tuple[str, ...]) -> None:
        self._jobs[key] = _Job(key)
        self._worker_sites[key] = sites
        self._worker_of.update(dict.fromkeys(sites, key))

    def _collaborator_jobs(self) -> list[str]:
        """Each collaborator's job, or each shared worker's (--workers)."""
        return [name for name in self._jobs if name != AGGREGATOR]

    def check(self) -> None:
        """Before anything is submitted: Slurm answers, the partition exists, the cluster can run each job,
        and no job of this federation is still queued or running."""
        check_cluster(self.options)
        running = {n: i for n, i in query_jobs(list(recorded_job_ids(self.layout).values())).items() if i.active}
        if running:
            raise CofeError(f"this federation already has jobs queued or running on Slurm ({', '.join(sorted(running))})",
                            hint=f"`cofe status --dir {self.layout.root}` shows them, `cofe stop --dir {self.layout.root}` cancels them")
        self._hosts = node_hosts()
        self._pin, how = placement(self.manifest.aggregator_address, self._hosts)
        address = self.manifest.aggregator_address
        if how == "node":
            self.notes.append(f"the aggregator's job is pinned to node {self._pin}, which the certificate's address {address} names")
        elif how == "loopback":
            if len(set(self._hosts.values())) > 1:
                self.notes.append(f"the aggregator's address is {address}: the collaborators will run on the aggregator's node")
        else:
            self.notes.append(f"[yellow]warning:[/] {address} (the certificate's address) is not a node of this cluster: "
                              "collaborators dial it, so it must lead to the aggregator's node")
        # The aggregator where its address leads; every collaborator asks for the same as the first.
        for name, nodelist in ((AGGREGATOR, self._pin), *((name, None) for name in self._collaborator_jobs()[:1])):
            submit(self._write_script(name, nodelist=nodelist), test_only=True)

    def _write_script(self, name: str, nodelist: str | None = None) -> Path:
        path = script_path(self.layout, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        sites = self._worker_sites.get(name)
        if sites:
            from cofe_cli.launch.workers import worker_log

            worker_log(self.layout, name).parent.mkdir(exist_ok=True)
            for site in sites:
                self.layout.participant(site).logs_dir.mkdir(parents=True, exist_ok=True)
                self.layout.participant(site).exit_file.unlink(missing_ok=True)  # an earlier run's
            path.write_text(render_worker_script(self.layout, name, sites, self.options, python=self.python,
                                                 nodelist=nodelist))
            return path
        path.write_text(render_script(self.layout, name, self.options, python=self.python, restart=self.restart,
                                      nodelist=nodelist))
        self.layout.participant(name).logs_dir.mkdir(parents=True, exist_ok=True)
        return path

    def start(self) -> None:
        if not hasattr(self, "_hosts"):
            self.check()
        self._submit(AGGREGATOR, nodelist=self._pin)
        # The collaborators' jobs must wait for the aggregator's node (see the module's docstring), and the
        # supervisor must go on polling, showing progress and honouring --timeout and Ctrl-C meanwhile.
        self._submitter = threading.Thread(target=self._submit_collaborators_once_aggregator_runs, daemon=True,
                                           name="slurm-collaborators")
        self._submitter.start()

    def _submit_collaborators_once_aggregator_runs(self) -> None:
        try:
            while not self._stopping.wait(QUERY_INTERVAL / 4):
                aggregator = self._jobs[AGGREGATOR].info  # as states() last saw it
                if aggregator and not aggregator.active:
                    return  # it ended before it ran: the supervisor reports that
                if aggregator and aggregator.state == "RUNNING" and aggregator.node:
                    nodes = self._collaborator_nodes(aggregator)
                    for name in self._collaborator_jobs():
                        if self._stopping.is_set():
                            return
                        self._submit(name, nodelist=nodes)
                    return
        except BaseException as exc:  # a refused submission: states() raises it in the supervisor
            self._submit_error = exc

    def _collaborator_nodes(self, aggregator: JobInfo) -> str | None:
        """Where collaborators' jobs must run: the aggregator's node when only it reaches a loopback address."""
        if placement(self.manifest.aggregator_address, self._hosts)[1] == "loopback" and len(set(self._hosts.values())) > 1:
            return aggregator.node
        return None

    def _submit(self, name: str, nodelist: str | None = None) -> None:
        job = self._jobs[name]
        job.job_id = submit(self._write_script(name, nodelist=nodelist))
        write_jobs(self.layout, {n: j.job_id for n, j in self._jobs.items() if j.job_id})
        sites = self._worker_sites.get(name)
        self._say(f"{name}: Slurm job {job.job_id}" + (f" ({', '.join(sites)})" if sites else "")
                  + (f" (on {nodelist})" if nodelist else ""))

    def restart_participant(self, name: str) -> None:
        """A collaborator whose job ended goes back to unsubmitted: states() submits it again (as at the
        start, once the aggregator runs), to the same node rules. A site of a shared worker is submitted
        now in a worker job of its own: the other sites of the worker it left may still be running."""
        if name in self._worker_of:
            key = f"worker-{name}-{len(self._jobs)}"
            self._add_worker(key, (name,))
            aggregator = self._jobs[AGGREGATOR].info
            self._submit(key, nodelist=self._collaborator_nodes(aggregator) if aggregator and aggregator.node else None)
            return
        job = self._jobs[name]
        job.job_id, job.info = None, None

    def _say(self, line: str) -> None:
        if self.say:
            self.say(line)

    def _submitted(self) -> list[str]:
        return [j.job_id for j in self._jobs.values() if j.job_id]

    def states(self) -> dict[str, ParticipantState]:
        if self._submit_error is not None:
            raise self._submit_error
        now = time.monotonic()
        if now - self._last_query >= QUERY_INTERVAL:
            self._last_query = now
            try:
                infos = query_jobs(self._submitted())
                self._unanswered_since = None
            except CofeError:
                # A busy controller misses a poll now and then: keep the last known states for a while.
                self._unanswered_since = self._unanswered_since or now
                if now - self._unanswered_since > CONTROLLER_PATIENCE:
                    raise
                infos = {}
            for job in self._jobs.values():
                if job.job_id:
                    before, job.info = job.info, infos.get(job.job_id, job.info)
                    if job.info and (before is None or (before.state, before.reason) != (job.info.state, job.info.reason)):
                        if job.info.state == "RUNNING":
                            self._say(f"{job.name}: job {job.job_id} running on {job.info.node}")
                        elif job.info.state == "PENDING" and job.info.reason not in ("None", ""):
                            self._say(f"{job.name}: job {job.job_id} pending ({job.info.reason})")
        states = {}
        for name, job in self._jobs.items():
            code = returncode_of(job.info) if job.info else None  # None too while not yet submitted
            states[name] = ParticipantState(name=name, returncode=code, peak_rss=0)  # no accounting: unknown
        if self.workers:
            from cofe_cli.launch.workers import site_states

            return site_states(self.layout, self._worker_of, states)
        return states

    def log_tail(self, name: str, lines: int = 20, since: int = 0) -> list[str]:
        tail = tail_lines(self.log_path(name), lines, since)
        job = self._jobs[self._worker_of.get(name, name)]
        if job.info and not job.info.active and job.info.state != "COMPLETED":
            tail.append(f"[slurm] job {job.job_id} of {name}: {job.info.state}"
                        + (f" ({job.info.reason})" if job.info.reason and job.info.reason != "None" else "")
                        + (f", exit code {job.info.exit_code}" if job.info.exit_code else "")
                        + (f", signal {job.info.signal}" if job.info.signal else ""))
        return tail

    def log_path(self, name: str) -> Path:
        return self.layout.participant(name).log_file

    def stop(self, grace: float = 10.0) -> None:
        self._stopping.set()
        if self._submitter is not None:
            self._submitter.join()  # at most one sbatch away: then no job is submitted after the cancel
        jobs = self._submitted()
        if not jobs:
            return
        infos = stop_jobs(jobs, wait=max(60.0, grace))
        for job in self._jobs.values():
            if job.job_id in infos:
                job.info = infos[job.job_id]
