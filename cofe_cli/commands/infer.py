"""`cofe infer`: GaNDLF's inference on a CSV with the trained model and the federation's instance-norm choice."""

from __future__ import annotations

import time
from pathlib import Path

import typer
import yaml
from rich.markup import escape

from cofe_cli.console import console
from cofe_cli.engine.gandlf_model import BEST_SUFFIX, CONFIG_FILE, LATEST_SUFFIX, MODEL_DIR  # names only: no torch
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, task_runner_settings
from cofe_cli.fsutil import staged_dir

CHECKPOINTS = {"best": BEST_SUFFIX, "final": LATEST_SUFFIX}
NORMS = ("input", "running")


def infer(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory (after `cofe run`)."),
    data_csv: Path = typer.Option(..., "--data", help="GaNDLF CSV of the subjects (SubjectID,Channel_0,...[,Label]).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the predictions (must not exist; --force replaces it).", show_default=False),
    model: str = typer.Option("best", "--model", "-m", help="best, final, or a GaNDLF checkpoint (.pth.tar) of this plan."),
    validation_norm: str = typer.Option(None, "--validation-norm", help="input or running instance-norm statistics (default: the federation's choice)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Predict with the trained model, as the federation validated it: masks per subject, metrics when the CSV has labels."""
    from cofe_cli.plan.data import check_csv, problem_type_of

    layout = FederationLayout(dir)
    layout.load_manifest()
    model_dir = layout.results / MODEL_DIR
    config_file = model_dir / CONFIG_FILE
    if not config_file.is_file():
        raise CofeError(f"{layout.root} has no trained model yet ({model_dir} is missing)",
                        hint=f"train the federation first: `cofe run --dir {layout.root}`")
    config = yaml.safe_load(config_file.read_text()) or {}
    checkpoint = _checkpoint(model_dir, config, model)
    settings = task_runner_settings(layout)
    norm = validation_norm or settings.get("instance_norm_statistics", "running")
    differential_privacy = (settings.get("gandlf_config") or {}).get("differential_privacy") or None
    if differential_privacy:
        # Opacus's fix turned the instance norms' running statistics off: a DP-trained model has none, and
        # normalised with each input's own in training and validation alike.
        if validation_norm == "running":
            raise CofeError("--validation-norm running: a model trained with differential privacy has no running "
                            "instance-norm statistics (Opacus turns them off)", hint="leave out --validation-norm")
        norm = "input"
    if norm not in NORMS:
        raise CofeError(f"--validation-norm must be input or running, not {norm!r}", hint="e.g. --validation-norm input")
    data_csv = data_csv.expanduser()
    if data_csv.is_dir():
        raise CofeError(f"--data {data_csv} is a folder", hint=f"give the CSV itself, e.g. --data {data_csv / 'valid.csv'}")
    check_csv(data_csv, problem_type=problem_type_of(config), channels=(config.get("model") or {}).get("num_channels"))
    out = out.expanduser().resolve()
    if out.exists() and not force:
        raise CofeError(f"{out} already exists", hint="pass --force to replace it, or choose another --out")
    started = time.monotonic()
    with staged_dir(out) as stage:
        with console.status(f"GaNDLF inference with the {model} model ({norm} instance-norm statistics)..."):
            from cofe_cli.engine.gandlf_model import infer as run_inference
            from cofe_cli.engine.participant import quiet

            with quiet():
                metrics = run_inference(checkpoint, config_file, data_csv.resolve(), stage, instance_norm_statistics=norm,
                                        differential_privacy=differential_privacy)
    masks = sorted(out.rglob("*_seg*"))
    console.print(f"[green]Predictions[/] for {len(masks)} subject(s) in {escape(str(out))} "
                  f"({time.monotonic() - started:.0f} s, {norm} instance-norm statistics)")
    for name, value in metrics.items():
        console.print(f"  {name}: {value:.4f}")


def _checkpoint(model_dir: Path, config: dict, model: str) -> Path:
    if model in CHECKPOINTS:
        path = model_dir / f"{(config.get('model') or {}).get('architecture', '')}{CHECKPOINTS[model]}"
        if not path.is_file():
            raise CofeError(f"no {model} model in {model_dir}", hint="train the federation to its end: `cofe run`")
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        raise CofeError(f"--model {model}: no such file", hint="give best, final, or a GaNDLF checkpoint (.pth.tar)")
    return path.resolve()
