"""`cofe demo`: a whole federation on built-in synthetic data, with nothing prepared."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.fsutil import atomic_write_text
from cofe_cli.plan.builder import dump_yaml

from cofe_cli.commands.init import InitRequest
from cofe_cli.commands.run import ContainerOptions, check_timeout, prepare, run_federation

DEMO_SITES = ("hospital_a", "hospital_b", "hospital_c")
CONTAINER_AGGREGATOR = "cofe-aggregator"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo(
    dir: Path = typer.Option(Path("cofe-demo"), "--dir", "-d", help="Where the demo's data, federation and results go."),
    sites: int = typer.Option(3, "--sites", "-s", min=1, max=len(DEMO_SITES) * 4, help="Number of simulated hospitals."),
    rounds: int = typer.Option(3, "--rounds", "-r", min=1, help="Federated rounds."),
    force: bool = typer.Option(False, "--force", help="Start over if the demo folder already holds a federation."),
    timeout: float = typer.Option(None, "--timeout", help="Stop everything if not done after this many seconds."),
    containers: bool = typer.Option(False, "--containers", help="Every participant in a container of cofe's image (see `cofe image build`)."),
    image: str = typer.Option(None, "--image", help="With --containers: the image (default: cofe:VERSION)."),
) -> None:
    """Generate a small synthetic brain-lesion dataset at several 'hospitals' and federate on it."""
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    check_timeout(timeout)
    root = Path(dir).expanduser().resolve()
    layout = FederationLayout(root)
    if layout.is_initialised() and not force:
        raise CofeError(f"{root} already holds a demo federation", hint="pass --force to start over, or `cofe run --dir {root} --restart`")
    names = [DEMO_SITES[i] if i < len(DEMO_SITES) else f"hospital_{i + 1}" for i in range(sites)]
    with console.status(f"Generating synthetic MRI-like volumes for {sites} hospitals..."):
        folders = make_demo_federation_data(root / "data", names)
    config_path = root / "gandlf_config.yaml"
    atomic_write_text(config_path, dump_yaml(demo_gandlf_config()))
    console.print(f"Data for {', '.join(names)} in {root / 'data'}; GaNDLF config {config_path}")
    # In containers the collaborators dial the aggregator's container by this name (also its certificate's).
    request = InitRequest(gandlf_config=config_path, collaborators=[f"{n}={folders[n]}" for n in names],
                          rounds=rounds, port=free_port(), force=force, name="cofe-demo",
                          aggregator_address=CONTAINER_AGGREGATOR if containers else "localhost")
    if force and layout.is_initialised():
        from cofe_cli.commands.init import initialise, report_initialised

        report_initialised(layout, initialise(layout, request), next_steps=False)
    run_federation(layout, prepare(layout, request), restart=True, timeout=timeout,
                   containers=ContainerOptions(image=image) if containers else None)
