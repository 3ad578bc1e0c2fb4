"""`cofe demo`: a whole federation on built-in synthetic data, with nothing prepared."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from cofe_cli.commands import launch_options as options
from cofe_cli.commands.reports import report_finished, report_initialised, report_prepared
from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.fsutil import atomic_write_text, writing_into
from cofe_cli.init_pipeline import InitRequest, initialise
from cofe_cli.launch.factory import ContainerOptions, check_timeout
from cofe_cli.launch.federation_run import prepare, run_federation
from cofe_cli.launch.workers import check_workers
from cofe_cli.plan.builder import check_rounds, dump_yaml, validation_options
from cofe_cli.plan.workspaces import collaborator_data_folder

DEMO_SITES = ("hospital_a", "hospital_b", "hospital_c")
DEMO_NAME = "cofe-demo"
# FeTS trained across 71 hospitals; a simulation of that size (with --workers) fits this bound.
MAX_DEMO_SITES = 100
CONTAINER_AGGREGATOR = "cofe-aggregator"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo(
    dir: Path = typer.Option(Path("cofe-demo"), "--dir", "-d", help="Where the demo's data, federation and results go."),
    sites: int = typer.Option(3, "--sites", "-s", help="Number of simulated hospitals (many: add --workers)."),
    rounds: int = typer.Option(3, "--rounds", "-r", min=1, help="Federated rounds."),
    force: bool = typer.Option(False, "--force", help="Start over if the demo folder already holds a federation."),
    timeout: float = typer.Option(None, "--timeout", help="Stop everything if not done after this many seconds."),
    validation_batch: str = options.VALIDATION_BATCH,
    local_validation: str = options.LOCAL_VALIDATION,
    containers: bool = typer.Option(False, "--containers", help="Every participant in a container of cofe's image (see `cofe image build`)."),
    image: str = typer.Option(None, "--image", help="With --containers: the image (default: cofe:VERSION)."),
    workers: int = options.WORKERS,
) -> None:
    """Generate a small synthetic brain-lesion dataset at several 'hospitals' and federate on it."""
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_demo_federation_data

    check_timeout(timeout)
    root = Path(dir).expanduser().resolve()
    layout = FederationLayout(root)
    check_rounds(rounds)
    if not 1 <= sites <= MAX_DEMO_SITES:
        raise CofeError(f"--sites must be between 1 and {MAX_DEMO_SITES}, got {sites}",
                        hint="many sites share a few processes with --workers, e.g. --sites 33 --workers 2")
    validation_options(validation_batch, local_validation)
    if image is not None and not containers:
        raise CofeError("--image goes with --containers", hint="add --containers, or leave --image out")
    check_workers(workers, sites, containers=containers)
    check_demo_folder(layout, force=force)
    names = [DEMO_SITES[i] if i < len(DEMO_SITES) else f"hospital_{i + 1}" for i in range(sites)]
    with writing_into(root):  # a demo that fails before its federation runs leaves no folder of its own behind
        with console.status(f"Generating synthetic MRI-like volumes for {sites} hospitals..."):
            folders = make_demo_federation_data(root / "data", names)
        config_path = root / "gandlf_config.yaml"
        atomic_write_text(config_path, dump_yaml(demo_gandlf_config()))
        console.print(f"Data for {', '.join(names)} in {root / 'data'}; GaNDLF config {config_path}")
        # In containers the collaborators dial the aggregator's container by this name (also its certificate's).
        request = InitRequest(gandlf_config=config_path, collaborators=[f"{n}={folders[n]}" for n in names],
                              rounds=rounds, port=free_port(), force=force, name=DEMO_NAME,
                              validation_batch=validation_batch, local_validation=local_validation,
                              aggregator_address=CONTAINER_AGGREGATOR if containers else "localhost")
        if force and layout.is_initialised():
            report_initialised(layout, initialise(layout, request), next_steps=False)
        prepared = prepare(layout, request)
        report_prepared(layout, prepared)
    report_finished(run_federation(layout, prepared.manifest, console=console, restart=True, timeout=timeout,
                                   containers=ContainerOptions(image=image) if containers else None, workers=workers))


# What a demo folder holds: anything else there is someone's, and the demo does not write over it.
DEMO_ENTRIES = frozenset({"data", "gandlf_config.yaml", "plans", "workspaces", "ca", "results"})


def check_demo_folder(layout: FederationLayout, *, force: bool) -> None:
    """The demo writes only into a new or empty folder or an earlier demo's, never over a user's federation."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise CofeError(f"--dir {root} is a file, not a folder", hint="give the demo a folder (it is made if missing), e.g. --dir cofe-demo")
    if layout.is_initialised():
        manifest = layout.load_manifest()
        data_folders = [collaborator_data_folder(layout, name) for name in manifest.collaborators]
        if manifest.name != DEMO_NAME or not all(folder and (root / "data") in folder.parents for folder in data_folders):
            raise CofeError(f"{root} holds the federation {manifest.name} ({len(manifest.collaborators)} collaborator(s): "
                            f"{', '.join(manifest.collaborators)}), not a cofe demo",
                            hint="give the demo a folder of its own, e.g. --dir cofe-demo (--force does not replace a federation that is not a demo)")
        if not force:
            raise CofeError(f"{root} already holds a demo federation",
                            hint=f"pass --force to start over, or `cofe run --dir {root} --restart` to train it again")
        return
    foreign = sorted(entry.name for entry in root.iterdir() if entry.name not in DEMO_ENTRIES) if root.is_dir() else []
    if foreign:
        raise CofeError(f"{root} holds files that are not a cofe demo's ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})",
                        hint="give the demo a new or empty folder, e.g. --dir cofe-demo")
