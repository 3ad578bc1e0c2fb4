"""The progress model and report built from the aggregator's event log (no OpenFL needed)."""

from __future__ import annotations

import csv
import json

from rich.console import Console

from cofe_cli.events import EventLog, EventTail
from cofe_cli.federation import FederationLayout, Manifest
from cofe_cli.launch.progress import FederationProgress
from cofe_cli.launch.report import summary_table, write_results
from cofe_cli.launch.supervisor import ParticipantState

MANIFEST = Manifest(name="t", collaborators=("site_a", "site_b"), rounds=2, aggregator_address="localhost",
                    aggregator_port=50051, algorithm="fedavg", plan_sha384="0" * 96, versions={})


def _round(log: EventLog, round_number: int, dice: float) -> None:
    for site in MANIFEST.collaborators:
        log.emit("tasks", collaborator=site, round=round_number,
                 tasks=["aggregated_model_validation", "train", "locally_tuned_model_validation"])
        for task in ("aggregated_model_validation", "train", "locally_tuned_model_validation"):
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


def test_error_excerpt_keeps_the_traceback_in_view():
    from cofe_cli.launch.supervisor import error_excerpt

    log = ["starting"] * 50 + ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad volume"] \
        + ["UserWarning: noise"] * 40
    excerpt = error_excerpt(log)
    assert excerpt[0].startswith("Traceback") and "ValueError: bad volume" in excerpt and len(excerpt) <= 25
    assert error_excerpt(["a", "b"]) == ["a", "b"]
