"""Figures for issue 12 (validation speed), in one run: round times before and after, and the whole flow
next to the hand-driven `fx` flow.

1. The demo federation (`cofe demo` defaults: 3 sites, 3 rounds, 32^3 volumes) and a 3-site federation
   on 128x128x64 synthetic volumes, each initialised once and run twice from the same initial model and
   data: "before" with GaNDLF's own validate_network (COFE_VALIDATION_BATCH=gandlf, which overrides the
   plan's `validation_batch`, see engine/batched_validation.py) and "after" with batched validation
   (the plan's `auto`). Round times come from results/summary.json; the validation metrics of both runs
   are compared row by row (round 1 validates the same initial model, so it must agree within 1e-4;
   later rounds also depend on training being reproducible).
2. The whole flow, `cofe init` + `cofe certify` + `cofe run`, next to the hand-driven `fx` flow on the
   same plan (the plan cofe wrote) and data: one workspace laid out by hand as `fx workspace create`
   would, then `fx workspace certify`, `fx aggregator generate-cert-request/certify`, per site `fx
   collaborator create/generate-cert-request/certify --request-pkg/certify --import`, `fx plan
   initialize`, and `fx aggregator start` with one `fx collaborator start` per site. Every fx process
   gets the thread budget cofe gives its participant (Participant.thread_budget), so the comparison
   is the flow and not torch's oversubscription.

    python benchmarks/round_time.py [--rounds 2] [--skip-large] [--skip-fx] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
SITES = ("hospital_a", "hospital_b", "hospital_c")
BEFORE = {"COFE_VALIDATION_BATCH": "gandlf"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cofe(*args, env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([str(BIN / "cofe"), *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - started


def validation_rows(fed: Path) -> dict[tuple, float]:
    with (fed / "results" / "metrics.csv").open() as handle:
        return {(r["round"], r["collaborator"], r["task"], r["metric"]): float(r["value"])
                for r in csv.DictReader(handle) if "validation" in r["task"]}


def round_seconds(fed: Path) -> dict:
    return json.loads((fed / "results" / "summary.json").read_text())["round_seconds"]


def compare(title: str, fed: Path, run_again) -> None:
    """`fed` has just run "after"; `run_again(env)` runs it again from round 0 with GaNDLF's validation."""
    after, after_rounds = validation_rows(fed), round_seconds(fed)
    before_wall = run_again(BEFORE)
    before, before_rounds = validation_rows(fed), round_seconds(fed)
    print(f"{title}:")
    print(f"  round seconds before (GaNDLF validate_network): {before_rounds}  (run {before_wall:.0f} s)")
    print(f"  round seconds after  (batched validation):      {after_rounds}")
    total_before, total_after = sum(before_rounds.values()), sum(after_rounds.values())
    print(f"  sum of rounds: before {total_before:.1f} s, after {total_after:.1f} s, after/before {total_after / total_before:.2f}x")
    # Round 1's aggregated_model_validation validates the same initial model on the same data in both runs:
    # the two validations must agree there. Every later value also depends on training being reproducible.
    for round_number in sorted({key[0] for key in before}, key=int):
        for task in sorted({key[2] for key in before}):
            keys = [key for key in before if key[0] == round_number and key[2] == task]
            missing = [key for key in keys if key not in after]
            worst = max((abs(before[key] - after[key]) for key in keys if key in after), default=float("nan"))
            same_model = round_number == "0" and task == "aggregated_model_validation"
            print(f"  round {int(round_number) + 1} {task}: {len(keys)} values, max |before - after| {worst:.2e}"
                  + (" (the same model: must be <= 1e-4)" if same_model else " (after training)")
                  + (f", {len(missing)} missing after" if missing else ""))


def demo_figures(work: Path) -> None:
    fed = work / "demo"
    after_wall = cofe("demo", "--dir", fed)
    print(f"cofe demo (defaults) ran in {after_wall:.0f} s")
    compare("demo federation (3 sites, 3 rounds, 32^3 volumes)", fed,
            lambda env: cofe("run", "--dir", fed, "--restart", env=env))


def make_federation_inputs(root: Path, shape: tuple[int, int, int], n_train: int, n_valid: int) -> tuple[Path, dict]:
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    folders = make_demo_federation_data(root / "data", list(SITES), n_train=n_train, n_valid=n_valid, shape=shape)
    config = root / "gandlf_config.yaml"
    config.write_text(yaml.safe_dump(demo_gandlf_config()))
    return config, folders


def whole_flow(fed: Path, config: Path, folders: dict, rounds: int) -> dict[str, float]:
    args = ["--gandlf-config", config, "--rounds", rounds, "--port", free_port()]
    for name in SITES:
        args += ["--collaborator", f"{name}={folders[name]}"]
    return {"init": cofe("init", "--dir", fed, *args), "certify": cofe("certify", "--dir", fed),
            "run": cofe("run", "--dir", fed)}


def large_figures(work: Path, rounds: int) -> None:
    config, folders = make_federation_inputs(work / "large-inputs", (128, 128, 64), n_train=2, n_valid=2)
    fed = work / "large"
    steps = whole_flow(fed, config, folders, rounds)
    compare(f"3 sites, {rounds} rounds, 128x128x64 volumes (2 training, 2 validation a site)", fed,
            lambda env: cofe("run", "--dir", fed, "--restart", env=env))
    print(f"  its cofe flow: {', '.join(f'{k} {v:.1f} s' for k, v in steps.items())}")


def fx(workspace: Path, *args, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([str(BIN / "fx"), *map(str, args)], cwd=workspace, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def fx_flow(workspace: Path, plan: Path, folders: dict) -> dict[str, float]:
    """The hand-driven flow in one workspace (every participant on this machine), timed step by step."""
    from cofe_cli.participant import AGGREGATOR, Participant

    home = workspace.parent / "fx-home"
    home.mkdir(parents=True)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home)}
    started = time.perf_counter()
    for folder in ("plan", "save", "logs", "local_state", "data"):
        (workspace / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan, workspace / "plan" / "plan.yaml")
    (workspace / "plan" / "cols.yaml").write_text("collaborators: []\n")
    (workspace / "plan" / "data.yaml").write_text("")
    for name in SITES:
        (workspace / "data" / name).symlink_to(folders[name])  # fx refuses data paths outside the workspace
    steps = {"lay out workspace": time.perf_counter() - started}
    steps["workspace certify"] = fx(workspace, "workspace", "certify", env=env)
    steps["aggregator cert"] = (fx(workspace, "aggregator", "generate-cert-request", "--fqdn", "localhost", env=env)
                                + fx(workspace, "aggregator", "certify", "--fqdn", "localhost", "-s", env=env))
    steps["collaborators"] = 0.0
    for name in SITES:
        steps["collaborators"] += fx(workspace, "collaborator", "create", "-n", name, "-d", f"data/{name}", "-s", env=env)
        steps["collaborators"] += fx(workspace, "collaborator", "generate-cert-request", "-n", name, "-s", env=env)
        steps["collaborators"] += fx(workspace, "collaborator", "certify", "--request-pkg",
                                     f"col_{name}_to_agg_cert_request.zip", "-s", env=env)
        steps["collaborators"] += fx(workspace, "collaborator", "certify", "--import",
                                     f"agg_to_col_{name}_signed_cert.zip", env=env)
    steps["plan initialize"] = fx(workspace, "plan", "initialize", "-a", "localhost", env=env)
    started = time.perf_counter()
    logs = workspace / "logs"
    processes = []
    for who, command in [(AGGREGATOR, ["aggregator", "start"])] + [(n, ["collaborator", "start", "-n", n]) for n in SITES]:
        threads = Participant(name=who, root=workspace, workspace=workspace).thread_budget(sharing=len(SITES))
        processes.append(subprocess.Popen([str(BIN / "fx"), *command], cwd=workspace,
                                          stdout=open(logs / f"fx-{who}.log", "wb"), stderr=subprocess.STDOUT,
                                          env={**env, "OMP_NUM_THREADS": str(threads)}))
    for process in processes:
        if process.wait(timeout=3600) != 0:
            raise RuntimeError(f"{process.args} exited {process.returncode}: see {logs}")
    steps["run"] = time.perf_counter() - started
    return steps


def flow_figures(work: Path, rounds: int) -> None:
    config, folders = make_federation_inputs(work / "flow-inputs", (32, 32, 32), n_train=4, n_valid=2)
    cofe_steps = whole_flow(work / "flow-cofe", config, folders, rounds)
    fx_steps = fx_flow(work / "flow-fx" / "workspace", work / "flow-cofe" / "plans" / "plan.yaml", folders)
    cofe_total, fx_total = sum(cofe_steps.values()), sum(fx_steps.values())
    print(f"whole flow, 3 sites, {rounds} rounds, demo volumes, the same plan and data:")
    print(f"  cofe: {cofe_total:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in cofe_steps.items())})")
    print(f"  fx:   {fx_total:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in fx_steps.items())})")
    fx_setup = fx_total - fx_steps["run"]
    print(f"  cofe / fx: whole flow {cofe_total / fx_total:.2f}x (goal <= 0.5x), set-up "
          f"{(cofe_steps['init'] + cofe_steps['certify']) / fx_setup:.2f}x, run {cofe_steps['run'] / fx_steps['run']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the 128x128x64 and the flow federations")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-fx", action="store_true")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cofe-round-time-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    try:
        if not args.skip_demo:
            demo_figures(work)
        if not args.skip_large:
            large_figures(work, args.rounds)
        if not args.skip_fx:
            flow_figures(work, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
