"""An aggregator killed with SIGKILL at any moment of a round and started again resumes, and the
federation finishes with exactly its planned rounds: the collaborators wait for it meanwhile, the
models are whole, and results/ holds every round."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

from cofe_cli.events import read_events
from federation_helpers import SITES, cofe, cofe_background, collaborator_args, free_port, processes_using

ROUNDS = 3


def _events(fed: Path) -> list[dict]:
    return list(read_events(fed / "workspaces" / "aggregator" / "logs" / "events.jsonl"))


def _results_of_round(events: list[dict], round_number: int) -> int:
    return sum(1 for e in events if e["event"] == "task_done" and e["round"] == round_number)


def _kill_when(aggregator, fed: Path, reached, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not reached(_events(fed)):
        assert aggregator.poll() is None, f"the aggregator exited ({aggregator.returncode}) before {what}"
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.05)
    os.kill(aggregator.pid, signal.SIGKILL)
    assert aggregator.wait(timeout=30) == -signal.SIGKILL


def test_aggregator_killed_at_three_moments_resumes_and_finishes(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", ROUNDS,
         "--port", free_port(), check=True)
    cofe("certify", "--dir", fed, check=True)
    aggregator = cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / "aggregator0.out")
    collaborators = [cofe_background("start", "collaborator", name, "--dir", fed, log=tmp_path / f"{name}.out")
                     for name in SITES]
    tasks_per_round = 3 * len(SITES)
    moments = [
        ("round 1: tasks handed out, no result yet",
         lambda ev: any(e["event"] == "tasks" for e in ev)),
        ("round 2: some results in",
         lambda ev: _results_of_round(ev, 1) >= 2),
        # The aggregator then stores the result, aggregates, writes best and last model and commits
        # the round: seconds of work in which the kill lands (the last round: then it also exports).
        ("round 3: its last result in, the round being closed and its models written",
         lambda ev: _results_of_round(ev, 2) == tasks_per_round),
    ]
    for attempt, (what, reached) in enumerate(moments, start=1):
        _kill_when(aggregator, fed, reached, what)
        aggregator = cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / f"aggregator{attempt}.out")

    deadline = time.monotonic() + 900
    for proc in [aggregator, *collaborators]:
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.out")}
    assert aggregator.returncode == 0, logs
    assert [proc.returncode for proc in collaborators] == [0] * len(SITES), logs
    assert processes_using(fed) == []

    events = _events(fed)
    starts = [e for e in events if e["event"] == "started"]
    assert len(starts) == 4 and starts[0]["round"] == 0 and starts[-1]["resumed"], starts
    assert sorted({e["round"] for e in events if e["event"] == "round_end"}) == list(range(ROUNDS))
    assert [e["rounds"] for e in events if e["event"] == "finished"] == [ROUNDS]
    assert max(e.get("round", 0) for e in events if e["event"] == "tasks") == ROUNDS - 1  # no extra round
    # Rounds 2 and 3 began while the aggregator ran: a waiting site heard of them within a poll (OpenFL
    # made it wait up to 10 s).
    for round_number in (1, 2):
        began = next(e["time"] for e in events if e["event"] == "round_end" and e["round"] == round_number - 1)
        told = {e["collaborator"]: e["time"] for e in reversed(events) if e["event"] == "tasks" and e["round"] == round_number}
        assert set(told) == set(SITES) and max(told.values()) - began < 3, (round_number, began, told)

    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for round_number in range(ROUNDS):
        reported = {r["collaborator"] for r in rows if int(r["round"]) == round_number
                    and r["task"] == "aggregated_model_validation"}
        assert reported == {*SITES, "aggregator"}, (round_number, reported)

    from openfl.pipelines import NoCompressionPipeline
    from openfl.protocols import utils

    from cofe_cli.engine.participant import load_model

    save = fed / "workspaces" / "aggregator" / "save"
    saved_round = {name: utils.deconstruct_model_proto(utils.load_proto(str(save / name)), NoCompressionPipeline())[1]
                   for name in ("last.pbuf", "best.pbuf")}
    assert saved_round["last.pbuf"] == ROUNDS - 1 and saved_round["best.pbuf"] in range(ROUNDS), saved_round
    for model in ("best_model.pt", "final_model.pt"):
        load_model(fed / "workspaces" / "aggregator", fed / "results" / model)

    again = cofe("start", "aggregator", "--dir", fed)
    assert again.returncode == 2 and "already finished" in again.stderr, again.stderr
