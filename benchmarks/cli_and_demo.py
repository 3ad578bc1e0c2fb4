"""Figures for the closing note: CLI start-up next to `fx`, and the demo's wall time and memory.

    python benchmarks/cli_and_demo.py [--skip-demo]

Both CLIs are timed in this one run (median of 5 starts each), so the ratio is meaningful on any machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def median_wall(command: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_modules_imported_by_help() -> list[str]:
    probe = "import sys; from cofe_cli.app import app; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    return [m for m in ("torch", "GANDLF", "openfl", "monai", "torchio") if m in loaded]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cofe_help = median_wall([str(BIN / "cofe"), "--help"])
    fx_help = median_wall([str(BIN / "fx"), "--help"])
    print(f"cofe --help: {cofe_help:.3f} s   fx --help: {fx_help:.3f} s   ratio fx/cofe: {fx_help / cofe_help:.1f}x")
    print(f"heavy modules imported by `cofe --help`: {heavy_modules_imported_by_help() or 'none'}")
    if args.skip_demo:
        return

    folder = Path(tempfile.mkdtemp(prefix="cofe-bench-"))
    try:
        start = time.perf_counter()
        subprocess.run([str(BIN / "cofe"), "demo", "--dir", str(folder), "--sites", str(args.sites),
                        "--rounds", str(args.rounds)], check=True)
        wall = time.perf_counter() - start
        summary = json.loads((folder / "results" / "summary.json").read_text())
        metrics = (folder / "results" / "metrics.csv").read_text().splitlines()[1:]
        dice = {}
        for line in metrics:
            round_number, who, task, metric, value = line.split(",")
            if who == "aggregator" and task == "aggregated_model_validation" and "dice" in metric:
                dice[int(round_number)] = float(value)
        print(f"cofe demo ({args.sites} sites, {args.rounds} rounds): wall {wall:.0f} s, "
              f"first round started after {summary['first_round_started_after_seconds']} s, "
              f"round times {summary['round_seconds']}")
        print("aggregated validation Dice per round: " + ", ".join(f"{r + 1}: {v:.3f}" for r, v in sorted(dice.items())))
        for name, rss in summary["peak_rss_bytes"].items():
            print(f"peak RSS {name}: {rss / 2**30:.2f} GiB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
