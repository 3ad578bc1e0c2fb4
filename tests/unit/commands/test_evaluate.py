"""`cofe evaluate` refuses bad input before anything heavy starts; the evaluation plan is the training
plan with OpenFL's `evaluation` task group selected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cli_assertions import refused
from cofe_cli.plan.builder import PlanOptions, build_plan
from cofe_cli.plan.evaluation import evaluation_plan
from cofe_cli.plan.workspaces import CollaboratorData
from unit_federation import gandlf_config, write_federation


@pytest.fixture
def fed(tmp_path):
    data = tmp_path / "site_a_data"
    data.mkdir()
    return write_federation(tmp_path / "fed", config=gandlf_config(), address="localhost",
                            collaborators=[CollaboratorData("site_a", data), CollaboratorData("site_b", None)]).root


def cofe(*args):
    return subprocess.run([sys.executable, "-m", "cofe_cli", "evaluate", *map(str, args)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def test_evaluation_plan_selects_the_evaluation_group_only():
    training = build_plan(gandlf_config(), PlanOptions(rounds=5, aggregator_address="localhost", aggregator_port=50051))
    plan = evaluation_plan(training)
    assigner = plan["assigner"]["settings"]
    assert assigner["selected_task_group"] == "evaluation"
    assert {"name": "evaluation", "percentage": 1.0, "tasks": ["aggregated_model_validation"]} in assigner["task_groups"]
    assert plan["aggregator"]["settings"]["rounds_to_train"] == 1
    assert training["assigner"]["settings"].get("selected_task_group") is None  # the training plan is untouched
    assert evaluation_plan(plan) == plan  # derived once, however often


def test_refused_before_any_model_exists(fed):
    refused(cofe("--dir", fed), "has no best model yet")
    refused(cofe("--dir", fed, "--model", "final"), "has no final model yet")
    assert not (fed / "evaluation").exists()


def test_bad_models_and_sites(fed, tmp_path):
    (fed / "workspaces" / "aggregator" / "save" / "best.pbuf").write_bytes(b"model")
    refused(cofe("--dir", fed, "--model", tmp_path / "missing.pt"), "no such file")
    refused(cofe("--dir", fed, "--collaborator", "site_z"), "did not train in this federation")
    refused(cofe("--dir", fed, "--collaborator", "site_b"), "site_b's data is not known on this machine")
    refused(cofe("--dir", fed, "--collaborator", "site_a", "--collaborator", "site_a"), "given twice")
    refused(cofe("--dir", fed, "--collaborator", "site_c="), "empty data path")
    refused(cofe("--dir", fed, "--collaborator", "Site_C=/x"), "not a safe name")
    refused(cofe("--dir", fed, "--timeout", "0"), "--timeout must be a positive number of seconds")
    assert not (fed / "evaluation").exists()


def test_no_known_data_is_one_clear_line(tmp_path):
    fed = write_federation(tmp_path / "fed", config=gandlf_config(), address="localhost",
                           collaborators=[CollaboratorData("site_b", None)]).root
    (fed / "workspaces" / "aggregator" / "save" / "best.pbuf").write_bytes(b"model")
    refused(cofe("--dir", fed), "no site's data is known here")


# ---------------------------------------------------------------- cofe infer


def infer(*args):
    return subprocess.run([sys.executable, "-m", "cofe_cli", "infer", *map(str, args)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def _trained(fed):
    import yaml

    model_dir = fed / "results" / "gandlf_model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(gandlf_config()))
    (model_dir / "resunet_best.pth.tar").write_bytes(b"weights")


def _csv(folder, channels: int):
    from volumes import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    images = [str(write_volume(folder / f"s1_{i}.nii.gz")) for i in range(channels)]
    label = write_volume(folder / "s1_seg.nii.gz")
    header = ",".join(["SubjectID", *(f"Channel_{i}" for i in range(channels)), "Label"])
    path = folder / "test.csv"
    path.write_text(f"{header}\ns1,{','.join(images)},{label}\n")
    return path


def test_infer_refuses_bad_input_before_any_work(fed, tmp_path):
    data = _csv(tmp_path / "one_channel", 1)
    refused(infer("--dir", fed, "--data", data, "--out", tmp_path / "out"), "has no trained model yet")
    _trained(fed)
    refused(infer("--dir", fed, "--data", data, "--out", tmp_path / "out", "--model", "final"), "no final model")
    refused(infer("--dir", fed, "--data", data, "--out", tmp_path / "out", "--model", tmp_path / "x.pth.tar"),
            "no such file")
    refused(infer("--dir", fed, "--data", data.parent, "--out", tmp_path / "out"), "is a folder")
    refused(infer("--dir", fed, "--data", _csv(tmp_path / "two_channels", 2), "--out", tmp_path / "out"),
            "image channel column(s) but the model expects 1")
    refused(infer("--dir", fed, "--data", data, "--out", tmp_path / "out", "--validation-norm", "batch"),
            "--validation-norm must be input or running")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    refused(infer("--dir", fed, "--data", data, "--out", existing), "already exists")
    assert (existing / "mine.txt").read_text() == "keep" and not (tmp_path / "out").exists()
