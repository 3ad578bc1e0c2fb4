"""OpenFL's aggregator, reporting what happens to the event log that every launcher reads, and safe
to kill: its models are written whole or not at all, and a restarted one picks up from its database
what the event log had not heard of yet (see ObservedAggregator.__init__)."""

from __future__ import annotations

import logging
import math
import os
import queue
from pathlib import Path
import time

from openfl.callbacks import Callback
from openfl.component import Aggregator
from openfl.protocols import utils

from cofe_cli.engine.site_watch import SitesLost, SiteWatch
from cofe_cli.engine.tensor_index import IndexedTensorDB
from cofe_cli.events import EventLog, read_events
from cofe_cli.fsutil import staged_file
from cofe_cli.metrics import headline_metric, higher_is_better
from cofe_cli.participant import EVENTS_FILE

logger = logging.getLogger("cofe")
GLOBAL_VALIDATION_TASK = "aggregated_model_validation"
# OpenFL tells a collaborator with nothing to do to ask again in 10 s: a site that finished its tasks
# heard of the next round up to 10 s after it began (the demo lost that in every round). One poll a
# second per waiting site costs the aggregator little; with more than POLLS_PER_SECOND sites the
# interval grows, so that it never answers more polls a second than that, however many sites wait.
# (The answer holds whole seconds.)
POLLS_PER_SECOND = 10
# Only for benchmarks/round_latency.py, to measure rounds as OpenFL ran them: "1" keeps OpenFL's 10 s
# polls and its pandas TensorDB.
OPENFL_ROUNDS_ENV = "COFE_BENCH_OPENFL_ROUNDS"


def poll_interval(collaborators: int) -> int:
    return max(1, math.ceil(collaborators / POLLS_PER_SECOND))


class _RoundEvents(Callback):
    def __init__(self, events: EventLog, took_part=lambda: []):
        super().__init__()
        self.events = events
        self.took_part = took_part

    def on_round_end(self, round_num, logs=None):
        self.events.emit("round_end", round=round_num, metrics=dict(logs or {}), collaborators=self.took_part())


class _WhenRoundBegins(Callback):
    def __init__(self, round_number: int, action):
        super().__init__()
        self.round_number, self.action = round_number, action

    def on_round_begin(self, round_num, logs=None):
        if round_num >= self.round_number:
            self.action()


class ObservedAggregator(Aggregator):
    def __init__(self, *, event_log: str = EVENTS_FILE, callbacks=None, **kwargs):
        self.events = EventLog(event_log)
        self._announced: set[tuple[str, int]] = set()
        # The sites whose results went into the round's model (OpenFL drops a straggler's late ones).
        took_part = lambda: sorted(self.collaborators_done)  # noqa: E731
        callbacks = list(callbacks or []) + [_RoundEvents(self.events, took_part)]
        # A restarted aggregator replays from its database (local_state/tensor.db) every result it had
        # stored; a round those results complete is closed once OpenFL's __init__ is done (below).
        super().__init__(callbacks=callbacks, **kwargs)
        policy = self.straggler_handling_policy
        self.site_watch = SiteWatch(sites=list(self.authorized_cols), started=time.monotonic(),
                                    needed=getattr(policy, "minimum_reporting", len(self.authorized_cols)),
                                    round_timeout=getattr(policy, "straggler_cutoff_time", None))
        self.sites_lost: SitesLost | None = None
        as_openfl = os.environ.get(OPENFL_ROUNDS_ENV) == "1"
        # Secure aggregation's set-up holds on to OpenFL's own TensorDB.
        if not (self._secure_aggregation_enabled or as_openfl):
            self.tensor_db = IndexedTensorDB.of(self.tensor_db)
            self.callbacks.set_tensor_db(self.tensor_db)
        if self._round_closed_in_replay:
            self._end_of_round_check()
        self._catch_up_after_restart()
        self._poll_interval = 10 if as_openfl else poll_interval(len(self.authorized_cols))
        self.events.emit("started", round=self.round_number, rounds=self.rounds_to_train,
                         resumed=self.round_number > 0, collaborators=list(self.authorized_cols))

    # OpenFL replays the stored results in its __init__, before it starts its callbacks' round clock:
    # replaying a round's last result closed that round there, and OpenFL's metric writer then failed
    # on its unstarted clock (TypeError), so an aggregator killed after a round's last result and
    # before that round was committed could never start again. The round is closed after __init__.
    _replaying = False
    _round_closed_in_replay = False

    def _recover(self):
        self._replaying = True
        try:
            return super()._recover()
        finally:
            self._replaying = False

    def _end_of_round_check(self):
        if self._replaying:
            self._round_closed_in_replay = True
            return
        super()._end_of_round_check()

    def _catch_up_after_restart(self) -> None:
        """What a kill -9 can leave behind, set right from the database, which commits a round at once:
        metrics replayed but not yet logged, rounds it committed whose end the log never heard of, a
        last model older than the committed round, and the sites already told to quit."""
        self._drain_metrics()
        history = list(read_events(self.events.path))
        logged_ends = {event["round"] for event in history if event.get("event") == "round_end"}
        for round_number in range(self.round_number):
            if round_number not in logged_ends:
                self.events.emit("round_end", round=round_number, metrics={}, recovered=True)
        if self.round_number > 0 and self.persistent_db is not None:
            # self.model is the committed round's model, which OpenFL commits before it writes last.pbuf.
            with staged_file(Path(self.last_state_path)) as partial:
                utils.dump_proto(self.model, str(partial))
        if self.is_finished():  # (an earlier federated evaluation's log must not count for this one)
            self.quit_job_sent_to = sorted({event["collaborator"] for event in history if event.get("event") == "quit"})
        self._models_exported = any(event.get("event") == "finished" for event in history)

    def is_finished(self) -> bool:
        return self.round_number >= self.rounds_to_train

    def models_exported(self) -> bool:
        """All rounds done and every model written: nothing is left for this aggregator to do."""
        return self.is_finished() and self._models_exported

    def announce_finished(self) -> None:
        self._models_exported = True
        self.events.emit("finished", rounds=self.rounds_to_train)

    def when_last_round_begins(self, action) -> None:
        """Call `action()` when the last round begins, or now if it (or the end) was reached already; it may
        be called again at later rounds' beginnings."""
        if self.round_number >= self.rounds_to_train - 1:
            action()
        else:
            self.callbacks.callbacks.append(_WhenRoundBegins(self.rounds_to_train - 1, action))

    def heard_from(self, collaborator_name: str) -> None:
        """Every RPC of a site (the server calls this): what tells a site that still polls from a lost one."""
        self.site_watch.heard_from(collaborator_name, time.monotonic())

    def all_quit_jobs_sent(self) -> bool:
        """OpenFL's server serves until this is true. Besides OpenFL's "every site was told to quit": after
        the last round, once the sites not told are not polling any more (a lost site never comes back to
        be told); before it, once the round lost the sites it needs (then sites_lost says which)."""
        if super().all_quit_jobs_sent():
            return True
        now = time.monotonic()
        if self.is_finished():
            pending = [name for name in self.authorized_cols if name not in self.quit_job_sent_to]
            gone = self.site_watch.quit_not_needed(pending, now)
            if len(gone) == len(pending):
                logger.warning("all rounds done; %s did not come back for the end of the federation", ", ".join(gone))
                return True
            return False
        with self.lock:
            self.sites_lost = self.site_watch.lost(self.round_number, list(self.collaborators_done), now)
        if self.sites_lost is not None:
            logger.error("stopping: %s", self.sites_lost.message())
            self.events.emit("sites_lost", round=self.sites_lost.round, missing=self.sites_lost.missing,
                             reported=self.sites_lost.reported)
            return True
        return False

    def get_tasks(self, collaborator_name):
        # A poll is contact, whichever server passed it on: OpenFL's own (`fx aggregator start` on a cofe plan)
        # never calls heard_from, and after the last round every site still waiting to be told to quit then
        # counted as silent since the aggregator started: 30 s into the federation it was given up, the
        # aggregator stopped, and that site retried forever (seen in benchmarks/round_time.py's fx flow).
        self.heard_from(collaborator_name)
        tasks, round_number, sleep_time, time_to_quit = super().get_tasks(collaborator_name)
        if tasks and (collaborator_name, round_number) not in self._announced:
            self._announced.add((collaborator_name, round_number))
            names = [getattr(task, "name", task) for task in tasks]
            self.events.emit("tasks", collaborator=collaborator_name, round=round_number, tasks=names)
        elif time_to_quit and collaborator_name not in self._told_to_quit():
            # Kept in the log so that an aggregator restarted after the last round waits only for the rest.
            self.events.emit("quit", collaborator=collaborator_name)
        elif not tasks and sleep_time:
            sleep_time = self._poll_interval
        return tasks, round_number, sleep_time, time_to_quit

    def _told_to_quit(self) -> list[str]:
        return self.quit_job_sent_to[:-1]  # OpenFL has just appended this one

    def send_local_task_results(self, collaborator_name, round_number, task_name, data_size, named_tensors):
        self.events.emit("task_done", collaborator=collaborator_name, round=round_number, task=task_name)
        super().send_local_task_results(collaborator_name, round_number, task_name, data_size, named_tensors)
        self._drain_metrics()

    # OpenFL keeps as "best" whatever beats one score on ANY validation metric, loss included: with
    # a loss near 1 and a Dice near 0 the best model was the round with the highest loss (measured on
    # the demo: best.pbuf held round 1 of 3, the worst Dice). The best model is chosen here instead,
    # on the headline metric of the global model's validation, in the direction that metric improves.
    # The score (larger is better) lives in OpenFL's best_model_score, which its database persists.
    def _compute_validation_related_task_metrics(self, task_name) -> dict:
        self._choosing_best, best_score = True, self.best_model_score
        try:
            metrics = super()._compute_validation_related_task_metrics(task_name)
        finally:
            self._choosing_best, self.best_model_score = False, best_score  # OpenFL's update of it undone
        if task_name == GLOBAL_VALIDATION_TASK and not self.assigner.is_task_group_evaluation():
            prefix = f"aggregator/{task_name}/"
            values = {key.removeprefix(prefix): value for key, value in metrics.items() if key.startswith(prefix)}
            name = headline_metric(values)
            if name is not None:
                score = values[name] if higher_is_better(name) else -values[name]
                if self.best_model_score is None or score > self.best_model_score:
                    self.best_model_score = score
                    self._save_model(self.round_number, self.best_state_path)
                    logger.info("round %d: best model so far (%s %.4f)", self.round_number, name, values[name])
        return metrics

    def _save_model(self, round_number, file_path):
        if file_path == self.best_state_path and getattr(self, "_choosing_best", False):
            return  # OpenFL's own choice of the best model, replaced above
        if file_path == self.last_state_path:
            # Saving the last model commits the round to the database: its metrics go to the log first,
            # else a kill right after the commit would lose them (the restarted aggregator is past them).
            self._drain_metrics()
        # Written beside and renamed over the model, never half-written. OpenFL tells the best from the
        # last model (which also commits the round) by the path it is given: it sees the temporary one.
        kind = {self.best_state_path: "best_state_path", self.last_state_path: "last_state_path"}.get(file_path)
        with staged_file(Path(file_path)) as partial:
            if kind:
                setattr(self, kind, str(partial))
            try:
                super()._save_model(round_number, str(partial))
            finally:
                if kind:
                    setattr(self, kind, file_path)

    def _drain_metrics(self) -> None:
        # OpenFL puts every reported metric (per collaborator and aggregated) on this queue and
        # nothing else consumes it in a task-runner federation.
        while True:
            try:
                item = self.metric_queue.get_nowait()
            except queue.Empty:
                return
            self.events.emit("metric", collaborator=item["metric_origin"], round=item["round"],
                             task=item["task_name"], metric=item["metric_name"], value=item["metric_value"])
