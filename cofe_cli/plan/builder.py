"""Build the OpenFL plan for a GaNDLF federation: a pure function of the inputs (no torch).

The plan is self-contained (no `defaults:` references into the installed OpenFL), so the same
file means the same federation on every host and its hash identifies it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import yaml

from cofe_cli.errors import CofeError
from cofe_cli.metrics import BUDGET_EXHAUSTED_METRIC, EPSILON_METRIC
from cofe_cli.participant import CERT_DIR, EVENTS_FILE

ENGINE = "cofe_cli.engine"

# name -> (aggregation function template for the `train` task, FedProx mu or None)
ALGORITHMS: dict[str, tuple[str, float | None]] = {
    "fedavg": ("openfl.interface.aggregation_functions.WeightedAverage", None),
    "fedprox": ("openfl.interface.aggregation_functions.WeightedAverage", 0.01),
    "median": ("openfl.interface.aggregation_functions.Median", None),
    "geometric-median": ("openfl.interface.aggregation_functions.GeometricMedian", None),
}

# Above these a value is a typo (1000000000 rounds would run for centuries), not a plan.
MAX_ROUNDS = 10_000
MAX_EPOCHS_PER_ROUND = 1_000
# What torch trains on in a GaNDLF task runner: the CPU or an NVIDIA GPU (the first, or number N).
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]+)?)$")

TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")
LOCAL_VALIDATION_TASK = "locally_tuned_model_validation"

# `validation_batch` in the task runner's settings (engine/batched_validation.py): patches per forward
# pass, `auto` (sized from the memory available) or `gandlf` (GaNDLF's own validate_network, patch by
# patch with batch 1: slower, kept to compare against).
AUTO_BATCH = "auto"
GANDLF_VALIDATION = "gandlf"
_BATCH_HINT = "give a number of patches per forward pass (1 or more), auto (sized from the memory available) or gandlf"


def parse_validation_batch(value, *, source: str = "--validation-batch") -> int | str:
    """`auto`, `gandlf` or a positive integer, as the plan holds it; CofeError for anything else."""
    text = AUTO_BATCH if value is None else str(value).strip().lower()
    if text in (AUTO_BATCH, GANDLF_VALIDATION):
        return text
    if not text.isdigit() or int(text) < 1:
        raise CofeError(f"{source} {value!r} is not a batch size", hint=_BATCH_HINT)
    return int(text)


def parse_on_off(value: str, *, option: str) -> bool:
    text = str(value).strip().lower()
    if text not in ("on", "off"):
        raise CofeError(f"{option} must be on or off, not {value!r}", hint=f"e.g. {option} off")
    return text == "on"


def validation_options(validation_batch, local_validation: str) -> tuple[int | str, bool]:
    """`--validation-batch` and `--local-validation` as PlanOptions takes them. `cofe run` and `cofe demo`
    check them before they make --dir or generate data, `cofe init` with the other options."""
    return parse_validation_batch(validation_batch), parse_on_off(local_validation, option="--local-validation")


@dataclass(frozen=True)
class PlanOptions:
    rounds: int
    aggregator_address: str
    aggregator_port: int
    algorithm: str = "fedavg"
    proximal_mu: float | None = None
    device: str = "cpu"
    epochs_per_round: int = 1
    instance_norm_statistics: str = "input"  # see engine/openfl_task_runner.py
    validation_batch: int | str = AUTO_BATCH  # see parse_validation_batch
    # OpenFL's GaNDLF plan validates the global model and, after training, the local one; off drops the latter.
    local_validation: bool = True
    # Site loss (see site_loss_policy): a round may close with this many sites once the round timeout
    # passed; None for both is OpenFL's default, every round waits for every site.
    min_collaborators: int | None = None
    round_timeout_seconds: float | None = None
    # With differential privacy: a site whose spent epsilon would pass this stops training (engine/privacy.py).
    max_epsilon: float | None = None


# OpenFL's own policy: a round closes once every site reported, or, after straggler_cutoff_time seconds
# (counted from the round's first task handed out), once minimum_reporting sites did; late results are dropped.
CUTOFF_POLICY = "openfl.component.aggregator.straggler_handling.CutoffTimePolicy"
# A waiting site polls the aggregator every 10 s: a shorter deadline would drop sites that are alive.
MIN_ROUND_TIMEOUT_SECONDS = 10
# With --min-collaborators and no --round-timeout: long enough for a round of a real model.
DEFAULT_ROUND_TIMEOUT_SECONDS = 20 * 60
MAX_ROUND_TIMEOUT_SECONDS = 30 * 86400  # above this a value is a typo
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `20m`, `1h30m`; CofeError for anything else or a deadline under 10 s."""
    hint = (f"give a duration from {MIN_ROUND_TIMEOUT_SECONDS}s to {MAX_ROUND_TIMEOUT_SECONDS // 86400} days, "
            "e.g. --round-timeout 90s, 20m or 1h30m")
    match = _DURATION.match((text or "").strip().lower())
    if not match or not any(match.groups()):
        raise CofeError(f"--round-timeout {text!r} is not a duration", hint=hint)
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not MIN_ROUND_TIMEOUT_SECONDS <= total <= MAX_ROUND_TIMEOUT_SECONDS:
        raise CofeError(f"--round-timeout {text} ({total:g} s) is out of range", hint=hint)
    return total


def site_loss_policy(min_collaborators: int | None, round_timeout: str | None,
                     collaborators: int) -> tuple[int | None, float | None]:
    """(--min-collaborators, --round-timeout in seconds) as they go into the plan: both None when a
    round waits for every site (OpenFL's default); with fewer than all sites, a deadline is needed."""
    if min_collaborators is not None and not 1 <= min_collaborators <= collaborators:
        raise CofeError(f"--min-collaborators must be between 1 and the number of collaborators ({collaborators}), "
                        f"got {min_collaborators}", hint=f"e.g. --min-collaborators {max(1, collaborators - 1)}, or leave "
                                                         "it out to wait for every site")
    timeout = parse_duration(round_timeout) if round_timeout is not None else None
    if min_collaborators is None or min_collaborators == collaborators:
        return (collaborators, timeout) if timeout is not None else (None, None)
    return min_collaborators, timeout if timeout is not None else float(DEFAULT_ROUND_TIMEOUT_SECONDS)


def check_device(device: str) -> str:
    if not _DEVICE.match(device or ""):
        raise CofeError(f"--device {device!r} is not a device torch can train on",
                        hint="use cpu, cuda (the first GPU) or cuda:N (GPU number N)")
    return device


def check_rounds(rounds: int) -> None:
    if not 1 <= rounds <= MAX_ROUNDS:
        raise CofeError(f"--rounds must be between 1 and {MAX_ROUNDS}, got {rounds}", hint="e.g. --rounds 3")


def check_plan_options(options: PlanOptions) -> None:
    check_rounds(options.rounds)
    if not 1 <= options.aggregator_port <= 65535:
        raise CofeError(f"port {options.aggregator_port} is out of range", hint="use a TCP port between 1 and 65535, e.g. 50051")
    if options.algorithm not in ALGORITHMS:
        raise CofeError(f"unknown aggregation algorithm {options.algorithm!r}", hint=f"choose one of: {', '.join(ALGORITHMS)}")
    if options.proximal_mu is not None and options.algorithm != "fedprox":
        raise CofeError(f"--proximal-mu is FedProx's setting, but the algorithm is {options.algorithm}",
                        hint="add --algorithm fedprox, or drop --proximal-mu")
    if options.proximal_mu is not None and not (math.isfinite(options.proximal_mu) and options.proximal_mu >= 0):
        raise CofeError(f"--proximal-mu must be a number 0 or more, got {options.proximal_mu}", hint="e.g. --proximal-mu 0.01")
    if options.instance_norm_statistics not in ("input", "running"):
        raise CofeError(f"--validation-norm must be input or running, not {options.instance_norm_statistics!r}",
                        hint="input: each volume's own statistics (cofe's default); running: GaNDLF's running averages")
    if not 1 <= options.epochs_per_round <= MAX_EPOCHS_PER_ROUND:
        raise CofeError(f"--epochs-per-round must be between 1 and {MAX_EPOCHS_PER_ROUND}, got {options.epochs_per_round}",
                        hint="e.g. --epochs-per-round 1")
    check_device(options.device)
    if options.max_epsilon is not None and not (math.isfinite(options.max_epsilon) and options.max_epsilon > 0):
        raise CofeError(f"--max-epsilon must be a number more than 0, got {options.max_epsilon}", hint="e.g. --max-epsilon 8")
    parse_validation_batch(options.validation_batch)
    if (options.min_collaborators is None) != (options.round_timeout_seconds is None):
        raise CofeError("a site-loss policy needs both a minimum number of collaborators and a round timeout",
                        hint="give --round-timeout with --min-collaborators")
    if options.min_collaborators is not None and options.min_collaborators < 1:
        raise CofeError(f"--min-collaborators must be 1 or more, got {options.min_collaborators}", hint="e.g. --min-collaborators 2")
    if options.round_timeout_seconds is not None and not (
            MIN_ROUND_TIMEOUT_SECONDS <= options.round_timeout_seconds <= MAX_ROUND_TIMEOUT_SECONDS):
        raise CofeError(f"the round timeout must be between {MIN_ROUND_TIMEOUT_SECONDS} s and "
                        f"{MAX_ROUND_TIMEOUT_SECONDS} s, got {options.round_timeout_seconds:g}", hint="e.g. --round-timeout 20m")
    if not options.aggregator_address or any(c.isspace() for c in options.aggregator_address):
        raise CofeError(f"aggregator address {options.aggregator_address!r} is not a host name or IP",
                        hint="give the DNS name or IP collaborators dial, e.g. --aggregator-address fl.hospital.org")


def _metric_names(gandlf_config: dict) -> list[str]:
    metrics = gandlf_config.get("metrics") or []
    names = list(metrics) if isinstance(metrics, dict) else [m if isinstance(m, str) else next(iter(m)) for m in metrics]
    return [str(n) for n in names]


def build_plan(gandlf_config: dict, options: PlanOptions) -> dict:
    check_plan_options(options)
    aggregation, default_mu = ALGORITHMS[options.algorithm]
    mu = options.proximal_mu if options.proximal_mu is not None else default_mu
    metric_names = _metric_names(gandlf_config)
    patch_size = list(gandlf_config.get("patch_size") or [])  # a copy: a shared list becomes a YAML alias
    validation = [f"valid_{name}" for name in metric_names]
    train_metrics = ["loss"] + [f"train_{name}" for name in metric_names]
    # What a collaborator runs each round; Manifest.tasks says the same from the manifest.
    tasks = [task for task in TASKS if options.local_validation or task != LOCAL_VALIDATION_TASK]
    task_runner_settings = {"device": options.device, "instance_norm_statistics": options.instance_norm_statistics,
                            "gandlf_config": gandlf_config}
    validation_batch = parse_validation_batch(options.validation_batch)
    if validation_batch != AUTO_BATCH:  # auto is the task runner's default: the plan (and its hash) stays as it was
        task_runner_settings["validation_batch"] = validation_batch
    if mu:
        task_runner_settings["proximal_mu"] = float(mu)
    task_runner_settings.update(_privacy_settings(gandlf_config, options, bool(mu)))
    if task_runner_settings.get("privacy_planned_epochs"):
        train_metrics += [EPSILON_METRIC, BUDGET_EXHAUSTED_METRIC]
    return {
        "aggregator": {
            "template": f"{ENGINE}.openfl_aggregator.ObservedAggregator",
            "settings": {
                "rounds_to_train": options.rounds,
                "init_state_path": INIT_STATE_PATH,
                "best_state_path": "save/best.pbuf",
                "last_state_path": "save/last.pbuf",
                "db_store_rounds": 2,
                "persist_checkpoint": True,
                "persistent_db_path": "local_state/tensor.db",
                "write_logs": True,
                "event_log": EVENTS_FILE,
            },
        },
        "collaborator": {
            "template": "openfl.component.Collaborator",
            "settings": {"use_delta_updates": False, "opt_treatment": "RESET", "db_store_rounds": 1},
        },
        "data_loader": {
            "template": f"{ENGINE}.openfl_dataloader.GaNDLFDataLoader",
            "settings": {"feature_shape": patch_size},
        },
        "task_runner": {
            "template": f"{ENGINE}.openfl_task_runner.GaNDLFTaskRunner",
            "settings": task_runner_settings,
        },
        "network": {
            "template": "openfl.federation.Network",
            "settings": {
                "agg_addr": options.aggregator_address,
                "agg_port": options.aggregator_port,
                "hash_salt": "auto",
                "use_tls": True,
                "require_client_auth": True,
                "cert_folder": CERT_DIR,
                "client_reconnect_interval": 5,
                "enable_atomic_connections": False,
                "transport_protocol": "grpc",
            },
        },
        "assigner": {
            "template": "openfl.component.RandomGroupedAssigner",
            "settings": {"task_groups": [{"name": "learning", "percentage": 1.0, "tasks": tasks}]},
        },
        "tasks": {name: task for name, task in {
            "aggregated_model_validation": {
                "function": "validate",
                "kwargs": {"apply": "global", "metrics": ["valid_loss", *validation]},
            },
            "train": {
                "function": "train",
                "aggregation_type": {"template": aggregation},
                "kwargs": {"metrics": train_metrics, "epochs": options.epochs_per_round},
            },
            "locally_tuned_model_validation": {
                "function": "validate",
                "kwargs": {"apply": "local", "metrics": ["valid_loss", *validation]},
            },
        }.items() if name in tasks},
        "compression_pipeline": {"template": "openfl.pipelines.NoCompressionPipeline"},
        **_straggler_policy(options),
    }


def _privacy_settings(gandlf_config: dict, options: PlanOptions, fedprox: bool) -> dict:
    """The task runner's settings for differential privacy (the GaNDLF config's section, applied at
    every site by engine/privacy.py): the epochs `epsilon` is spread over, and --max-epsilon."""
    if not gandlf_config.get("differential_privacy"):
        if options.max_epsilon is not None:
            raise CofeError("--max-epsilon needs differential privacy, but the GaNDLF config has no differential_privacy section",
                            hint="add `differential_privacy:` to the GaNDLF config, or drop --max-epsilon")
        return {}
    if fedprox:
        # Opacus replaces each gradient by the clipped, noised sum of per-sample gradients: the
        # proximal term cofe adds to the gradient would be silently discarded.
        raise CofeError("FedProx cannot be combined with differential privacy in cofe (Opacus would drop its proximal term)",
                        hint="use --algorithm fedavg, median or geometric-median with differential_privacy")
    if options.instance_norm_statistics == "running":
        # Opacus's fix turns the instance norms' running statistics off (they would leak data without noise).
        raise CofeError("--validation-norm running cannot be combined with differential privacy: the DP-trained model "
                        "keeps no running instance-norm statistics", hint="leave out --validation-norm (input is the default)")
    settings = {"privacy_planned_epochs": options.rounds * options.epochs_per_round}
    if options.max_epsilon is not None:
        settings["max_epsilon"] = float(options.max_epsilon)
    return settings


def refuse_secure_aggregation(plan: dict) -> None:
    """OpenFL 1.9's secure aggregation is not a privacy feature cofe offers: its aggregator
    reconstructs every site's secrets during set-up (openfl/utilities/secagg), so it can unmask each
    site's update. A plan (hand-edited or not) that asks for it is refused."""
    settings = ((plan or {}).get("aggregator") or {}).get("settings") or {}
    if settings.get("secure_aggregation"):
        raise CofeError(SECURE_AGGREGATION_REFUSAL, hint="remove secure_aggregation from the plan; see README, Differential privacy")


SECURE_AGGREGATION_REFUSAL = ("secure aggregation is refused: OpenFL 1.9's aggregator reconstructs every site's "
                              "secrets during set-up, so it could unmask each site's update")


def _straggler_policy(options: PlanOptions) -> dict:
    if options.min_collaborators is None:
        return {}  # OpenFL's default, WaitForAllPolicy: the plan (and its hash) stays what it always was
    return {"straggler_handling_policy": {"template": CUTOFF_POLICY, "settings": {
        "straggler_cutoff_time": float(options.round_timeout_seconds), "minimum_reporting": options.min_collaborators}}}


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# Relative to the aggregator's workspace: the weights OpenFL's aggregator serves in round 0.
INIT_STATE_PATH = "save/init.pbuf"


def render_cols(collaborators: list[str]) -> str:
    return dump_yaml({"collaborators": list(collaborators)})


def render_data_config(entries: dict[str, str]) -> str:
    """OpenFL's data.yaml is really `name,path` lines."""
    lines = ["# collaborator_name,data_directory_path (set by cofe; site-local)"]
    lines += [f"{name},{path}" for name, path in entries.items()]
    return "\n".join(lines) + "\n"
