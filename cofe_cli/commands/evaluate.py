"""`cofe evaluate`: every site measures a model on its own data, in one real evaluation round."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from cofe_cli.commands import launch_options as options
from cofe_cli.console import console
from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, FederationLayout
from cofe_cli.launch.factory import check_timeout, container_options_of, slurm_options_of
from cofe_cli.locks import federation_locked

MODELS = {"best": "save/best.pbuf", "final": "save/last.pbuf"}


def evaluate(
    dir: Path = typer.Option(Path("."), "--dir", "-d", help="Federation directory (after `cofe run`)."),
    model: str = typer.Option("best", "--model", "-m", help="best, final, or a model file (.pbuf, .pt, GaNDLF .pth.tar)."),
    collaborator: list[str] = typer.Option(
        None, "--collaborator", "-C", show_default=False,
        help="NAME (a training site, its own data), or NAME=FOLDER|FILE.csv (other data, or a site that never trained). "
             "Repeat per site; default: every training site whose data is known here."),
    timeout: float = options.TIMEOUT,
    containers: bool = options.CONTAINERS,
    image: str = options.IMAGE,
    slurm: bool = options.SLURM,
    partition: str = options.PARTITION,
    account: str = options.ACCOUNT,
    time_limit: str = options.TIME_LIMIT,
    mem_per_site: str = options.MEM_PER_SITE,
    cpus_per_site: int = options.CPUS_PER_SITE,
    sbatch_arg: list[str] = options.SBATCH_ARG,
) -> None:
    """Federated evaluation: each site validates the model on its data over gRPC with mutual TLS; a table, the weighted mean, results/evaluation.csv."""
    from cofe_cli.plan.evaluation import build_evaluation, parse_sites

    check_timeout(timeout)
    container_options = container_options_of(containers, image=image, gpus=None)
    slurm_options = slurm_options_of(slurm, containers, partition=partition, account=account, time=time_limit,
                                     mem_per_site=mem_per_site, cpus_per_site=cpus_per_site, sbatch_args=tuple(sbatch_arg or ()))
    layout = FederationLayout(dir)
    manifest = layout.load_manifest()
    source = _model_file(layout, model)
    sites = parse_sites(layout, manifest, collaborator)
    # The trained federation stays as it is, but nothing may train in it (or use its port) meanwhile; the
    # evaluation's own participants are launched under its lock, as `cofe run` launches a federation's.
    with federation_locked(layout):
        with tempfile.TemporaryDirectory(prefix=".cofe-evaluate-", dir=layout.root) as scratch:
            evaluated = source
            if model not in MODELS:  # best and final are this plan's aggregator's own: nothing to check
                evaluated = Path(scratch) / "model.pbuf"
                with console.status(f"Checking {source.name} against the plan (imports torch)..."):
                    from cofe_cli.engine.participant import quiet, write_evaluated_model

                    with quiet():
                        write_evaluated_model(layout.workspace(AGGREGATOR), source, evaluated)
            evaluation, eval_manifest, chosen = build_evaluation(layout, manifest, sites, evaluated)
        with federation_locked(evaluation):
            _run(layout, evaluation, eval_manifest, chosen, model=model if model in MODELS else str(source),
                 plan_sha384=manifest.plan_sha384, timeout=timeout, containers=container_options, slurm=slurm_options)


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


def _run(layout, evaluation, eval_manifest, sites, *, model: str, plan_sha384: str, timeout: float | None,
         containers, slurm) -> None:
    from cofe_cli.launch.factory import make_launcher
    from cofe_cli.launch.report import evaluation_rows, evaluation_table, write_evaluation
    from cofe_cli.launch.supervisor import supervise

    console.print(f"Evaluating the {model} model at {len(sites)} site(s) ({', '.join(s.name for s in sites)}) in one "
                  "evaluation round (aggregated_model_validation only: no training, no model update)")
    launcher = make_launcher(evaluation, eval_manifest, containers=containers, slurm=slurm, say=console.print)
    started = time.monotonic()
    progress = supervise(launcher, evaluation, eval_manifest, console=console, timeout=timeout)
    rows = evaluation_rows(progress, sites, model=model, plan_sha384=plan_sha384)
    if not rows:
        raise CofeError("the evaluation round reported no metrics",
                        hint=f"see the logs in {evaluation.workspaces}/*/logs")
    written = write_evaluation(layout, rows)
    console.print(evaluation_table(rows, sites))
    console.print(f"[green]Evaluation finished[/] in {time.monotonic() - started:.0f} s; written to {written}")
