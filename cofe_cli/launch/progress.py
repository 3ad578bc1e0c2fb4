"""What a running federation is doing, built from the aggregator's events; drawn with rich."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cofe_cli.federation import Manifest
from cofe_cli.metrics import BUDGET_EXHAUSTED_METRIC, EPSILON_METRIC, headline_metric
from cofe_cli.participant import is_aggregator

TASK_LABELS = {
    "aggregated_model_validation": "validating global model",
    "train": "training",
    "locally_tuned_model_validation": "validating local model",
}
SHORT_TASK = {"aggregated_model_validation": "global", "train": "train", "locally_tuned_model_validation": "local"}


@dataclass
class MetricRecord:
    round: int
    collaborator: str
    task: str
    metric: str
    value: float


@dataclass
class _Site:
    tasks: list[str] = field(default_factory=list)
    done: int = 0
    round: int | None = None
    returncode: int | None = None
    peak_rss: int = 0
    lost_in_round: int | None = None  # 0-based; the federation went on without it


class FederationProgress:
    def __init__(self, manifest: Manifest, started: float):
        self.manifest = manifest
        self.started = started
        self.round = 0
        self.rounds = manifest.rounds
        self.sites = {name: _Site() for name in manifest.participant_names()}
        # Keyed so that a resumed federation (whose event log holds the interrupted attempt too)
        # reports each round's metric once: the latest value wins.
        self._records: dict[tuple[int, str, str, str], MetricRecord] = {}
        self.round_started: dict[int, float] = {}
        self.round_ended: dict[int, float] = {}
        # round -> the collaborators whose results went into that round's model
        self.took_part: dict[int, list[str]] = {}
        self.aggregator_ready: float | None = None
        self.finished = False

    # -- state -------------------------------------------------------------------------------
    def add_history(self, events) -> None:
        """Events of earlier attempts (a resumed federation): their metrics and round times belong in
        the results; nothing else of them describes what is running now."""
        for event in events:
            kind = event.get("event")
            if kind == "metric":
                self._record(event)
            elif kind == "tasks":
                self.round_started.setdefault(event["round"], event["time"])
            elif kind == "round_end":
                self.round_ended[event["round"]] = event["time"]
                self._record_took_part(event)

    def _record_took_part(self, event: dict) -> None:
        if "collaborators" in event:  # absent in the event log of an older cofe
            self.took_part[event["round"]] = list(event["collaborators"])

    def _record(self, event: dict) -> None:
        record = MetricRecord(event["round"], event["collaborator"], event["task"], event["metric"], float(event["value"]))
        self._records[(record.round, record.collaborator, record.task, record.metric)] = record

    def apply(self, event: dict) -> str | None:
        kind, when = event.get("event"), event.get("time", time.time())
        if kind == "started":
            self.round, self.rounds = event["round"], event["rounds"]
            self.aggregator_ready = when
            for unfinished in [r for r in self.round_started if r >= self.round]:  # an interrupted attempt's
                del self.round_started[unfinished]
            if self.round >= self.rounds:  # restarted after its last round, before its models were written
                return f"aggregator restarted after all {self.rounds} rounds: telling the sites to quit, writing the models"
            return f"aggregator ready, round {self.round + 1} of {self.rounds}" + (" (resumed)" if event.get("resumed") else "")
        if kind == "tasks":
            site = self.sites.setdefault(event["collaborator"], _Site())
            site.tasks, site.done, site.round = list(event["tasks"]), 0, event["round"]
            self.round_started.setdefault(event["round"], when)
            return f"round {event['round'] + 1}: {event['collaborator']} got {', '.join(SHORT_TASK.get(t, t) for t in site.tasks)}"
        if kind == "task_done":
            site = self.sites.setdefault(event["collaborator"], _Site())
            site.done += 1
            return None
        if kind == "metric":
            self._record(event)
            return None
        if kind == "round_end":
            self.round_ended[event["round"]] = when
            self.round = event["round"] + 1
            self._record_took_part(event)
            missing = [name for name in self.manifest.collaborators if name not in self.took_part.get(event["round"], [])]
            without = f" (without {', '.join(missing)})" if "collaborators" in event and missing else ""
            return f"round {event['round'] + 1} of {self.rounds} done{without}: " + self._round_line(event["round"])
        if kind == "finished":
            self.round = self.rounds
            return "all rounds done"
        return None

    @property
    def records(self) -> list[MetricRecord]:
        return list(self._records.values())

    def site_lost(self, name: str) -> None:
        site = self.sites.setdefault(name, _Site())
        site.lost_in_round = self.round

    def update_states(self, states) -> None:
        for name, state in states.items():
            site = self.sites.setdefault(name, _Site())
            site.returncode, site.peak_rss = state.returncode, state.peak_rss

    def latest(self, collaborator: str, task: str) -> dict[str, float]:
        values = {}
        for r in self.records:
            if r.collaborator == collaborator and r.task == task:
                values[r.metric] = r.value
        return values

    def _round_line(self, round_number: int) -> str:
        parts = []
        for name in self.manifest.collaborators:
            metrics = {r.metric: r.value for r in self.records if r.round == round_number and r.collaborator == name
                       and r.task == "aggregated_model_validation"}
            key = headline_metric(metrics)
            if key:
                parts.append(f"{name} {key}={metrics[key]:.3f}")
        return ", ".join(parts) or "no metrics"

    def first_round_delay(self) -> float | None:
        this_run = [t for t in self.round_started.values() if t >= self.started]
        return min(this_run) - self.started if this_run else None

    # -- drawing -----------------------------------------------------------------------------
    def _status(self, name: str, site: _Site) -> str:
        if site.lost_in_round is not None:
            return f"[red]lost in round {site.lost_in_round + 1}[/] (exit {site.returncode})"
        if site.returncode == 0:
            return "[green]finished[/]"
        if site.returncode is not None:
            return f"[red]exited {site.returncode}[/]"
        if is_aggregator(name):
            return "serving" if self.aggregator_ready else "starting"
        if site.round is None:
            return "starting"
        if site.done < len(site.tasks):
            return TASK_LABELS.get(site.tasks[site.done], site.tasks[site.done])
        return "waiting for the others"

    def __rich__(self):
        elapsed = time.time() - self.started
        shown_round = min(self.round + 1, self.rounds)
        title = f"Round {shown_round} of {self.rounds}" if not self.finished else f"{self.rounds} rounds done"
        table = Table(title=f"{self.manifest.name}: {title}  ({elapsed:.0f} s)", title_justify="left", expand=False,
                      caption=f"validation: {self.manifest.validations}", caption_justify="left")
        local = self.manifest.local_validation
        columns = ("participant", "status", "global model", "train loss", *(("local model",) if local else ()), "peak memory")
        for column in columns:
            table.add_column(column, justify="right" if column not in ("participant", "status") else "left")
        for name, site in self.sites.items():
            global_metrics = self.latest(name, "aggregated_model_validation")
            local_metrics = (_fmt(self.latest(name, "locally_tuned_model_validation")),) if local else ()
            train = self.latest(name, "train")
            table.add_row(name, self._status(name, site), _fmt(global_metrics), train_cell(train),
                          *local_metrics, f"{site.peak_rss / 2**30:.2f} GiB" if site.peak_rss else "-")
        return Group(table, Text(""))


def train_cell(train: dict[str, float]) -> str:
    """A site's training in one cell: its loss, and with DP the epsilon spent so far (or that it stopped)."""
    if train.get(BUDGET_EXHAUSTED_METRIC):
        return f"not trained: epsilon {train[EPSILON_METRIC]:.3f}, --max-epsilon reached"
    cell = f"loss {train['loss']:.3f}" if "loss" in train else ""
    if EPSILON_METRIC in train:
        cell = f"{cell} epsilon {train[EPSILON_METRIC]:.3f}".strip()
    return cell or "-"


def _fmt(metrics: dict[str, float]) -> str:
    key = headline_metric(metrics)
    return f"{key.removeprefix('valid_').removeprefix('train_')} {metrics[key]:.3f}" if key else "-"
