"""Figures for the containers' closing note, all measured in this one run on this machine:

    python benchmarks/containers.py [--base-image IMG] [--extra-ca-bundle FILE] [--skip-cold]

- the image's size, and its build time with a cold cache (every layer, dependencies downloaded again),
  a warm cache (nothing changed) and after a code-only change (only cofe re-installed);
- the same federation (2 collaborators, 2 rounds, the tests' tiny synthetic volumes) in process mode
  and with `cofe run --containers`: time from the command to the aggregator's start and to the first
  round's tasks, and the whole run's wall time.

Needs a reachable engine (DOCKER_HOST) and, where no registry is reachable, a local base image
(`eval "$(scripts/start-docker-engine.sh)"` gives COFE_TEST_BASE_IMAGE).
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[1]
TAG = "cofe-bench:latest"


def cofe(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kwargs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed_build(base: str, ca: str | None, source: Path, *, no_cache: bool = False) -> float:
    args = ["image", "build", "--base-image", base, "--tag", TAG, "--source", source] + (["--extra-ca-bundle", ca] if ca else [])
    started = time.perf_counter()
    done = cofe(*args, *(["--no-cache"] if no_cache else []))
    if done.returncode != 0:
        sys.exit(f"image build failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def code_changed_copy(into: Path) -> Path:
    """A copy of the source tree whose only change is in cofe's code."""
    source = into / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "workspaces", "plans", "tests"))
    init = source / "cofe_cli" / "__init__.py"
    init.write_text(init.read_text() + f"\n# benchmark edit {time.time()}\n")
    return source


def timed_federation(folder: Path, config: Path, data: dict[str, Path], containers: bool) -> dict:
    """Wall time of `cofe run`, and when (from the command's start) the aggregator started and handed out tasks."""
    fed = folder / ("fed-containers" if containers else "fed-processes")
    args = ["run", "--dir", fed, "--gandlf-config", config, "--rounds", 2, "--port", free_port(), "--timeout", 1800]
    for name, path in data.items():
        args += ["--collaborator", f"{name}={path}"]
    if containers:
        args += ["--containers", "--image", TAG]
    started = time.time()
    done = cofe(*args)
    wall = time.time() - started
    if done.returncode != 0:
        sys.exit(f"cofe run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    events = [json.loads(line) for line in (fed / "workspaces" / "aggregator" / "logs" / "events.jsonl").read_text().splitlines()]
    first = lambda kind: next(e["time"] for e in events if e["event"] == kind) - started
    return {"wall": wall, "aggregator_started": first("started"), "first_tasks": first("tasks")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-image", default=os.environ.get("COFE_TEST_BASE_IMAGE", "python:3.11-slim"))
    parser.add_argument("--extra-ca-bundle", default=os.environ.get("COFE_TEST_EXTRA_CA"))
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold-cache build (~4 min, ~3.5 GB download)")
    args = parser.parse_args()

    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data
    from cofe_cli.launch.docker_engine import connect

    client = connect()
    folder = Path(tempfile.mkdtemp(prefix="cofe-bench-containers-"))
    os.chmod(folder, 0o755)
    try:
        cold = None if args.skip_cold else timed_build(args.base_image, args.extra_ca_bundle, REPO, no_cache=True)
        warm = timed_build(args.base_image, args.extra_ca_bundle, REPO)
        code_only = timed_build(args.base_image, args.extra_ca_bundle, code_changed_copy(folder))
        size = int(client.images.get(TAG).attrs["Size"])
        print(f"image {TAG}: {size / 1e9:.2f} GB (base {args.base_image})")
        print(f"build, cold cache (--no-cache): {'skipped' if cold is None else f'{cold:.0f} s'}")
        print(f"build, warm cache (nothing changed): {warm:.1f} s")
        print(f"build, warm cache after a code-only change: {code_only:.1f} s")

        data = make_demo_federation_data(folder / "data", ["site_a", "site_b"], n_train=3, n_valid=2)
        config = demo_gandlf_config()
        config["q_samples_per_volume"] = 1
        config["q_max_length"] = 1
        config_path = folder / "gandlf.yaml"
        config_path.write_text(yaml.safe_dump(config))
        processes = timed_federation(folder, config_path, data, containers=False)
        in_containers = timed_federation(folder, config_path, data, containers=True)
        print("same federation (2 collaborators, 2 rounds), measured from the command's start:")
        print(f"{'':24}{'processes':>12}{'containers':>12}")
        for key, label in (("aggregator_started", "aggregator started"), ("first_tasks", "first round's tasks"),
                           ("wall", "whole run (wall)")):
            print(f"{label:24}{processes[key]:>11.1f}s{in_containers[key]:>11.1f}s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:  # each --no-cache build leaves a fresh 7 GB image: keep the engine's disk from filling up
            client.images.remove(TAG, force=True)
        except Exception:
            pass


if __name__ == "__main__":
    main()
