"""`cofe export model`: the trained model as a package for the Hugging Face Hub, and its upload."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.markup import escape

from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout

FORMATS = ("hf",)


def export_model(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory (after `cofe run`)."),
    format: str = typer.Option("hf", "--format", help="hf: a folder in the layout of GaNDLF's Hugging Face integration, with a model card."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder to write (must not exist; --force replaces it)."),
    push: str = typer.Option(None, "--push", help="Upload the package to this Hub model repository (ORG/NAME)."),
    token: str = typer.Option(None, "--token", help="With --push: a Hub write token (default: HF_TOKEN, or huggingface-cli login's)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also export the best model to ONNX (through GaNDLF's own exporter)."),
    name_sites: bool = typer.Option(False, "--name-sites", help="Name the sites in the model card (default: numbered, as site names can identify hospitals)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Package the trained model with its provenance for the Hugging Face Hub (and upload it with --push)."""
    from cofe_cli.model_export.hub import check_repo_id, package_for_hub
    from cofe_cli.model_export.hub import push as push_package

    if format not in FORMATS:
        raise CofeError(f"unknown --format {format!r}", hint=f"use one of: {', '.join(FORMATS)}")
    if push:
        check_repo_id(push)
    if out is None and not push:
        raise CofeError("nowhere to write the package", hint="give --out FOLDER, or --push ORG/NAME to upload it")
    layout = FederationLayout(dir)
    with tempfile.TemporaryDirectory(prefix="cofe-hub-") as scratch:
        target = out if out is not None else Path(scratch) / "package"
        if onnx:
            console.print("Exporting the best model to ONNX with GaNDLF (first use imports torch)...")
        package = package_for_hub(layout, target, force=force, onnx=onnx, name_sites=name_sites)
        if out is not None:
            console.print(f"[green]Model package[/] in {escape(str(package.path))}: {escape(', '.join(package.files))}")
            console.print("Set the licence in its README.md before publishing.")
        if push:
            console.print(f"Uploading to the Hugging Face Hub as {escape(push)}...")
            url = push_package(package.path, push, token=token)
            console.print(f"[green]Uploaded[/]: {escape(url)}")
