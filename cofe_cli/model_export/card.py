"""The model card (README.md with Hub metadata) of an exported federation model: what it is, how it
was trained, how well it did, and with which software, so that a reader can trace it to its plan."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from cofe_cli.federation import Manifest
from cofe_cli.metrics import EPSILON_METRIC, headline_metric
from cofe_cli.participant import is_aggregator
from cofe_cli.plan.data import problem_type_of

VALIDATION_TASK = "aggregated_model_validation"


@dataclass(frozen=True)
class SiteFigure:
    site: str
    metric: str
    value: float


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def last_round_validation(metrics_rows: list[dict]) -> tuple[int | None, list[SiteFigure]]:
    """The global model's validation in the last round that has one: per site, and the aggregator's
    weighted mean (OpenFL weighs each site by its number of validation subjects)."""
    rows = [r for r in metrics_rows if r.get("task") == VALIDATION_TASK]
    if not rows:
        return None, []
    last = max(int(r["round"]) for r in rows)
    rows = [r for r in rows if int(r["round"]) == last]
    metric = headline_metric(sorted({r["metric"] for r in rows}))
    return last, [SiteFigure(r["collaborator"], r["metric"], float(r["value"])) for r in rows if r["metric"] == metric]


def _site_labels(collaborators: tuple[str, ...], name_sites: bool) -> dict[str, str]:
    # Site names can identify hospitals; a published card numbers them unless asked to name them.
    return {name: (name if name_sites else f"site {i}") for i, name in enumerate(collaborators, start=1)}


def _privacy_line(dp: dict | None, metrics_rows: list[dict], labels: dict[str, str]) -> str:
    if not dp:
        return "- privacy: no differential privacy, no secure aggregation; the aggregator saw every site's model updates"
    noise = f"target epsilon {dp['epsilon']:g}" if "epsilon" in dp else f"noise multiplier {dp['noise_multiplier']:g}"
    spent = {}
    for row in metrics_rows:  # the last round's value wins
        if row.get("metric") == EPSILON_METRIC and not is_aggregator(row["collaborator"]):
            spent[labels.get(row["collaborator"], "site")] = (int(row["round"]), float(row["value"]))
    figures = ", ".join(f"{site} {value:.3f}" for site, (_, value) in sorted(spent.items()))
    return (f"- privacy: DP-SGD at every site (Opacus, {noise}, max_grad_norm {dp['max_grad_norm']:g}, "
            f"{dp['accountant']} accountant); epsilon spent at delta {dp['delta']:g}: {figures or 'not recorded'}. "
            "Record-level DP of each site's updates, not of the architecture or of the sites' data sizes; "
            "no secure aggregation")


def model_card(*, manifest: Manifest, gandlf_config: dict, metrics_rows: list[dict], evaluation_rows: list[dict],
               files: list[str], name_sites: bool) -> str:
    model = gandlf_config.get("model") or {}
    architecture = model.get("architecture", "unknown")
    problem = problem_type_of(gandlf_config) or "a GaNDLF model"
    labels = _site_labels(manifest.collaborators, name_sites)
    last, figures = last_round_validation(metrics_rows)
    tags = ["gandlf", "federated-learning", "openfl", "cofe", "medical-imaging", architecture]
    lines = [
        "---",
        "library_name: GaNDLF",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "# license: set the licence under which you publish these weights before uploading (e.g. apache-2.0)",
        "---",
        "",
        f"# {manifest.name}: a federated {architecture} ({problem})",
        "",
        f"Trained with cofe over OpenFL by {len(manifest.collaborators)} sites that never shared "
        f"their data: {manifest.rounds} round(s) of {manifest.algorithm} aggregation, every site over gRPC with mutual TLS.",
        "",
        "## Provenance",
        "",
        f"- plan SHA-384: `{manifest.plan_sha384}`",
        f"- sites: {len(manifest.collaborators)}" + (f" ({', '.join(manifest.collaborators)})" if name_sites else ""),
        f"- rounds: {manifest.rounds}",
        f"- aggregation: {manifest.algorithm}",
        f"- model: {architecture}, {model.get('dimension', '?')}D, {model.get('num_channels', '?')} channel(s), "
        f"classes {model.get('class_list', '?')}, patch size {gandlf_config.get('patch_size', '?')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(manifest.versions.items())),
        _privacy_line(gandlf_config.get("differential_privacy"), metrics_rows, labels),
        "",
        "## Validation during training",
        "",
    ]
    if figures:
        lines += [f"The aggregated model of round {last + 1}, validated by each site on its own validation subjects:", "",
                  "| site | metric | value |", "|---|---|---|"]
        for figure in sorted(figures, key=lambda f: (is_aggregator(f.site), labels.get(f.site, f.site))):
            site = "**weighted mean**" if is_aggregator(figure.site) else labels.get(figure.site, "site")
            lines.append(f"| {site} | {figure.metric} | {figure.value:.4f} |")
    else:
        lines.append("No validation figures were recorded (results/metrics.csv is missing or empty).")
    if evaluation_rows:
        lines += ["", "## Federated evaluation (`cofe evaluate`)", "", "| site | subjects | metric | value | model |",
                  "|---|---|---|---|---|"]
        for row in evaluation_rows:
            site = row.get("site", "")
            shown = "**weighted mean**" if site == "weighted mean" else labels.get(site, site if name_sites else "evaluation site")
            lines.append(f"| {shown} | {row.get('subjects', '')} | {row.get('metric', '')} | {row.get('value', '')} | "
                         f"{row.get('model', '')} |")
    lines += [
        "",
        "## Files",
        "",
        *(f"- `{name}`" for name in files),
        "",
        "## Use",
        "",
        "With GaNDLF 0.1.5 (`pip install gandlf==0.1.5`), from a folder holding these files:",
        "",
        "    gandlf run -c config.yaml -i test.csv --infer -m . -o predictions",
        "",
        "GaNDLF reads the best model (`*_best.pth.tar`); `*_latest.pth.tar` is the final round's.",
        "",
    ]
    return "\n".join(lines)
