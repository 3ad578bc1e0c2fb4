"""The results of a finished federation: metrics file, summary table, plot and models in FED/results/."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
import time
from pathlib import Path

from rich.table import Table

from cofe_cli.events import read_events
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.engine.gandlf_model import MODEL_DIR
from cofe_cli.fsutil import atomic_write_text, staged_dir, staged_file
from cofe_cli.launch.progress import SHORT_TASK, FederationProgress, train_cell
from cofe_cli.metrics import BUDGET_EXHAUSTED_METRIC, EPSILON_METRIC, headline_metric
from cofe_cli.participant import is_aggregator

METRICS_FILE = "metrics.csv"
# metrics.csv rows (task, metric) saying whether a collaborator's results went into a round's model (1) or
# not (0: lost, or a straggler past the round timeout); written for rounds whose event says so.
TOOK_PART = ("federation", "took_part")
MODELS = {"last.pbuf": "final_model.pbuf", "best.pbuf": "best_model.pbuf", "last.pt": "final_model.pt", "best.pt": "best_model.pt"}


def write_results_from_log(layout: FederationLayout, manifest: Manifest) -> Path:
    """results/ of a federation whose aggregator ran on its own (`cofe start aggregator`), rebuilt from
    its whole event log: every attempt of a resumed federation (after a crash or kill) counts."""
    events = list(read_events(layout.aggregator().events_file))
    started = min((e["time"] for e in events if e.get("event") == "started"), default=time.time())
    progress = FederationProgress(manifest, started=started)
    progress.add_history(events)
    progress.finished = True
    return write_results(layout, progress)


def write_results(layout: FederationLayout, progress: FederationProgress) -> Path:
    results = layout.results
    results.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["round", "collaborator", "task", "metric", "value"])
    rows = [(r.round, r.collaborator, r.task, r.metric, f"{r.value:.6g}") for r in progress.records]
    rows += [(round_number, name, *TOOK_PART, str(int(name in took_part)))
             for round_number, took_part in progress.took_part.items() for name in progress.manifest.collaborators]
    writer.writerows(sorted(rows, key=lambda row: row[:4]))
    atomic_write_text(results / METRICS_FILE, buffer.getvalue())
    save = layout.aggregator().save_dir
    for source, target in MODELS.items():
        if (save / source).is_file():
            with staged_file(results / target) as partial:  # a run killed mid-copy leaves the old file
                shutil.copyfile(save / source, partial)
    if (save / MODEL_DIR).is_dir():
        with staged_dir(results / MODEL_DIR) as stage:
            shutil.copytree(save / MODEL_DIR, stage, dirs_exist_ok=True)
    summary = {
        "rounds": progress.rounds,
        "collaborators": list(progress.manifest.collaborators),
        "wall_seconds": round(max(progress.round_ended.values(), default=progress.started) - progress.started, 1),
        "first_round_started_after_seconds": _round(progress.first_round_delay()),
        "round_seconds": {r: round(progress.round_ended[r] - progress.round_started[r], 1)
                          for r in progress.round_ended if r in progress.round_started},
        "peak_rss_bytes": {name: site.peak_rss for name, site in progress.sites.items()},
        "took_part": {r: sites for r, sites in sorted(progress.took_part.items())},
        "validation": progress.manifest.validations,
        "lost": {name: site.lost_in_round for name, site in progress.sites.items() if site.lost_in_round is not None},
    }
    spent = {name: progress.latest(name, "train") for name in progress.manifest.collaborators}
    if any(EPSILON_METRIC in train for train in spent.values()):  # differential privacy: each site's budget spent
        summary["epsilon"] = {name: train.get(EPSILON_METRIC) for name, train in spent.items()}
        summary["stopped_at_max_epsilon"] = sorted(name for name, train in spent.items()
                                                   if train.get(BUDGET_EXHAUSTED_METRIC))
    atomic_write_text(results / "summary.json", json.dumps(summary, indent=2) + "\n")
    _plot(results / "metrics.png", progress)
    return results


def _round(value):
    return None if value is None else round(value, 1)


def summary_table(progress: FederationProgress) -> Table:
    """One row per round and participant: the headline metric of each task, as a person compares them."""
    table = Table(title="Federation summary", title_justify="left",
                  caption=f"validation: {progress.manifest.validations}", caption_justify="left")
    table.add_column("round", justify="right")
    table.add_column("participant")
    tasks = progress.manifest.tasks
    for task in tasks:
        table.add_column(SHORT_TASK[task], justify="right")
    rounds = sorted({r.round for r in progress.records})
    for round_number in rounds:
        for name in (*progress.manifest.collaborators, AGGREGATOR):
            cells = []
            for task in tasks:
                values = {r.metric: r.value for r in progress.records
                          if r.round == round_number and r.collaborator == name and r.task == task}
                if task == "train" and values:
                    cells.append(train_cell(values))
                    continue
                key = headline_metric(values)
                cells.append(f"{key.removeprefix('valid_')} {values[key]:.3f}" if key else "")
            if any(cells):
                dropped = not is_aggregator(name) and name not in progress.took_part.get(round_number, [name])
                label = "[bold]aggregated[/]" if is_aggregator(name) else name + (" [red](not in model)[/]" if dropped else "")
                table.add_row(str(round_number + 1), label, *cells)
    return table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_plotting_ahead() -> None:
    """Import matplotlib in a thread now, so that write_results does not wait for it: called once the
    last round has ended, while the aggregator tells the sites to quit and writes the models (seconds,
    on one core), which `cofe run` waits for anyway. The import was half a second of every run's end."""
    threading.Thread(target=_pyplot, name="cofe-load-pyplot", daemon=True).start()


def _plot(path: Path, progress: FederationProgress) -> None:
    plt = _pyplot()  # (waits for load_plotting_ahead's import, if that is still running)
    validation = [r for r in progress.records if r.task == "aggregated_model_validation"]
    metric = headline_metric({r.metric for r in validation})
    if metric is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in (*progress.manifest.collaborators, AGGREGATOR):
        points = sorted((r.round + 1, r.value) for r in validation if r.collaborator == name and r.metric == metric)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", linewidth=2.5 if is_aggregator(name) else 1.2,
                    label="aggregated" if is_aggregator(name) else name)
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} (global model, before local training)")
    ax.set_title(f"{progress.manifest.name}: {metric} per round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    partial.replace(path)


EVALUATION_FILE = "evaluation.csv"
WEIGHTED_MEAN = "weighted mean"


def evaluation_rows(progress: FederationProgress, sites, *, model: str, plan_sha384: str) -> list[dict]:
    """One row per site and metric of the evaluation round, then OpenFL's mean weighted by subjects."""
    rows = []
    subjects = {site.name: site.subjects for site in sites}
    for record in sorted(progress.records, key=lambda r: (is_aggregator(r.collaborator), r.collaborator, r.metric)):
        if record.task != "aggregated_model_validation":
            continue
        # The aggregator's record is OpenFL's mean over every site, weighted by their subjects.
        aggregated = is_aggregator(record.collaborator)
        site = WEIGHTED_MEAN if aggregated else record.collaborator
        count = sum(subjects.values()) if aggregated else subjects.get(record.collaborator, "")
        rows.append({"site": site, "subjects": count, "metric": record.metric, "value": f"{record.value:.6g}",
                     "model": model, "plan_sha384": plan_sha384})
    return rows


def write_evaluation(layout: FederationLayout, rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["site", "subjects", "metric", "value", "model", "plan_sha384"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(layout.results / EVALUATION_FILE, buffer.getvalue())
    return layout.results / EVALUATION_FILE


def evaluation_table(rows: list[dict], sites) -> Table:
    trained = {site.name: site.trained for site in sites}
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    table = Table(title="Federated evaluation", title_justify="left")
    table.add_column("site")
    table.add_column("trained here", justify="center")
    table.add_column("subjects", justify="right")
    for metric in metrics:
        table.add_column(metric.removeprefix("valid_"), justify="right")
    for site in dict.fromkeys(row["site"] for row in rows):
        values = {row["metric"]: row["value"] for row in rows if row["site"] == site}
        subjects = next(row["subjects"] for row in rows if row["site"] == site)
        mean = site == WEIGHTED_MEAN
        table.add_row(f"[bold]{site}[/]" if mean else site, "" if mean else ("yes" if trained.get(site) else "no"),
                      str(subjects), *(f"{float(values[m]):.4f}" if m in values else "" for m in metrics))
    return table
