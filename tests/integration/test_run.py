"""`cofe run`: the whole federation as separate processes on this machine."""

from __future__ import annotations

import csv
import math
import os
import socket
import time

import psutil
import pytest

from federation_helpers import SITES, cofe, cofe_background, collaborator_args, free_port, processes_using

pytestmark = pytest.mark.federation
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")


def test_run_finishes_with_metrics_and_models(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    result = cofe("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data),
                  "--rounds", 2, "--port", free_port(), "--timeout", 900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Federation summary" in result.stdout

    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for site in SITES:
        for round_number in (0, 1):
            for task in TASKS:
                values = [float(r["value"]) for r in rows
                          if r["collaborator"] == site and r["round"] == str(round_number) and r["task"] == task]
                assert values and all(math.isfinite(v) for v in values), (site, round_number, task)
    assert any(r["collaborator"] == "aggregator" for r in rows)

    import torch

    from cofe_cli.engine.participant import load_model

    model = load_model(fed / "workspaces" / "aggregator", fed / "results" / "final_model.pt")
    with torch.no_grad():
        output = model(torch.rand(1, 1, 32, 32, 32))
    assert output.shape == (1, 2, 32, 32, 32)
    assert (fed / "results" / "metrics.png").stat().st_size > 0
    assert processes_using(fed) == []

    again = cofe("run", "--dir", fed)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_a_run_without_local_validation_finishes_with_no_locally_tuned_rows(tmp_path, site_data, fast_config):
    """`--local-validation off` drops the task from the plan: OpenFL never runs it, the run still finishes.
    `--validation-batch gandlf` also sends the validation through GaNDLF's own validate_network."""
    fed = tmp_path / "fed"
    result = cofe("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data),
                  "--rounds", 1, "--port", free_port(), "--timeout", 600,
                  "--local-validation", "off", "--validation-batch", "gandlf")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation: aggregated model only" in result.stdout
    with (fed / "results" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    tasks = {r["task"] for r in rows if r["collaborator"] in SITES}
    assert {"aggregated_model_validation", "train"} <= tasks and "locally_tuned_model_validation" not in tasks
    for site in SITES:
        assert any(r["collaborator"] == site and r["metric"] == "valid_dice" for r in rows), site
    assert "locally_tuned" not in (fed / "plans" / "plan.yaml").read_text()
    assert "validation_batch: gandlf" in (fed / "plans" / "plan.yaml").read_text()


def test_failing_collaborator_stops_everyone(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(site_data["site_b"], broken)
    import nibabel as nib
    import numpy as np

    for image in broken.glob("*/image.nii.gz"):
        # Passes cofe's checks (a real image, the label's size) but lies in another space than its label
        # (2 mm voxels, the label's 1 mm): torchio's patch sampler refuses it in the middle of training.
        volume = nib.load(image)
        nib.save(nib.Nifti1Image(np.asanyarray(volume.dataobj), np.diag([2.0, 2.0, 2.0, 1.0])), image)
    result = cofe("run", "--dir", fed, "--gandlf-config", fast_config, "--collaborator", f"site_a={site_data['site_a']}",
                  "--collaborator", f"site_b={broken}", "--rounds", 2, "--port", free_port(), "--timeout", 600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "last log lines of site_b" in result.stderr
    assert "site_b exited with code" in result.stderr
    assert "Traceback" not in result.stderr.split("last log lines")[0]
    assert processes_using(fed) == []


def _status_rows(fed) -> dict[str, str]:
    """Participant -> its row in `cofe status`'s table ({} before `cofe run` has taken the directory)."""
    shown = cofe("status", "--dir", fed, env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}, timeout=60)
    if shown.returncode == 2 and "no federation in" in shown.stderr:
        return {}
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return {line.split("│")[1].strip(): line for line in shown.stdout.splitlines()
            if line.count("│") > 2 and line.split("│")[1].strip() in ("aggregator", *SITES)}


def test_status_lists_a_running_federation_and_stop_ends_it(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    run = cofe_background("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data),
                          "--rounds", 50, "--port", free_port(), "--timeout", 900, log=tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 600
        while len(rows := _status_rows(fed)) < 3 or not all("running" in row for row in rows.values()):
            assert run.poll() is None, (tmp_path / "run.log").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, f"the participants never ran: {rows}"
            time.sleep(2)
        participants = [p.pid for p in psutil.Process(run.pid).children() if "start" in p.cmdline()]
        assert len(participants) == 3
        for name, row in rows.items():
            assert "cofe run" in row and socket.gethostname() in row, row
            assert any(f"pid {pid}" in row for pid in participants), row

        started = time.monotonic()
        stopped = cofe("stop", "--dir", fed, timeout=180)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"Stopped cofe run (pid {run.pid}" in stopped.stdout
        print(f"\ncofe stop ended the run and its 3 participants in {time.monotonic() - started:.1f} s")
        assert run.wait(timeout=10) == 130
        assert "interrupted: every participant was stopped" in (tmp_path / "run.log").read_text(errors="replace")
        assert processes_using(fed) == [], "no participant (nor any of its children) outlives the run"
        assert "Nothing is running" in cofe("status", "--dir", fed, timeout=60).stdout
    finally:
        if run.poll() is None:
            run.kill()
