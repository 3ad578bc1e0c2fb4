"""Figures for issue 13 (FeTS scale): the demo's federation (its GaNDLF config and synthetic volumes) with
S sites and 1 round, run by `cofe run` on this machine, measured in this one run:

- memory: the peak of the summed PSS of all participant processes (the `cofe run` process tree; a page
  shared by several processes counted once), sampled every second, and each process's peak USS and RSS;
- the whole run's wall time, and the rounds' wall time (from the aggregator being ready to the last
  round's end) next to the busiest worker's summed task time (from the aggregator's event log: the
  union of the spans from a site getting its tasks to its last result, over the sites of one worker;
  without --workers every site is its own worker) and their ratio;
- the validation Dice of the last round (results/metrics.csv): of the aggregated model the round started
  from (with 1 round, the initial model) and of the sites' models after training (locally tuned).
  --side-by-side runs one federation twice (the second time with --restart): same initial model, same data.

    python benchmarks/fets_scale.py [--sites 6] [--workers W]
    python benchmarks/fets_scale.py --sites 6,12,24,33,71 --workers 2    # and the slope of peak PSS per site
    python benchmarks/fets_scale.py --side-by-side                      # 6 sites: 6 processes vs --workers 2

--workers is passed to `cofe run` as is (shared workers); leave it out for one process per site.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cofe_cli.events import read_events
from cofe_cli.federation import FederationLayout
from cofe_cli.launch.memory import TreeMemorySampler

GIB = 2**30


def make_federation(root: Path, sites: int) -> Path:
    """`cofe init` of the demo's config and data for `sites` sites (the demo's seeds: same data every run)."""
    from cofe_cli.commands.demo import free_port
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    names = [f"site_{i}" for i in range(1, sites + 1)]
    data = make_demo_federation_data(root / "data", names)
    config = root / "gandlf_config.yaml"
    config.write_text(yaml.safe_dump(demo_gandlf_config()))
    fed = root / "fed"
    collaborators = [arg for name, folder in data.items() for arg in ("--collaborator", f"{name}={folder}")]
    cofe("init", "--dir", fed, "--gandlf-config", config, *collaborators, "--rounds", 1, "--port", free_port())
    return fed


def cofe(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"`cofe {' '.join(map(str, args[:2]))}` failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def participant_label(proc) -> str:
    """`aggregator`, the site's name, `cofe run`, or another process's arguments (a shared worker's, which
    name its sites, say)."""
    args = proc.cmdline()
    if "start" in args and len(args) > args.index("start") + 2:
        role = args[args.index("start") + 1]
        if role in ("aggregator", "collaborator"):
            return role if role == "aggregator" else args[args.index("start") + 2]
    if "run" in args and "cofe_cli" in args:
        return "cofe run"
    if any("write_native_models_when_told" in arg for arg in args):
        return "aggregator's model export"
    return " ".join(args[args.index("cofe_cli") + 1:] if "cofe_cli" in args else args[1:])


def run_federation(fed: Path, workers: int | None, restart: bool = False) -> dict:
    command = [sys.executable, "-m", "cofe_cli", "run", "--dir", str(fed), "--timeout", "7200"] + (["--restart"] if restart else [])
    if workers:
        command += ["--workers", str(workers)]
    started, started_wall = time.perf_counter(), time.time()
    log = fed / "cofe-run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeMemorySampler(run.pid, label=participant_label)
        sampler.start()
        returncode = run.wait()
    wall = time.perf_counter() - started
    memory = sampler.stop()
    if returncode != 0:
        sys.exit(f"`cofe run` failed ({returncode}):\n{log.read_text()[-3000:]}")
    layout = FederationLayout(fed)
    events = [e for e in read_events(layout.aggregator().events_file) if e.get("time", 0) >= started_wall]  # this run's
    busiest, rounds_wall = busiest_worker_seconds(events, memory.processes.values()), rounds_seconds(events)
    return {"sites": len(layout.load_manifest().collaborators), "workers": workers, "wall": wall,
            "peak_pss": memory.peak_pss, "processes": sorted(memory.processes.values(), key=lambda p: -p.pss),
            "dice": last_round_dice(layout.results / "metrics.csv"),
            "tuned_dice": last_round_dice(layout.results / "metrics.csv", "locally_tuned_model_validation"), "busiest": busiest, "rounds_wall": rounds_wall}


def site_spans(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per site, per round: from getting its tasks to its last result reaching the aggregator."""
    began: dict[tuple[str, int], float] = {}
    ended: dict[tuple[str, int], float] = {}
    for event in events:
        key = (event.get("collaborator"), event.get("round"))
        if event.get("event") == "tasks":
            began.setdefault(key, event["time"])
        elif event.get("event") == "task_done":
            ended[key] = event["time"]
    spans: dict[str, list[tuple[float, float]]] = {}
    for key, start in began.items():
        if key in ended:
            spans.setdefault(key[0], []).append((start, ended[key]))
    return spans


def union_seconds(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def busiest_worker_seconds(events: list[dict], processes) -> float:
    """A worker's task time is the union of its sites' spans (a worker runs one task at a time). Sites go to
    workers by the process that named them (`cofe start collaborator NAME`, or a worker whose arguments list
    its sites); a site no process named counts as a worker of its own."""
    spans = site_spans(events)
    workers: dict[str, list[tuple[float, float]]] = {}
    for site, site_span in spans.items():
        holder = next((p.label for p in processes if site in re.split(r"[\s,=:]+", p.label)), site)
        workers.setdefault(holder, []).extend(site_span)
    return max((union_seconds(s) for s in workers.values()), default=0.0)


def rounds_seconds(events: list[dict]) -> float:
    """From the aggregator being ready (the last start, if it restarted) to the last round's end."""
    ready = max((e["time"] for e in events if e.get("event") == "started"), default=None)
    end = max((e["time"] for e in events if e.get("event") == "round_end"), default=None)
    return end - ready if ready is not None and end is not None else float("nan")


def last_round_dice(metrics_csv: Path, task: str = "aggregated_model_validation") -> float | None:
    """The sites' weighted mean Dice of the last round: of the model the round started from (aggregated), or
    of each site's model after its training (locally tuned; with 1 round, the only trained one)."""
    dice = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["collaborator"] == "aggregator" and row["task"] == task and "dice" in row["metric"]:
                dice[int(row["round"])] = float(row["value"])
    return dice[max(dice)] if dice else None


def one(work: Path, sites: int, workers_runs: list[int | None], keep: bool) -> list[dict]:
    """The federation of `sites` sites run once per entry of workers_runs, the later runs with --restart:
    the same initial model and data each time."""
    folder = work / f"sites{sites}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    fed, results = make_federation(folder, sites), []
    for attempt, workers in enumerate(workers_runs):
        results.append(run_federation(fed, workers, restart=attempt > 0))
        print_result(results[-1])
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def print_result(r: dict) -> None:
    mode = f"--workers {r['workers']}" if r["workers"] else "one process per site"
    dice = " / ".join("-" if d is None else f"{d:.3f}" for d in (r["dice"], r["tuned_dice"]))
    ratio = r["rounds_wall"] / r["busiest"] if r["busiest"] else float("nan")
    print(f"{r['sites']} sites, 1 round, {mode}: peak summed PSS {r['peak_pss'] / GIB:.2f} GiB, wall {r['wall']:.0f} s, "
          f"validation Dice aggregated / locally tuned {dice}; round {r['rounds_wall']:.0f} s, busiest worker's tasks "
          f"{r['busiest']:.0f} s, ratio {ratio:.2f}")
    for proc in r["processes"]:
        print(f"    {proc.label[:40]:<40} peak PSS {proc.pss / GIB:5.2f}  USS {proc.uss / GIB:5.2f}  RSS {proc.rss / GIB:5.2f} GiB")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="6", help="a site count, or several (6,12,24,33,71) for the slope")
    parser.add_argument("--workers", type=int, help="passed to `cofe run --workers` (default: one process per site)")
    parser.add_argument("--side-by-side", action="store_true", help="6 sites as 6 processes and with --workers 2")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the federations")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cofe-fets-scale-"))
    try:
        if args.side_by_side:
            alone, shared = one(work, 6, [None, 2], bool(args.keep))
            print(f"side by side, 6 sites: peak PSS {alone['peak_pss'] / GIB:.2f} vs {shared['peak_pss'] / GIB:.2f} GiB, "
                  f"wall {alone['wall']:.0f} vs {shared['wall']:.0f} s")
            for key, what in (("dice", "aggregated"), ("tuned_dice", "locally tuned")):
                a, b = alone[key], shared[key]
                difference = f"{abs(a - b):.3f}" if a is not None and b is not None else "-"
                print(f"    {what} validation Dice {a} vs {b} (difference {difference}, must be <= 0.02)")
            return
        counts = [int(s) for s in args.sites.split(",") if s.strip()]
        results = [one(work, sites, [args.workers], bool(args.keep))[0] for sites in counts]
        if len(results) > 1:
            points = [(r["sites"], r["peak_pss"] / GIB) for r in results]
            print("peak summed PSS by sites: " + ", ".join(f"{s}: {p:.2f} GiB" for s, p in points))
            print(f"slope: {slope(points):.3f} GiB of peak PSS per extra site (least squares)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
