"""The aggregator's event log (JSON lines): how every launcher learns what a federation is doing.

Written by the aggregator process (engine/openfl_aggregator.py), read by `cofe run` and the
report; stdout of OpenFL is noisy and never parsed for state.

Events: started{round, rounds, resumed}, tasks{collaborator, round, tasks},
metric{collaborator, round, task, metric, value}, round_end{round, metrics[, recovered], collaborators (whose
results went into the round's model)}, quit{collaborator}, sites_lost{round, missing, reported} (the
aggregator stops), finished{rounds} (every round done and every model written).

An aggregator killed mid-write (kill -9) may leave a last line unfinished: the next one to write
ends it first, and readers skip it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator


class EventLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # gRPC serves collaborators from a thread pool
        with self.path.open("ab+") as handle:
            if handle.seek(0, os.SEEK_END):
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")  # a line cut short by a killed writer stays one (skipped) line

    def emit(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=float)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class EventTail:
    """Reads the events appended since the last call; tolerates a line still being written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0

    def new_events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete, _, _ = chunk.rpartition(b"\n")
        if not complete:
            return []
        self._offset += len(complete) + 1
        return [event for event in map(_parse, complete.decode("utf-8", errors="replace").splitlines()) if event]


def _parse(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None  # cut short by a killed aggregator
    return event if isinstance(event, dict) else None


def read_events(path: Path) -> Iterator[dict]:
    return iter(EventTail(path).new_events())
