"""What differential privacy costs on the demo: the demo federation (`cofe demo`'s 3 sites, data and config,
3 rounds) run twice in one
go, without DP and with DP-SGD (noise multiplier 1.0, max_grad_norm 1.0, rdp accountant, delta 1e-5).

For each: the mean round time (rounds after the first, from the aggregator's event log), the final
validation Dice of the aggregated model, and with DP each site's epsilon after the last round.

    python benchmarks/privacy.py [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp", "delta": 1e-5}


def cofe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofe_cli", *map(str, args)], capture_output=True, text=True,
                          check=True, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(root: Path, name: str, config: dict, sites: dict, rounds: int) -> dict:
    from cofe_cli.events import read_events
    from cofe_cli.federation import FederationLayout
    from cofe_cli.metrics import headline_metric

    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    fed = root / name
    site_args = [arg for site, folder in sites.items() for arg in ("--collaborator", f"{site}={folder}")]
    cofe("run", "--dir", fed, "--gandlf-config", path, *site_args, "--rounds", rounds, "--port", free_port(), "--timeout", 3600)
    events = list(read_events(FederationLayout(fed).aggregator().events_file))
    ends = {e["round"]: e["time"] for e in events if e["event"] == "round_end"}
    round_times = [ends[r] - ends[r - 1] for r in sorted(ends) if r - 1 in ends]
    metrics = [e for e in events if e["event"] == "metric"]
    last = max(ends)
    validation = {e["metric"]: e["value"] for e in metrics if e["collaborator"] == "aggregator"
                  and e["round"] == last and e["task"] == "aggregated_model_validation"}
    dice = headline_metric(validation)
    epsilon = {e["collaborator"]: e["value"] for e in metrics if e["metric"] == "epsilon" and e["round"] == last
               and e["collaborator"] in sites}
    return {"round_s": sum(round_times) / len(round_times) if round_times else float("nan"),
            "metric": f"{dice} {validation[dice]:.3f}" if dice else "-", "epsilon": epsilon}


def main() -> None:
    from cofe_cli.commands.demo import DEMO_SITES
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the federations here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="cofe-privacy-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        sites = make_demo_federation_data(root / "data", list(DEMO_SITES))
        config = demo_gandlf_config()
        results = {"without DP": measure(root, "plain", config, sites, args.rounds),
                   "with DP (noise 1.0)": measure(root, "dp", {**config, "differential_privacy": DP}, sites, args.rounds)}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"demo, {len(DEMO_SITES)} sites, {args.rounds} rounds")
    print(f"{'':22} {'round (s)':>10}  {'final metric':>14}  epsilon after round {args.rounds}")
    for name, result in results.items():
        epsilon = ", ".join(f"{site} {value:.3f}" for site, value in sorted(result["epsilon"].items())) or "-"
        print(f"{name:22} {result['round_s']:10.1f}  {result['metric']:>14}  {epsilon}")


if __name__ == "__main__":
    main()
