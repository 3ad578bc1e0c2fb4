"""`cofe export model --format hf`: packaging, model card and every refusal, through the real CLI.

The checkpoint here is a stand-in file: packaging only copies it (tests/integration/test_model_out.py
packages a real federation's model, exports ONNX and scans the package)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import yaml

from cli_assertions import ok, refused
from cofe_cli.plan.workspaces import CollaboratorData
from unit_federation import gandlf_config, write_federation

SITES = ("hospital_a", "hospital_b")


@pytest.fixture
def fed(tmp_path):
    layout = write_federation(tmp_path / "fed", config=gandlf_config(), address="localhost",
                              collaborators=[CollaboratorData(name, None) for name in SITES])
    return layout.root


def trained(fed):
    model_dir = fed / "results" / "gandlf_model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(gandlf_config()))
    (model_dir / "resunet_best.pth.tar").write_bytes(b"weights")
    (model_dir / "resunet_latest.pth.tar").write_bytes(b"weights")
    (model_dir / "output_inference").mkdir()  # what GaNDLF's inference leaves there: never packaged
    rows = ["round,collaborator,task,metric,value"]
    for round_number, values in ((0, (0.2, 0.4, 0.3)), (1, (0.6, 0.8, 0.7))):
        for who, value in zip((*SITES, "aggregator"), values):
            rows.append(f"{round_number},{who},aggregated_model_validation,valid_dice,{value}")
            rows.append(f"{round_number},{who},aggregated_model_validation,valid_loss,{1 - value}")
    (fed / "results" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return fed


def cofe(*args, home=None, **env):
    # A token of the machine's own must not reach the tests; the ones that need a token pass it.
    environment = {**{k: v for k, v in os.environ.items() if k != "HF_TOKEN"}, "NO_COLOR": "1", "COLUMNS": "200", **env}
    if home:
        environment["HOME"] = str(home)
        environment["HF_HOME"] = str(home / "hf")
    return subprocess.run([sys.executable, "-m", "cofe_cli", "export", "model", *map(str, args)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=environment)


def test_package_holds_the_model_and_a_card_with_provenance(fed, tmp_path):
    trained(fed)
    out = tmp_path / "package"
    ok(cofe("--dir", fed, "--out", out))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cofe_provenance.json", "config.yaml",
                                                    "resunet_best.pth.tar", "resunet_latest.pth.tar"]
    card = (out / "README.md").read_text()
    manifest = yaml.safe_load((fed / "plans" / "federation.yaml").read_text())
    assert card.startswith("---\nlibrary_name: GaNDLF\ntags:\n")
    assert manifest["plan_sha384"] in card
    assert "round 2" in card and "| **weighted mean** | valid_dice | 0.7000 |" in card
    assert "| site 1 | valid_dice | 0.6000 |" in card and "| site 2 | valid_dice | 0.8000 |" in card
    assert "hospital_a" not in card and "hospital_b" not in card


def test_sites_are_named_only_when_asked(fed, tmp_path):
    trained(fed)
    ok(cofe("--dir", fed, "--out", tmp_path / "package", "--name-sites"))
    card = (tmp_path / "package" / "README.md").read_text()
    assert "| hospital_a | valid_dice | 0.6000 |" in card and "(hospital_a, hospital_b)" in card


def test_evaluation_results_reach_the_card(fed, tmp_path):
    trained(fed)
    (fed / "results" / "evaluation.csv").write_text(
        "site,subjects,metric,value,model,plan_sha384\nhospital_c,4,valid_dice,0.55,best,abc\n")
    ok(cofe("--dir", fed, "--out", tmp_path / "package"))
    assert "| evaluation site | 4 | valid_dice | 0.55 | best |" in (tmp_path / "package" / "README.md").read_text()


def test_refused_before_any_model_exists(fed, tmp_path):
    refused(cofe("--dir", fed, "--out", tmp_path / "package"), "no trained model yet")
    assert not (tmp_path / "package").exists()


def test_an_existing_out_is_kept_without_force(fed, tmp_path):
    trained(fed)
    out = tmp_path / "package"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    refused(cofe("--dir", fed, "--out", out), "already exists")
    assert (out / "mine.txt").read_text() == "keep"
    ok(cofe("--dir", fed, "--out", out, "--force"))
    assert not (out / "mine.txt").exists()


@pytest.mark.parametrize("inside", ["", "results", "plans", "workspaces/hospital_a", ".."])
def test_out_never_replaces_the_federation(fed, inside):
    trained(fed)
    target = (fed / inside).resolve()
    refused(cofe("--dir", fed, "--out", target, "--force"), "would replace the federation")
    assert (fed / "plans" / "federation.yaml").is_file() and (fed / "results" / "gandlf_model").is_dir()


def test_bad_arguments(fed, tmp_path):
    trained(fed)
    refused(cofe("--dir", fed, "--out", tmp_path / "p", "--format", "zip"), "unknown --format")
    refused(cofe("--dir", fed), "nowhere to write the package")
    refused(cofe("--dir", fed, "--push", "not a repo!"), "is not a Hugging Face repository id")
    refused(cofe("--dir", fed, "--push", "justname"), "names no owner")


def test_push_without_a_token_is_one_clear_line(fed, tmp_path):
    trained(fed)
    refused(cofe("--dir", fed, "--push", "my-lab/model", home=tmp_path / "home"), "no Hugging Face token")


def test_push_to_an_unreachable_hub_is_one_clear_line(fed, tmp_path):
    trained(fed)
    with socket.socket() as closed:  # a port nobody listens on: the upload's first request is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = cofe("--dir", fed, "--push", "my-lab/model", home=tmp_path / "home", HF_TOKEN="hf_test",
                  HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    refused(result, "could not upload to the Hugging Face Hub")


def test_the_card_states_the_privacy_applied_and_each_sites_epsilon():
    from cofe_cli.federation import Manifest
    from cofe_cli.model_export.card import model_card
    from cofe_cli.plan.gandlf_config import normalise_gandlf_config

    manifest = Manifest(name="t", collaborators=("site_a", "site_b"), rounds=2, aggregator_address="localhost",
                        aggregator_port=50051, algorithm="fedavg", plan_sha384="0" * 96, versions={})
    rows = [{"round": str(r), "collaborator": site, "task": "train", "metric": "epsilon", "value": str(value)}
            for r, site, value in ((0, "site_a", 1.0), (1, "site_a", 1.5), (1, "site_b", 2.25))]
    config = normalise_gandlf_config({**gandlf_config(), "differential_privacy": {"noise_multiplier": 1.1}})
    card = model_card(manifest=manifest, gandlf_config=config, metrics_rows=rows, evaluation_rows=[], files=[],
                      name_sites=True)
    assert "DP-SGD at every site (Opacus, noise multiplier 1.1, max_grad_norm 1, rdp accountant)" in card
    assert "epsilon spent at delta 1e-05: site_a 1.500, site_b 2.250" in card
    plain = model_card(manifest=manifest, gandlf_config=gandlf_config(), metrics_rows=[], evaluation_rows=[], files=[],
                       name_sites=True)
    assert "privacy: no differential privacy" in plain
