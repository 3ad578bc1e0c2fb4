"""How much of a round is not a site's training or validation: the demo federation, run twice in one
go, as OpenFL runs rounds ("before": its 10 s polls and pandas TensorDB, selected by the aggregator's
COFE_BENCH_OPENFL_ROUNDS=1) and as cofe runs them ("after").

From the aggregator's event log (workspaces/aggregator/logs/events.jsonl), for each round after the
first (the first one includes every process's start-up):
- round    = from the previous round's end to this round's end;
- work     = per site, from getting its tasks to its last result (its model download, validation,
             training, validation), the longest site's;
- overhead = round - work: a site hearing of the round late, and the aggregator closing it late;
- notify   = the last site to get its tasks, after the round began;
- close    = the round's end, after its last result.

    python benchmarks/round_latency.py [--sites 3] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MODES = {"before (OpenFL's rounds)": {"COFE_BENCH_OPENFL_ROUNDS": "1"}, "after (cofe's rounds)": {}}


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def rounds_of(events: list[dict]) -> list[dict]:
    ends = {e["round"]: e["time"] for e in events if e["event"] == "round_end"}
    measured = []
    for round_number in sorted(ends):
        if round_number == 0 or round_number - 1 not in ends:
            continue
        got = {e["collaborator"]: e["time"] for e in events if e["event"] == "tasks" and e["round"] == round_number}
        done: dict[str, float] = {}
        for e in events:
            if e["event"] == "task_done" and e["round"] == round_number:
                done[e["collaborator"]] = max(done.get(e["collaborator"], 0.0), e["time"])
        begun, ended = ends[round_number - 1], ends[round_number]
        work = max(done[site] - got[site] for site in got if site in done)
        measured.append({"round": round_number + 1, "round_s": ended - begun, "work_s": work,
                         "overhead_s": ended - begun - work, "notify_s": max(got.values()) - begun,
                         "close_s": ended - max(done.values())})
    return measured


def run_demo(folder: Path, *, sites: int, rounds: int, env: dict[str, str]) -> list[dict]:
    started = time.perf_counter()
    subprocess.run([str(BIN / "cofe"), "demo", "--dir", str(folder), "--sites", str(sites), "--rounds", str(rounds),
                    "--force"], check=True, stdout=subprocess.DEVNULL, env={**os.environ, **env})
    print(f"  demo ran in {time.perf_counter() - started:.0f} s (load average now {load_average()})", flush=True)
    log = folder / "workspaces" / "aggregator" / "logs" / "events.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the demo folders here")
    args = parser.parse_args()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="round-latency-"))
    print(f"demo: {args.sites} sites, {args.rounds} rounds; {os.cpu_count()} CPUs, load average {load_average()}")
    summary = {}
    try:
        for mode, env in MODES.items():
            print(f"{mode}:", flush=True)
            measured = rounds_of(run_demo(scratch / mode.split()[0], sites=args.sites, rounds=args.rounds, env=env))
            for r in measured:
                print(f"  round {r['round']}: {r['round_s']:5.1f} s, work {r['work_s']:5.1f} s, overhead "
                      f"{r['overhead_s']:4.1f} s ({100 * r['overhead_s'] / r['round_s']:4.1f}%): "
                      f"last site told {r['notify_s']:4.1f} s after the round began, round closed "
                      f"{r['close_s']:4.1f} s after the last result")
            total, overhead = sum(r["round_s"] for r in measured), sum(r["overhead_s"] for r in measured)
            summary[mode] = (total, overhead)
        print("share of a round that is not a site's training or validation (rounds 2 and later):")
        for mode, (total, overhead) in summary.items():
            print(f"  {mode:26s} {100 * overhead / total:5.1f}%  ({overhead:.1f} s of {total:.1f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
