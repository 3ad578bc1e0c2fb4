"""`cofe evaluate`: every site measures a model on its own data, in one real evaluation round."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout
from cofe_cli.commands.run import check_timeout

MODELS = {"best": "save/best.pbuf", "final": "save/last.pbuf"}


def evaluate(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory (after `cofe run`)."),
    model: str = typer.Option("best", "--model", "-m", help="best, final, or a model file (.pbuf, .pt, GaNDLF .pth.tar)."),
    collaborator: list[str] = typer.Option(
        None, "--collaborator", "-C", show_default=False,
        help="NAME (a training site, its own data), or NAME=FOLDER|FILE.csv (other data, or a site that never trained). "
             "Repeat per site; default: every training site whose data is known here."),
    timeout: float = typer.Option(None, "--timeout", help="Stop if the evaluation is not done after this many seconds."),
) -> None:
    """Federated evaluation: each site validates the model on its data over gRPC with mutual TLS; a table, the weighted mean, results/evaluation.csv."""
    from cofe_cli.plan.evaluation import build_evaluation, parse_sites

    check_timeout(timeout)
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    source = _model_file(layout, model)
    import yaml

    from cofe_cli.plan.workspaces import GANDLF_FILE

    sites = parse_sites(layout, manifest, collaborator, yaml.safe_load((layout.plans / GANDLF_FILE).read_text()) or {})
    with tempfile.TemporaryDirectory(prefix=".cofe-evaluate-", dir=layout.root) as scratch:
        evaluated = Path(scratch) / "model.pbuf"
        with console.status(f"Checking the {model} model against the plan (first use imports torch)..."):
            from cofe_cli.engine.participant import quiet, write_evaluated_model

            with quiet():
                write_evaluated_model(layout.workspace(AGGREGATOR), source, evaluated)
        evaluation, eval_manifest, chosen = build_evaluation(layout, manifest, sites, evaluated)
    _run(layout, evaluation, eval_manifest, chosen, model=model if model in MODELS else str(source),
         plan_sha384=manifest.plan_sha384, timeout=timeout)


def _model_file(layout: FederationLayout, model: str) -> Path:
    if model in MODELS:
        path = layout.workspace(AGGREGATOR) / MODELS[model]
        if not path.is_file():
            raise CofeError(f"{layout.root} has no {model} model yet ({path} is missing)",
                            hint=f"train the federation first: `cofe run --dir {layout.root}`")
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        raise CofeError(f"--model {model}: no such file", hint="give best, final, or the path of a model file")
    return path.resolve()


def _run(layout, evaluation, eval_manifest, sites, *, model: str, plan_sha384: str, timeout: float | None) -> None:
    from cofe_cli.ports import check_port_free
    from cofe_cli.launch.processes import ProcessFederation
    from cofe_cli.launch.report import evaluation_rows, evaluation_table, write_evaluation
    from cofe_cli.launch.supervisor import supervise

    check_port_free(eval_manifest.aggregator_port)
    console.print(f"Evaluating the {model} model at {len(sites)} site(s) ({', '.join(s.name for s in sites)}) in one "
                  f"evaluation round (gRPC with mutual TLS on {eval_manifest.aggregator_address}:{eval_manifest.aggregator_port})...")
    started = time.monotonic()
    progress = supervise(ProcessFederation(evaluation, eval_manifest), evaluation, eval_manifest, console=console,
                         timeout=timeout)
    rows = evaluation_rows(progress, sites, model=model, plan_sha384=plan_sha384)
    if not rows:
        raise CofeError("the evaluation round reported no metrics",
                        hint=f"see the logs in {evaluation.workspaces}/*/logs")
    written = write_evaluation(layout, rows)
    console.print(evaluation_table(rows, sites))
    console.print(f"[green]Evaluation finished[/] in {time.monotonic() - started:.0f} s; written to {written}")
