"""`cofe start aggregator` / `cofe start collaborator NAME`: run one participant in this process."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import typer

from cofe_cli.console import console, print_error, warn_exposed_private_keys
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, check_initial_model
from cofe_cli.launch.factory import sigterm_as_ctrl_c
from cofe_cli.locks import launched_by_launcher, participant_locked
from cofe_cli.participant import Participant
from cofe_cli.pki.workspace_certs import require_certificates
from cofe_cli.plan.builder import check_device
from cofe_cli.plan.workspaces import aggregator_init_model, clear_aggregator_state, prepare_collaborator_data
from cofe_cli.ports import check_port_free

app = typer.Typer(help="Run one participant of a federation (aggregator or collaborator).", no_args_is_help=True)

_DIR = typer.Option(Path("."), "--dir", "-d", help="Federation (or site) directory.")
_CONTAINER = typer.Option(False, "--container", help="Run it in a container of cofe's image (see `cofe image build`).")
_IMAGE = typer.Option(None, "--image", help="With --container: the image to run (default: cofe:VERSION).")


@app.command("aggregator")
def aggregator(
    dir: Path = _DIR,
    restart: bool = typer.Option(False, "--restart", help="Discard the aggregator's saved state and train from round 0."),
    container: bool = _CONTAINER,
    image: str = _IMAGE,
) -> None:
    """Serve the federation's aggregator (gRPC, mutual TLS) until the last round is done."""
    _image_needs_container(image, container)
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    require_certificates(layout, manifest, AGGREGATOR)
    warn_exposed_private_keys(layout, manifest)
    this = layout.aggregator(manifest)
    check_initial_model(aggregator_init_model(this.workspace), manifest)
    with participant_locked(layout, AGGREGATOR):
        # Before OpenFL is loaded and parses the plan: a taken port is the likeliest reason not to start.
        check_port_free(manifest.aggregator_port)
        if restart:
            clear_aggregator_state(layout)
        if container:
            _run_in_container(layout, manifest, AGGREGATOR, image=image)
        _run_participant(this, lambda engine, ws: _serve_aggregator(engine, ws, layout, manifest))


def _serve_aggregator(engine, workspace: Path, layout: FederationLayout, manifest: Manifest) -> None:
    engine.serve_aggregator(workspace)
    if not launched_by_launcher():  # a launcher writes results/ itself, with what it measured besides
        from cofe_cli.launch.report import write_results_from_log

        console.print(f"Results in {write_results_from_log(layout, manifest)}")


@app.command("collaborator")
def collaborator(
    name: str = typer.Argument(..., help="The collaborator's name in the plan."),
    dir: Path = _DIR,
    data: Path = typer.Option(None, "--data", help="Folder with this site's GaNDLF train.csv and valid.csv (kept for later starts)."),
    device: str = typer.Option(None, "--device", help="Train on this device (cpu, cuda, cuda:1) instead of the plan's; the plan itself is unchanged."),
    container: bool = _CONTAINER,
    image: str = _IMAGE,
    gpus: str = typer.Option(None, "--gpus", help="With --container: GPUs to pass through (all, a count, or device=0,1); trains on cuda."),
) -> None:
    """Train and validate this site's data for the federation."""
    if device is not None:
        check_device(device)
    _image_needs_container(image, container)
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    manifest.require_collaborator(name)
    require_certificates(layout, manifest, name)
    warn_exposed_private_keys(layout, manifest)
    if gpus and not container:
        raise CofeError("--gpus goes with --container", hint="outside a container pass --device cuda to train on this machine's GPU")
    with participant_locked(layout, name):
        prepare_collaborator_data(layout, name, data)
        if container:
            _run_in_container(layout, manifest, name, image=image, gpus=gpus, device=device)
        _run_participant(layout.participant(name, manifest), lambda engine, ws: engine.run_collaborator(ws, name, device=device))


@app.command("worker", hidden=True)
def worker(
    sites: str = typer.Option(..., "--sites", help="The collaborators to run in this process, comma-separated."),
    dir: Path = _DIR,
    device: str = typer.Option(None, "--device", help="Train on this device (cpu, cuda, cuda:1) instead of the plan's."),
) -> None:
    """Run several collaborators of the federation in this one process (what `cofe run --workers N` starts)."""
    if device is not None:
        check_device(device)
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    names = [name for name in sites.split(",") if name]
    if not names:
        raise CofeError("--sites names no collaborator", hint="e.g. --sites site_a,site_b")
    for name in names:
        manifest.require_collaborator(name)
    for name in names:
        require_certificates(layout, manifest, name)
    warn_exposed_private_keys(layout, manifest)
    with contextlib.ExitStack() as held:
        for name in names:
            held.enter_context(participant_locked(layout, name))
            prepare_collaborator_data(layout, name, None)
        from cofe_cli.engine.shared_worker import run_sites

        sigterm_as_ctrl_c()  # a launcher's stop is a Ctrl-C
        try:
            code = run_sites([layout.participant(name, manifest) for name in names], device=device)
        except KeyboardInterrupt:
            print_error(f"{', '.join(names)} stopped before the federation finished")
            code = 130
    _exit(code)  # every site already said how it ended, in its own log


def _image_needs_container(image: str | None, container: bool) -> None:
    if image is not None and not container:
        raise CofeError("--image goes with --container", hint="add --container, or leave --image out")


def _run_in_container(layout: FederationLayout, manifest: Manifest, participant: str, *, image: str | None,
                      gpus: str | None = None, device: str | None = None) -> None:
    """One participant in a container; its output shows here, Ctrl-C stops and removes it."""
    from cofe_cli.launch.containers import ContainerFederation
    from cofe_cli.launch.docker_engine import DEFAULT_IMAGE

    image = image or DEFAULT_IMAGE
    # The aggregator's port is published: collaborators outside this engine dial it on this host.
    publish = layout.participant(participant).is_aggregator
    launcher = ContainerFederation(layout, manifest, image=image, participants=[participant], gpus=gpus, device=device,
                                   publish_port=publish, echo=True)
    where = f", port {manifest.aggregator_port} published on this host" if publish else ""
    console.print(f"Starting {participant} in a container of {image}{where}...")
    sigterm_as_ctrl_c()
    code = 130
    try:
        launcher.start()
        while (code := launcher.states()[participant].returncode) is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        launcher.stop()
        print_error(f"{participant} stopped before the federation finished")
        code = 130
    finally:
        launcher.stop()
    sys.exit(code)  # the container already said how it ended


def _run_participant(this: Participant, body) -> None:
    from cofe_cli.engine import participant as engine

    engine.enter_workspace(this)
    workspace, participant = this.workspace, this.name
    sigterm_as_ctrl_c()  # a launcher's stop is a Ctrl-C
    log = logging.getLogger("cofe")
    try:
        body(engine, workspace)
    except KeyboardInterrupt:
        print_error(f"{participant} stopped before the federation finished")
        _exit(130)
    except CofeError as error:  # a refusal (port taken, certificate revoked, ...): its one line says it all
        log.error("%s", error, exc_info=True, extra={engine.FILE_ONLY: True})
        print_error(error.message, error.hint)
        _exit(error.exit_code)
    except Exception as exc:
        log.exception("%s failed", participant, extra={engine.FILE_ONLY: True})
        print_error(f"{participant} failed: {type(exc).__name__}: {exc}", f"full log: {this.log_file}")
        _exit(1)
    console.print(f"[green]{participant} finished[/]")
    _exit(0)


def _exit(code: int) -> None:
    # gRPC and torch leave non-daemon threads behind; the federation is over, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
