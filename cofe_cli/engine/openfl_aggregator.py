"""OpenFL's aggregator, reporting what happens to the event log that every launcher reads."""

from __future__ import annotations

import logging
import queue
import time

from openfl.callbacks import Callback
from openfl.component import Aggregator

from cofe_cli.engine.site_watch import SitesLost, SiteWatch
from cofe_cli.events import EventLog
from cofe_cli.metrics import headline_metric, higher_is_better

logger = logging.getLogger("cofe")
GLOBAL_VALIDATION_TASK = "aggregated_model_validation"


class _RoundEvents(Callback):
    def __init__(self, events: EventLog, rounds: int, took_part=lambda: []):
        super().__init__()
        self.events = events
        self.rounds = rounds
        self.took_part = took_part

    def on_round_end(self, round_num, logs=None):
        self.events.emit("round_end", round=round_num, metrics=dict(logs or {}), collaborators=self.took_part())

    def on_experiment_end(self, logs=None):
        self.events.emit("finished", rounds=self.rounds)


class ObservedAggregator(Aggregator):
    def __init__(self, *, event_log: str = "logs/events.jsonl", rounds_to_train: int = 1, callbacks=None, **kwargs):
        self.events = EventLog(event_log)
        self._announced: set[tuple[str, int]] = set()
        # The sites whose results went into the round's model (OpenFL drops a straggler's late ones).
        took_part = lambda: sorted(self.collaborators_done)  # noqa: E731
        callbacks = list(callbacks or []) + [_RoundEvents(self.events, rounds_to_train, took_part)]
        super().__init__(rounds_to_train=rounds_to_train, callbacks=callbacks, **kwargs)
        policy = self.straggler_handling_policy
        self.site_watch = SiteWatch(sites=list(self.authorized_cols), started=time.monotonic(),
                                    needed=getattr(policy, "minimum_reporting", len(self.authorized_cols)),
                                    round_timeout=getattr(policy, "straggler_cutoff_time", None))
        self.sites_lost: SitesLost | None = None
        self.events.emit("started", round=self.round_number, rounds=self.rounds_to_train,
                         resumed=self.round_number > 0, collaborators=list(self.authorized_cols))

    def is_finished(self) -> bool:
        return self.round_number >= self.rounds_to_train

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
        tasks, round_number, sleep_time, time_to_quit = super().get_tasks(collaborator_name)
        if tasks and (collaborator_name, round_number) not in self._announced:
            self._announced.add((collaborator_name, round_number))
            names = [getattr(task, "name", task) for task in tasks]
            self.events.emit("tasks", collaborator=collaborator_name, round=round_number, tasks=names)
        return tasks, round_number, sleep_time, time_to_quit

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
                    super()._save_model(self.round_number, self.best_state_path)
                    logger.info("round %d: best model so far (%s %.4f)", self.round_number, name, values[name])
        return metrics

    def _save_model(self, round_number, file_path):
        if file_path == self.best_state_path and getattr(self, "_choosing_best", False):
            return  # OpenFL's own choice of the best model, replaced above
        super()._save_model(round_number, file_path)

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
