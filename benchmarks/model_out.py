"""Figures for the "model out" work, measured in one run on the demo federation:

- `cofe evaluate` wall time at the demo's sites plus one that never trained, next to the wall time of
  one training round of the same federation (from its event log);
- the best model's Dice at each site: the federation's own validation of it, `cofe infer` with input
  instance-norm statistics (the federation's default) and with running ones, and GaNDLF's own
  `gandlf run --infer` on the exported model directory.

    python benchmarks/model_out.py [--sites 3] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def cofe(*args) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "cofe"), *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def best_round(fed: Path) -> int:
    from openfl.pipelines import NoCompressionPipeline
    from openfl.protocols import utils

    proto = utils.load_proto(str(fed / "workspaces" / "aggregator" / "save" / "best.pbuf"))
    return utils.deconstruct_model_proto(proto, NoCompressionPipeline())[1]


def training_round_seconds(fed: Path) -> dict[int, float]:
    started, ended = {}, {}
    for line in (fed / "workspaces" / "aggregator" / "logs" / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "tasks":
            started.setdefault(event["round"], event["time"])
        elif event["event"] == "round_end":
            ended[event["round"]] = event["time"]
    return {r: ended[r] - started[r] for r in ended if r in started}


def gandlf_cli_dice(fed: Path, csv_file: Path, scratch: Path) -> float | None:
    model_dir = scratch / "gandlf_model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(fed / "results" / "gandlf_model", model_dir)
    done = subprocess.run([str(BIN / "gandlf"), "run", "-c", str(model_dir / "config.yaml"), "-i", str(csv_file),
                           "--infer", "-m", str(model_dir), "-o", str(scratch / "gandlf-out")],
                          capture_output=True, text=True, cwd=scratch)
    for line in done.stdout.splitlines():
        if line.startswith("Metrics:"):
            return float(line.split("'dice':")[1].split("}")[0].split(",")[0])
    return None


def inferred_dice(fed: Path, csv_file: Path, out: Path, norm: str) -> float:
    done = subprocess.run([str(BIN / "cofe"), "infer", "--dir", str(fed), "--data", str(csv_file), "--out", str(out),
                           "--validation-norm", norm, "--force"], capture_output=True, text=True, check=True)
    return float(next(line for line in done.stdout.splitlines() if line.strip().startswith("dice:")).split(":")[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the federation in this folder")
    args = parser.parse_args()

    from cofe_cli.demo.synthetic import make_site_dataset

    scratch = Path(tempfile.mkdtemp(prefix="cofe-model-out-"))
    fed = args.keep or scratch / "demo"
    try:
        cofe("demo", "--dir", fed, "--sites", args.sites, "--rounds", args.rounds)
        rounds = training_round_seconds(fed)
        new_site = make_site_dataset(scratch / "new_site", site_index=args.sites, n_train=2, n_valid=3, seed=7)
        evaluate_wall = cofe("evaluate", "--dir", fed, "--model", "best",
                             *(f"--collaborator={s}" for s in (json.loads((fed / 'results' / 'summary.json')
                                                                        .read_text())["collaborators"])),
                             "--collaborator", f"new_site={new_site}")
        evaluation_round = training_round_seconds(fed / "evaluation")[0]
        print(f"cofe evaluate (best model, {args.sites} training sites + 1 new): wall {evaluate_wall:.1f} s, of which "
              f"the evaluation round {evaluation_round:.1f} s (the rest: starting {args.sites + 2} processes that "
              f"import torch); training rounds of the same federation: "
              + ", ".join(f"{r + 1}: {s:.1f} s" for r, s in sorted(rounds.items())))
        evaluation = {(r["site"], r["metric"]): float(r["value"]) for r in rows(fed / "results" / "evaluation.csv")}

        best = best_round(fed)
        training = {r["collaborator"]: float(r["value"]) for r in rows(fed / "results" / "metrics.csv")
                    if r["task"] == "aggregated_model_validation" and int(r["round"]) == best and r["metric"] == "valid_dice"}
        print(f"best model: round {best + 1}; Dice per site on its validation subjects")
        print(f"{'site':<12}{'federation':>12}{'evaluate':>10}{'infer input':>13}{'infer running':>15}{'gandlf CLI':>12}")
        sites = json.loads((fed / "results" / "summary.json").read_text())["collaborators"]
        for site in sites:
            data = Path((fed / "workspaces" / site / "plan" / "data.yaml").read_text().splitlines()[1].split(",", 1)[1])
            valid = data / "valid.csv"
            line = (f"{site:<12}{training[site]:>12.4f}{evaluation[(site, 'valid_dice')]:>10.4f}"
                    f"{inferred_dice(fed, valid, scratch / 'infer', 'input'):>13.4f}"
                    f"{inferred_dice(fed, valid, scratch / 'infer', 'running'):>15.4f}")
            cli = gandlf_cli_dice(fed, valid, scratch)
            print(line + (f"{cli:>12.4f}" if cli is not None else f"{'-':>12}"))
        print(f"{'new_site':<12}{'-':>12}{evaluation[('new_site', 'valid_dice')]:>10.4f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
