"""Kill -9 the aggregator at random moments and count the federations that still finish correctly.

Each run: a fresh 2-site federation on the demo's synthetic data (trimmed so a round takes seconds),
every participant its own `cofe start`; after a random delay the aggregator gets SIGKILL and is
started again, KILLS_PER_RUN times; then the collaborators (which wait for it meanwhile) and the last
aggregator must exit 0, and the federation must hold exactly its planned rounds: one round_end per
round and one `finished` in the event log, results/metrics.csv with every site and the aggregate in
every round, and best and last models that load. A first run without kills sets the time span the
kill moments are drawn from.

    python benchmarks/aggregator_kill.py [--kills 20] [--kills-per-run 2] [--rounds 3] [--seed 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SITES = ("site_a", "site_b")


def cofe(*args, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                          check=check, stdin=subprocess.DEVNULL)


def background(*args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cofe_cli", *map(str, args)], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(scratch: Path) -> tuple[Path, dict[str, Path]]:
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    data = make_demo_federation_data(scratch / "data", list(SITES), n_train=3, n_valid=2)
    config = demo_gandlf_config()
    config["q_samples_per_volume"] = 1
    config["q_max_length"] = 1
    path = scratch / "gandlf.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, data


def events(fed: Path) -> list[dict]:
    from cofe_cli.events import read_events

    return list(read_events(fed / "workspaces" / "aggregator" / "logs" / "events.jsonl"))


def run_once(fed: Path, config: Path, data: dict[str, Path], rounds: int,
             kill_after: list[float]) -> tuple[bool, str, float, int]:
    """One federation, the aggregator killed after each delay (seconds from its latest start); whether
    it finished correctly, why not, how long it ran, and how many kills happened (the federation may
    finish before a late moment)."""
    args = [arg for name, folder in data.items() for arg in ("--collaborator", f"{name}={folder}")]
    cofe("init", "--dir", fed, "--gandlf-config", config, *args, "--rounds", rounds, "--port", free_port())
    cofe("certify", "--dir", fed)
    logs = fed.parent / f"{fed.name}-logs"
    logs.mkdir()
    started, kills = time.monotonic(), 0
    aggregator = background("start", "aggregator", "--dir", fed, log=logs / "aggregator.out")
    collaborators = [background("start", "collaborator", name, "--dir", fed, log=logs / f"{name}.out") for name in SITES]
    try:
        for delay in kill_after:
            launched = time.monotonic()
            while time.monotonic() - launched < delay and aggregator.poll() is None:
                time.sleep(0.05)
            if aggregator.poll() is not None:
                break  # it finished before this moment: nothing left to kill
            os.kill(aggregator.pid, signal.SIGKILL)
            aggregator.wait()
            kills += 1
            aggregator = background("start", "aggregator", "--dir", fed, log=logs / "aggregator.out")
        for proc in [aggregator, *collaborators]:
            proc.wait(timeout=900)
    finally:
        for proc in [aggregator, *collaborators]:
            if proc.poll() is None:
                proc.kill()
    elapsed = time.monotonic() - started
    codes = [aggregator.returncode, *(proc.returncode for proc in collaborators)]
    if codes != [0] * len(codes):
        return False, f"exit codes {codes}", elapsed, kills
    return (*check_federation(fed, rounds), elapsed, kills)


def check_federation(fed: Path, rounds: int) -> tuple[bool, str]:
    log = events(fed)
    ended = sorted({e["round"] for e in log if e["event"] == "round_end"})
    if ended != list(range(rounds)):
        return False, f"rounds ended: {ended}"
    if [e["rounds"] for e in log if e["event"] == "finished"] != [rounds]:
        return False, "not exactly one `finished`"
    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for round_number in range(rounds):
        reported = {r["collaborator"] for r in rows if int(r["round"]) == round_number and r["task"] == "aggregated_model_validation"}
        if reported != {*SITES, "aggregator"}:
            return False, f"metrics.csv round {round_number + 1}: {sorted(reported)}"
    probe = ("import sys; from cofe_cli.engine.participant import load_model; "
             "[load_model(sys.argv[1], m) for m in sys.argv[2:]]")
    loaded = subprocess.run([sys.executable, "-c", probe, str(fed / "workspaces" / "aggregator"),
                             str(fed / "results" / "best_model.pt"), str(fed / "results" / "final_model.pt")],
                            capture_output=True, text=True)
    if loaded.returncode:
        return False, f"models do not load: {loaded.stderr.strip().splitlines()[-1:]}"
    return True, "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kills-per-run", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="aggregator-kill-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        config, data = prepare(scratch)
        ok, why, span, _ = run_once(scratch / "reference", config, data, args.rounds, [])
        print(f"reference run, no kill: {why} in {span:.0f} s; kills drawn from its first {0.95 * span:.0f} s", flush=True)
        if not ok:
            sys.exit(1)
        recovered = total = 0
        run = 0
        while total < args.kills and run < 3 * args.kills:  # (a run may end before its kill moments)
            run += 1
            count = min(args.kills_per_run, args.kills - total)
            # Moments across the whole run: each delay is counted from the (re)start of the aggregator.
            moments = sorted(rng.uniform(1.0, 0.95 * span) for _ in range(count))
            delays = [b - a for a, b in zip([0.0, *moments], moments)]
            ok, why, elapsed, kills = run_once(scratch / f"run{run}", config, data, args.rounds, delays)
            total += kills
            recovered += kills if ok else 0
            print(f"run {run}: {kills} kill(s), at {', '.join(f'{m:.1f}' for m in moments[:kills])} s of aggregator "
                  f"time: {why} ({elapsed:.0f} s)", flush=True)
        print(f"{recovered}/{total} kills: the federation still finished correctly")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
