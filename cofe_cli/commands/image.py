"""`cofe image build`: the one container image every participant runs (`--container`, `--containers`)."""

from __future__ import annotations

from pathlib import Path

import typer

from cofe_cli.console import console
from cofe_cli.errors import CofeError

app = typer.Typer(help="The container image every participant runs.", no_args_is_help=True)


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


@app.command("build")
def build(
    base_image: str = typer.Option(None, "--base-image", help="Base image with Debian's userland and Python 3.10-3.12 (default: python:3.11-slim)."),
    extra_ca_bundle: Path = typer.Option(None, "--extra-ca-bundle", help="PEM file of extra CA certificates to trust while building and running (a TLS-intercepting proxy's)."),
    tag: str = typer.Option(None, "--tag", "-t", help="Image name (default: cofe:VERSION, what --container runs)."),
    source: Path = typer.Option(None, "--source", help="A clone of cofe's repository to build (default: the clone you are in, else the installed cofe's own files)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild every layer (downloads the dependencies again)."),
) -> None:
    """Build the image from cofe's Dockerfile: cofe, OpenFL, GaNDLF and torch (~3.5 GB of downloads the first time)."""
    from cofe_cli.launch.docker_engine import DEFAULT_BASE_IMAGE, DEFAULT_IMAGE, build_source, connect

    if extra_ca_bundle is not None and not extra_ca_bundle.expanduser().is_file():
        raise CofeError(f"no CA bundle at {extra_ca_bundle}", hint="give a PEM file, e.g. /usr/local/share/ca-certificates/proxy.crt")
    with build_source(source) as root:
        client = connect()
        _build(client, root, tag=tag or DEFAULT_IMAGE, base_image=base_image or DEFAULT_BASE_IMAGE,
               extra_ca_bundle=extra_ca_bundle, no_cache=no_cache)


def _build(client, root: Path, *, tag: str, base_image: str, extra_ca_bundle: Path | None, no_cache: bool) -> None:
    from cofe_cli.launch.docker_engine import build_failure, build_image

    console.print(f"Building {tag} from {root / 'Dockerfile'} on base {base_image}"
                  + (f", trusting the CAs in {extra_ca_bundle}" if extra_ca_bundle else "") + "...")
    with console.status("starting the build...") as status:
        def show(line: str) -> None:
            if line.startswith("Step "):
                status.update(line[:120])
        try:
            built = build_image(client, source=root, tag=tag, base_image=base_image,
                                extra_ca_bundle=extra_ca_bundle.expanduser() if extra_ca_bundle else None,
                                no_cache=no_cache, on_line=show)
        except CofeError:
            raise
        except Exception as exc:
            raise build_failure(exc) from None
    console.print(f"[green]Built {built.tag}[/] ({_size(built.size)}) in {built.seconds:.0f} s. "
                  f"Run a federation in it: `cofe run --dir FED --containers`")
