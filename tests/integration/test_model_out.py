"""The trained model leaves the federation: GaNDLF's own `gandlf run --infer` loads results/gandlf_model,
and `cofe export model --format hf` packages it for the Hub with its provenance and nothing else."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from federation_helpers import cofe, collaborator_args, free_port

pytestmark = pytest.mark.federation


@pytest.fixture(scope="module")
def trained(tmp_path_factory, site_data, fast_config) -> Path:
    fed = tmp_path_factory.mktemp("model-out") / "fed"
    cofe("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 1,
         "--port", free_port(), "--timeout", 600, check=True)
    return fed


def test_gandlf_inference_loads_the_federation_model(trained, tmp_path, site_data):
    model_dir = tmp_path / "gandlf_model"  # a copy: GaNDLF writes its masks below the model directory
    subprocess.run(["cp", "-r", str(trained / "results" / "gandlf_model"), str(model_dir)], check=True)
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    architecture = config["model"]["architecture"]
    assert "output_dir" not in config  # else GaNDLF writes predictions there instead of to -o
    for name in (f"{architecture}_best.pth.tar", f"{architecture}_latest.pth.tar"):
        saved = torch.load(model_dir / name, map_location="cpu", weights_only=False)
        assert {"epoch", "model_state_dict", "optimizer_state_dict", "loss", "timestamp", "timestamp_hash",
                "git_hash", "version", "parameters"} <= set(saved)
    final = torch.load(trained / "results" / "final_model.pt", map_location="cpu", weights_only=True)
    latest = torch.load(model_dir / f"{architecture}_latest.pth.tar", map_location="cpu", weights_only=False)
    for key, tensor in final["model_state_dict"].items():
        assert torch.equal(tensor, latest["model_state_dict"][key]), key

    # GaNDLF's own CLI, as a user runs it, on a site's validation subjects.
    site_csv = site_data["site_a"] / "valid.csv"
    subjects = [line.split(",")[0] for line in site_csv.read_text().splitlines()[1:] if line.strip()]
    out = tmp_path / "predictions"
    gandlf = Path(sys.executable).with_name("gandlf")
    result = subprocess.run([str(gandlf), "run", "-c", str(model_dir / "config.yaml"), "-i", str(site_csv), "--infer",
                             "-m", str(model_dir), "-o", str(out)], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # GaNDLF 0.1.5 writes the masks below the model directory (output_inference/), and only its
    # subject mapping to -o.
    masks = sorted((model_dir / "output_inference").rglob("*_seg*.nii.gz"))
    predicted = {subject for subject in subjects for mask in masks if mask.name.startswith(f"{subject}_seg")}
    assert predicted == set(subjects), (masks, sorted(out.rglob("*")), result.stdout[-2000:])


WRITTEN_MODELS = ("gandlf_model", "last.pt", "best.pt")  # what the aggregator's model writer writes in save/


def copy_without_written_models(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained federation whose aggregator has not written its models yet: its save/ folder."""
    fed = tmp_path / "fed"
    shutil.copytree(trained, fed, symlinks=True)
    save = fed / "workspaces" / "aggregator" / "save"
    shutil.rmtree(save / "gandlf_model")
    for written in WRITTEN_MODELS[1:]:
        (save / written).unlink()
    return save


def run_probe(probe: str, workspace: Path):
    """Run `probe` (Python code, given the workspace as argv[1]) in a process of its own: what it printed last, as JSON."""
    done = subprocess.run([sys.executable, "-c", probe, str(workspace)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_aggregator_holds_no_torch_and_writes_its_models_apart(trained, tmp_path):
    """The aggregator's memory (issue 13): built as `cofe start aggregator` builds it, it loads neither torch
    nor GaNDLF; a process of its own writes the native models, the same ones the federation wrote."""
    save = copy_without_written_models(trained, tmp_path)
    probe = ("import json, os, sys; from cofe_cli.engine import participant; os.chdir(sys.argv[1]); "
             "participant.aggregator_of_plan(); participant.NativeModelWriter(sys.argv[1]).write(); "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'GANDLF', 'monai', 'torchio'})))")
    assert run_probe(probe, save.parent) == []

    for kind in ("final", "best"):
        original = torch.load(trained / "results" / f"{kind}_model.pt", map_location="cpu", weights_only=True)
        again = torch.load(save / f"{'last' if kind == 'final' else kind}.pt", map_location="cpu", weights_only=True)
        assert list(again["model_state_dict"]) == list(original["model_state_dict"])
        assert all(torch.equal(again["model_state_dict"][k], v) for k, v in original["model_state_dict"].items())
        assert again["optimizer_state_dict"] == original["optimizer_state_dict"]
    for checkpoint in (trained / "results" / "gandlf_model").glob("*.pth.tar"):
        original = torch.load(checkpoint, map_location="cpu", weights_only=False)
        again = torch.load(save / "gandlf_model" / checkpoint.name, map_location="cpu", weights_only=False)
        assert again["parameters"] == original["parameters"] and again["epoch"] == original["epoch"]
        assert all(torch.equal(again["model_state_dict"][k], v) for k, v in original["model_state_dict"].items())
    assert (save / "gandlf_model" / "config.yaml").read_text() == (trained / "results" / "gandlf_model" / "config.yaml").read_text()


def test_a_model_writer_never_told_to_write_leaves_without_writing(trained, tmp_path):
    """The aggregator starts its model writer when the last round begins, so that the writer's imports
    overlap the sites' training (issue 12); an aggregator that then fails closes it, and it writes nothing."""
    save = copy_without_written_models(trained, tmp_path)
    # Stopped by an aggregator that failed, and left alone by one that was killed (its input ends).
    probe = ("import json, os, sys, time; from cofe_cli.engine import participant; "
             "writer = participant.NativeModelWriter(sys.argv[1]); writer.start(); time.sleep(1); writer.close(); "
             "orphan = participant.NativeModelWriter(sys.argv[1]); orphan.start(); orphan.process.stdin.close(); "
             "print(json.dumps([writer.process.returncode, orphan.process.wait(timeout=300)]))")
    stopped, left = run_probe(probe, save.parent)
    assert stopped == -9 and left == 0
    assert not any((save / written).exists() for written in WRITTEN_MODELS)


def test_native_models_from_init_skeleton_are_gandlfs_own(trained, tmp_path):
    """The export at the end of a federation (issue 12: it held `cofe run` 12-13 s importing GaNDLF) writes
    from the skeleton `cofe init` kept, with torch alone; what it writes is what GaNDLF's task runner
    writes, which is still used when the skeleton is not this plan's (here: an edited plan.yaml)."""
    fed = tmp_path / "fed"
    shutil.copytree(trained, fed, symlinks=True)
    workspace = fed / "workspaces" / "aggregator"
    save = workspace / "save"
    assert (save / "native_skeleton.pt").is_file()
    probe = ("import json, os, sys; os.chdir(sys.argv[1]); from cofe_cli.engine import participant; "
             "participant.export_native_models_here(); print(json.dumps('GANDLF.models' in sys.modules))")
    written = {}
    for way in ("skeleton", "gandlf"):
        for stale in WRITTEN_MODELS:
            shutil.rmtree(save / stale) if (save / stale).is_dir() else (save / stale).unlink()
        if way == "gandlf":
            with (workspace / "plan" / "plan.yaml").open("a") as plan:
                plan.write("# edited after init\n")
        assert run_probe(probe, workspace) == (way == "gandlf")  # GaNDLF built the runner
        checkpoints = sorted(path.relative_to(save) for path in (save / "gandlf_model").glob("*.pth.tar"))
        assert len(checkpoints) == 2  # best and latest
        written[way] = {str(name): torch.load(save / name, map_location="cpu", weights_only=False)
                        for name in ["best.pt", "last.pt", *checkpoints]}
        written[way]["config.yaml"] = (save / "gandlf_model" / "config.yaml").read_text()
    for name, ours in written["skeleton"].items():
        gandlfs = written["gandlf"][name]
        if name == "config.yaml":
            assert ours == gandlfs
            continue
        assert set(ours) == set(gandlfs), name
        mine, theirs = ours["model_state_dict"], gandlfs["model_state_dict"]
        assert list(mine) == list(theirs) and mine._metadata == theirs._metadata, name
        assert all(torch.equal(mine[k], v) and mine[k].dtype == v.dtype for k, v in theirs.items()), name
        assert ours["optimizer_state_dict"] == gandlfs["optimizer_state_dict"], name
        assert ours.get("parameters") == gandlfs.get("parameters") and ours.get("epoch") == gandlfs.get("epoch"), name


def test_a_sites_poll_is_contact_whichever_server_serves_the_aggregator(trained, tmp_path, monkeypatch):
    """`fx aggregator start` on a cofe plan serves ObservedAggregator with OpenFL's own server, which never
    calls heard_from: a site that polled, waiting to be told to quit, counted as silent since the aggregator
    started, was given up 30 s into the federation and retried forever. (Here: the trained federation's.)"""
    fed = tmp_path / "fed"
    shutil.copytree(trained, fed, symlinks=True)
    monkeypatch.chdir(fed / "workspaces" / "aggregator")
    from cofe_cli.engine import participant

    _, aggregator = participant.aggregator_of_plan()
    assert aggregator.site_watch.last_contact == {}
    aggregator.get_tasks("site_a")
    assert set(aggregator.site_watch.last_contact) == {"site_a"}


def test_hub_package_carries_provenance_and_nothing_private(trained, tmp_path, site_data):
    import onnx

    package = tmp_path / "package"
    result = cofe("export", "model", "--dir", trained, "--format", "hf", "--out", package, "--onnx", check=True)
    assert "graph" not in result.stdout  # torch.onnx's verbose graph dump stays out of the user's terminal
    manifest = yaml.safe_load((trained / "plans" / "federation.yaml").read_text())
    architecture = yaml.safe_load((package / "config.yaml").read_text())["model"]["architecture"]
    assert sorted(p.name for p in package.iterdir()) == sorted([
        "README.md", "cofe_provenance.json", "config.yaml", f"{architecture}_best.onnx",
        f"{architecture}_best.pth.tar", f"{architecture}_latest.pth.tar"])
    onnx.checker.check_model(str(package / f"{architecture}_best.onnx"))

    card = (package / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: GaNDLF\n")
    assert manifest["plan_sha384"] in card and "rounds: 1" in card and "aggregation: fedavg" in card
    assert f"sites: {len(site_data)}" in card and "privacy:" in card
    assert all(f"{k} {v}" in card for k, v in manifest["versions"].items())
    with (trained / "results" / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["task"] == "aggregated_model_validation"
                and r["collaborator"] == "aggregator" and r["metric"] == "valid_dice"]
    assert f"| **weighted mean** | valid_dice | {float(rows[-1]['value']):.4f} |" in card
    assert not any(site in card for site in site_data)  # numbered unless --name-sites
    assert json.loads((package / "cofe_provenance.json").read_text())["plan_sha384"] == manifest["plan_sha384"]

    # Nothing private: no key, certificate, CSV, image or path to a site's data, in any file.
    data_roots = [str(folder) for folder in site_data.values()]
    for path in package.rglob("*"):
        assert path.suffix not in (".csv", ".pem", ".crt", ".key", ".nii", ".gz"), path
        content = path.read_bytes()
        for secret in (b"PRIVATE KEY", b"BEGIN CERTIFICATE", *(root.encode() for root in data_roots)):
            assert secret not in content, (path, secret)

    named = cofe("export", "model", "--dir", trained, "--out", tmp_path / "named", "--name-sites", check=True)
    assert named.returncode == 0 and all(site in (tmp_path / "named" / "README.md").read_text() for site in site_data)
