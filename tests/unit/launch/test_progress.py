"""The progress model and report built from the aggregator's event log (no OpenFL needed)."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from cofe_cli.errors import FederationFailed
from cofe_cli.events import EventLog, EventTail
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.launch import supervisor
from cofe_cli.launch.processes import ProcessFederation
from cofe_cli.launch.progress import FederationProgress
from cofe_cli.launch.report import summary_table, write_results
from cofe_cli.launch.supervisor import ParticipantState, supervise

MANIFEST = Manifest(name="t", collaborators=("site_a", "site_b"), rounds=2, aggregator_address="localhost",
                    aggregator_port=50051, algorithm="fedavg", plan_sha384="0" * 96, versions={})


def _round(log: EventLog, round_number: int, dice: float, manifest: Manifest = MANIFEST) -> None:
    for site in manifest.collaborators:
        log.emit("tasks", collaborator=site, round=round_number, tasks=list(manifest.tasks))
        for task in manifest.tasks:
            log.emit("task_done", collaborator=site, round=round_number, task=task)
            metric = "loss" if task == "train" else "valid_dice"
            log.emit("metric", collaborator=site, round=round_number, task=task, metric=metric, value=dice)
    log.emit("round_end", round=round_number, metrics={})


def test_event_tail_reads_only_complete_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.new_events() == []
    path.write_text(json.dumps({"event": "a"}) + "\n" + '{"event": "b"')
    assert [e["event"] for e in tail.new_events()] == ["a"]
    with path.open("a") as handle:
        handle.write("}\n")
    assert [e["event"] for e in tail.new_events()] == ["b"]
    assert tail.new_events() == []


def test_a_line_cut_short_by_a_killed_aggregator_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("started", round=0, rounds=2, resumed=False)
    with path.open("a") as handle:
        handle.write('{"event": "metric", "collaborator": "site_a", "rou')  # kill -9 mid-write
    EventLog(path).emit("started", round=0, rounds=2, resumed=True)  # the restarted aggregator
    assert [(e["event"], e["resumed"]) for e in EventTail(path).new_events()] == [("started", False), ("started", True)]


def test_an_aggregator_restarted_after_the_last_round_is_not_shown_in_a_round_past_the_last():
    progress = FederationProgress(MANIFEST, started=0)
    line = progress.apply({"event": "started", "round": 2, "rounds": 2, "resumed": True, "time": 1.0})
    assert line == "aggregator restarted after all 2 rounds: telling the sites to quit, writing the models"


def test_results_are_rebuilt_from_the_whole_event_log_of_a_resumed_federation(tmp_path):
    from cofe_cli.launch.report import write_results_from_log

    layout = FederationLayout(tmp_path / "fed")
    log = EventLog(layout.workspace("aggregator") / "logs" / "events.jsonl")
    log.emit("started", round=0, rounds=2, resumed=False)
    _round(log, 0, 0.1)
    log.emit("started", round=1, rounds=2, resumed=True)  # after a kill
    _round(log, 1, 0.4)
    log.emit("finished", rounds=2)
    with (write_results_from_log(layout, MANIFEST) / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["round"], r["collaborator"]) for r in rows} == {(str(r), s) for r in (0, 1) for s in MANIFEST.collaborators}


def test_a_resumed_federation_reports_each_metric_once(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("started", round=0, rounds=2, resumed=False, collaborators=list(MANIFEST.collaborators))
    _round(log, 0, 0.1)
    log.emit("tasks", collaborator="site_a", round=1, tasks=["aggregated_model_validation"])  # interrupted here
    log.emit("started", round=1, rounds=2, resumed=True, collaborators=list(MANIFEST.collaborators))
    _round(log, 1, 0.4)
    log.emit("finished", rounds=2)

    progress = FederationProgress(MANIFEST, started=0)
    lines = [progress.apply(e) for e in EventTail(tmp_path / "events.jsonl").new_events()]
    assert "round 2 of 2 done: site_a valid_dice=0.400, site_b valid_dice=0.400" in lines
    keys = [(r.round, r.collaborator, r.task, r.metric) for r in progress.records]
    assert len(keys) == len(set(keys)) == 2 * 2 * 3
    progress.update_states({"site_a": ParticipantState("site_a", 0, 2 * 2**30)})

    layout = FederationLayout(tmp_path / "fed")
    results = write_results(layout, progress)
    with (results / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["round"], r["collaborator"]) for r in rows} == {(str(r), s) for r in (0, 1) for s in MANIFEST.collaborators}
    assert (results / "metrics.png").stat().st_size > 0
    summary = json.loads((results / "summary.json").read_text())
    assert summary["peak_rss_bytes"]["site_a"] == 2 * 2**30

    console = Console(record=True, width=120)
    console.print(summary_table(progress))
    console.print(progress)
    text = console.export_text()
    assert "dice 0.400" in text and "Federation summary" in text and "2.00 GiB" in text


@pytest.mark.parametrize(("local_validation", "said"), [(True, "validation: aggregated + locally tuned"),
                                                        (False, "validation: aggregated model only")])
def test_the_progress_view_and_the_summary_say_which_validations_ran(tmp_path, local_validation: bool, said: str):
    manifest = dataclasses.replace(MANIFEST, local_validation=local_validation)
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("started", round=0, rounds=1, resumed=False)
    _round(log, 0, 0.25, manifest)
    log.emit("finished", rounds=1)
    progress = FederationProgress(manifest, started=0)
    for event in EventTail(tmp_path / "events.jsonl").new_events():
        progress.apply(event)

    console = Console(record=True, width=200)
    console.print(progress)
    view = console.export_text()
    console.print(summary_table(progress))
    summary = console.export_text()
    assert said in view and said in summary
    header = next(line for line in summary.splitlines() if "participant" in line)
    assert ("local" in header) is local_validation
    assert ("local model" in view) is local_validation
    results = write_results(FederationLayout(tmp_path / "fed"), progress)
    assert json.loads((results / "summary.json").read_text())["validation"] == said.removeprefix("validation: ")
    with (results / "metrics.csv").open() as handle:
        tasks = {row["task"] for row in csv.DictReader(handle)}
    assert ("locally_tuned_model_validation" in tasks) is local_validation


def test_error_excerpt_keeps_the_traceback_in_view():
    from cofe_cli.launch.supervisor import error_excerpt

    log = ["starting"] * 50 + ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad volume"] \
        + ["UserWarning: noise"] * 40
    excerpt = error_excerpt(log)
    assert excerpt[0].startswith("Traceback") and "ValueError: bad volume" in excerpt and len(excerpt) <= 25
    assert error_excerpt(["a", "b"]) == ["a", "b"]


# ---------------------------------------------------------------- the supervisor, with stand-in participants


class StandIns(ProcessFederation):
    """The process launcher itself, starting a small Python program in place of each `cofe start`."""

    def __init__(self, layout: FederationLayout, programs: dict[str, str]):
        super().__init__(layout, MANIFEST)
        self.programs = programs

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-c", self.programs[name]]


def _emit(events_file: Path, *events: dict) -> str:
    """A program that appends `events` to the aggregator's event log, as the aggregator would."""
    lines = "".join(json.dumps({"time": 1.0, **e}) + "\n" for e in events)
    return f"open({str(events_file)!r}, 'a').write({lines!r})"


def _metrics_round(round_number: int, dice: float) -> list[dict]:
    return [*({"event": "metric", "collaborator": site, "round": round_number, "task": "aggregated_model_validation",
               "metric": "valid_dice", "value": dice} for site in MANIFEST.collaborators),
            {"event": "round_end", "round": round_number, "metrics": {}}]


def test_a_resumed_run_shows_only_its_own_events_and_reports_every_round(tmp_path):
    layout = FederationLayout(tmp_path / "fed")
    events_file = layout.workspace("aggregator") / "logs" / "events.jsonl"
    events_file.parent.mkdir(parents=True)
    earlier = [{"event": "started", "round": 0, "rounds": 2, "resumed": False}, *_metrics_round(0, 0.1)]
    events_file.write_text("".join(json.dumps({"time": 1.0, **e}) + "\n" for e in earlier))  # an interrupted run
    now = [{"event": "started", "round": 1, "rounds": 2, "resumed": True}, *_metrics_round(1, 0.4),
           {"event": "finished", "rounds": 2}]
    launcher = StandIns(layout, {"aggregator": _emit(events_file, *now), "site_a": "pass", "site_b": "pass"})
    console = Console(record=True, width=200)

    progress = supervise(launcher, layout, MANIFEST, console=console, poll_interval=0.05)

    shown = console.export_text()
    assert "round 2 of 2 done: site_a valid_dice=0.400" in shown and "(resumed)" in shown
    assert "round 1 of 2 done" not in shown, "the earlier run's events are not news"
    rows = list(csv.DictReader((write_results(layout, progress) / "metrics.csv").open()))
    assert sorted({r["round"] for r in rows}) == ["0", "1"]


def test_a_failure_shows_only_what_this_run_logged(tmp_path):
    layout = FederationLayout(tmp_path / "fed")
    log = layout.workspace("site_a") / "logs" / "site_a.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\nValueError: an earlier run's failure\n")
    crash = "import sys; print('cannot read volume 3 of this run'); sys.exit(3)"
    launcher = StandIns(layout, {"aggregator": "import time; time.sleep(60)", "site_a": crash, "site_b": "pass"})

    with pytest.raises(FederationFailed) as failed:
        supervise(launcher, layout, MANIFEST, console=Console(record=True), poll_interval=0.05)

    assert failed.value.message == "site_a exited with code 3"
    assert failed.value.log_tail == ["cannot read volume 3 of this run"]


def test_collaborators_left_running_after_the_aggregator_finished_are_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "COLLABORATOR_GRACE_SECONDS", 1.0)
    layout = FederationLayout(tmp_path / "fed")
    events_file = layout.workspace("aggregator") / "logs" / "events.jsonl"
    events_file.parent.mkdir(parents=True)
    stuck = "import time; time.sleep(600)"  # waits for an aggregator that is gone
    launcher = StandIns(layout, {"aggregator": _emit(events_file, *_metrics_round(0, 0.2), *_metrics_round(1, 0.3),
                                                     {"event": "finished", "rounds": 2}),
                                 "site_a": "pass", "site_b": stuck})
    console = Console(record=True, width=200)
    started = time.monotonic()

    progress = supervise(launcher, layout, MANIFEST, console=console, poll_interval=0.05)

    assert time.monotonic() - started < 30
    assert progress.finished and progress.sites["site_b"].returncode not in (None, 0)
    assert "site_b still running 1 s after the aggregator finished all rounds: stopped" in console.export_text()
    assert launcher.states()["site_b"].returncode is not None
    rows = list(csv.DictReader((write_results(layout, progress) / "metrics.csv").open()))
    assert sorted({r["round"] for r in rows}) == ["0", "1"]


def test_each_sites_epsilon_is_reported_and_a_site_at_max_epsilon_is_named(tmp_path):
    """DP sites report `epsilon` (and whether --max-epsilon stopped them) as train metrics: they reach
    metrics.csv, summary.json, the summary table and the live table like every other metric."""
    log = EventLog(tmp_path / "events.jsonl")
    _round(log, 0, 0.4)
    for site, epsilon, stopped in (("site_a", 1.25, 0.0), ("site_b", 2.5, 1.0)):
        log.emit("metric", collaborator=site, round=0, task="train", metric="epsilon", value=epsilon)
        log.emit("metric", collaborator=site, round=0, task="train", metric="privacy_budget_exhausted", value=stopped)
    progress = FederationProgress(MANIFEST, started=0)
    for event in EventTail(tmp_path / "events.jsonl").new_events():
        progress.apply(event)

    results = write_results(FederationLayout(tmp_path / "fed"), progress)
    with (results / "metrics.csv").open() as handle:
        rows = {(r["collaborator"], r["metric"]): r["value"] for r in csv.DictReader(handle)}
    assert rows[("site_a", "epsilon")] == "1.25" and rows[("site_b", "epsilon")] == "2.5"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["epsilon"] == {"site_a": 1.25, "site_b": 2.5} and summary["stopped_at_max_epsilon"] == ["site_b"]
    console = Console(record=True, width=200)
    console.print(summary_table(progress))
    console.print(progress)
    text = console.export_text()
    assert "loss 0.400 epsilon 1.250" in text
    assert "not trained: epsilon 2.500, --max-epsilon reached" in text


def test_the_report_loads_its_plotting_while_the_aggregator_still_writes_the_models(tmp_path, monkeypatch):
    """matplotlib's import was half a second at the end of every `cofe run` (issue 12): it starts once the
    last round has ended, while the aggregator tells the sites to quit and writes the models."""
    layout = FederationLayout(tmp_path / "fed")
    events_file = layout.workspace("aggregator") / "logs" / "events.jsonl"
    events_file.parent.mkdir(parents=True)
    aggregator = "; ".join([_emit(events_file, *_metrics_round(0, 0.2), *_metrics_round(1, 0.3)),
                            "import time; time.sleep(1.5)",  # writing the models
                            _emit(events_file, {"event": "finished", "rounds": 2})])
    launcher = StandIns(layout, {"aggregator": aggregator, "site_a": "pass", "site_b": "pass"})
    aggregator_when_loading = []
    monkeypatch.setattr(supervisor, "load_plotting_ahead",
                        lambda: aggregator_when_loading.append(launcher.states()["aggregator"].returncode))

    progress = supervise(launcher, layout, MANIFEST, console=Console(record=True), poll_interval=0.05)

    assert progress.finished
    assert aggregator_when_loading == [None]  # once, while the aggregator still ran
