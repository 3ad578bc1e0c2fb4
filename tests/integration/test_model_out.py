"""The trained model leaves the federation: GaNDLF's own `gandlf run --infer` loads results/gandlf_model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from federation_helpers import cofe, collaborator_args, free_port

pytestmark = pytest.mark.federation


def test_gandlf_inference_loads_the_federation_model(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    cofe("run", "--dir", fed, "--gandlf-config", fast_config, *collaborator_args(site_data), "--rounds", 1,
         "--port", free_port(), "--timeout", 600, check=True)
    model_dir = fed / "results" / "gandlf_model"
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    architecture = config["model"]["architecture"]
    assert "output_dir" not in config  # else GaNDLF writes predictions there instead of to -o
    for name in (f"{architecture}_best.pth.tar", f"{architecture}_latest.pth.tar"):
        saved = torch.load(model_dir / name, map_location="cpu", weights_only=False)
        assert {"epoch", "model_state_dict", "optimizer_state_dict", "loss", "timestamp", "timestamp_hash",
                "git_hash", "version"} <= set(saved)
    final = torch.load(fed / "results" / "final_model.pt", map_location="cpu", weights_only=True)
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
