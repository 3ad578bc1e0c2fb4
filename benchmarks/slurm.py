"""Figures for `cofe run --slurm`, measured in this one run on this machine next to process mode:

    eval "$(scripts/start-slurm-cluster.sh)"
    python benchmarks/slurm.py [--sites 2] [--rounds 2] [--scale 4,6,8]

- the same federation (the tests' tiny synthetic volumes and fast config) with `cofe run` (processes)
  and `cofe run --slurm`: time from the command to the aggregator being ready, to the first round's
  first task, and the whole run's wall time;
- with --scale: federations of that many sites through Slurm (1 round), each collaborator's peak
  memory read from /proc while it runs (every node of the local test cluster is this machine; Slurm
  itself has no accounting here), and whether the round completed.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_inputs(root: Path, sites: int) -> tuple[Path, list[str]]:
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    names = [f"site_{i}" for i in range(1, sites + 1)]
    data = make_demo_federation_data(root / "data", names, n_train=3, n_valid=2)
    config = demo_gandlf_config()
    config["q_samples_per_volume"] = 1
    config["q_max_length"] = 1
    path = root / "gandlf.yaml"
    path.write_text(yaml.safe_dump(config))
    args = []
    for name, folder in data.items():
        args += ["--collaborator", f"{name}={folder}"]
    return path, args


def cofe(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kwargs)


def first_times(fed: Path, started_wall: float) -> dict[str, float | None]:
    events = [json.loads(line) for line in (fed / "workspaces" / "aggregator" / "logs" / "events.jsonl").read_text().splitlines()
              if line.strip()]
    ready = next((e["time"] for e in events if e.get("event") == "started"), None)
    tasks = next((e["time"] for e in events if e.get("event") == "tasks"), None)
    return {"aggregator_ready_s": ready - started_wall if ready else None,
            "first_round_s": tasks - started_wall if tasks else None}


class PeakMemory(threading.Thread):
    """Peak RSS per collaborator, from the processes whose command line names this federation."""

    def __init__(self, fed: Path):
        super().__init__(daemon=True)
        self.fed, self.peaks, self.done = str(fed), {}, threading.Event()

    def run(self):
        while not self.done.is_set():
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = proc.info["cmdline"] or []
                if self.fed in cmd and "collaborator" in cmd and "start" in cmd:
                    name = cmd[cmd.index("collaborator") + 1]
                    rss = proc.info["memory_info"].rss if proc.info["memory_info"] else 0
                    self.peaks[name] = max(self.peaks.get(name, 0), rss)
            time.sleep(0.5)


def one_run(root: Path, label: str, config: Path, collaborators: list[str], rounds: int, slurm: bool,
            watch_memory: bool = False) -> dict:
    fed = root / label
    init = cofe("init", "--dir", fed, "--gandlf-config", config, *collaborators, "--rounds", rounds, "--port", free_port())
    if init.returncode != 0:
        sys.exit(f"cofe init failed:\n{init.stdout}\n{init.stderr}")
    watcher = PeakMemory(fed) if watch_memory else None
    if watcher:
        watcher.start()
    started_wall, started = time.time(), time.perf_counter()
    done = cofe("run", "--dir", fed, *(["--slurm", "--time", "01:00:00"] if slurm else []), "--timeout", 1800)
    wall = time.perf_counter() - started
    if watcher:
        watcher.done.set()
        watcher.join()
    result = {"mode": "slurm" if slurm else "processes", "returncode": done.returncode, "wall_s": round(wall, 1)}
    try:
        result.update({k: round(v, 1) if v is not None else None for k, v in first_times(fed, started_wall).items()})
    except FileNotFoundError:
        pass
    if watcher:
        result["peak_rss_gib"] = {k: round(v / 2**30, 2) for k, v in sorted(watcher.peaks.items())}
    if done.returncode != 0:
        result["error"] = (done.stderr or done.stdout)[-1500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", default="", help="comma-separated site counts to try through Slurm (1 round each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cofe-bench-slurm-") as tmp:
        root = Path(tmp)
        config, collaborators = make_inputs(root / "inputs", args.sites)
        print(f"{args.sites} collaborators, {args.rounds} rounds, this machine ({psutil.cpu_count()} CPUs, "
              f"{psutil.virtual_memory().total / 2**30:.0f} GiB)")
        for slurm in (False, True):
            result = one_run(root, f"fed-{'slurm' if slurm else 'proc'}", config, collaborators, args.rounds, slurm)
            print(f"{result['mode']:>10}: aggregator ready after {result.get('aggregator_ready_s')} s, first round's "
                  f"tasks after {result.get('first_round_s')} s, whole run {result['wall_s']} s (exit {result['returncode']})")
            if result.get("error"):
                print(result["error"])
        for sites in [int(s) for s in args.scale.split(",") if s.strip()]:
            config_n, collaborators_n = make_inputs(root / f"inputs-{sites}", sites)
            result = one_run(root, f"fed-scale-{sites}", config_n, collaborators_n, 1, True, watch_memory=True)
            peaks = result.get("peak_rss_gib", {})
            total = sum(peaks.values())
            print(f"{sites:>3} sites via Slurm, 1 round: exit {result['returncode']}, {result['wall_s']} s, first round "
                  f"after {result.get('first_round_s')} s, peak RSS per collaborator {peaks} (sum {total:.1f} GiB)")
            if result.get("error"):
                print(result["error"])


if __name__ == "__main__":
    main()
