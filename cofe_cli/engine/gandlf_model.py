"""The federation's model as a GaNDLF model directory, the form GaNDLF's own inference loads.

    gandlf run -c DIR/config.yaml -i test.csv --infer -m DIR -o OUT

GaNDLF 0.1.5 (GANDLF/utils/modelio.py, compute/inference_loop.py) looks in DIR for
`<architecture>_best.pth.tar`, then `<architecture>_latest.pth.tar`, and refuses a checkpoint that
lacks any of epoch, model_state_dict, optimizer_state_dict, loss, timestamp, timestamp_hash, git_hash
and version. The directory holds the best model under the first name, the final one under the second,
and the GaNDLF config the federation trained with.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
from pathlib import Path

import yaml

from cofe_cli.fsutil import staged_dir

MODEL_DIR = "gandlf_model"  # in the aggregator's save/ and in results/
CONFIG_FILE = "config.yaml"
BEST_SUFFIX = "_best.pth.tar"  # GANDLF.utils.modelio.BEST_MODEL_PATH_END
LATEST_SUFFIX = "_latest.pth.tar"  # GANDLF.utils.modelio.LATEST_MODEL_PATH_END


def inference_config(gandlf_config: dict) -> dict:
    """The training config, minus what would misdirect inference: OpenFL's plans set `output_dir: .`,
    and GaNDLF prefers a config's output_dir over `gandlf run -o`, so predictions would land in the
    current folder instead of the one the user named."""
    config = copy.deepcopy(gandlf_config)
    config.pop("output_dir", None)
    return config


def checkpoint(model_state: dict, optimizer_state: dict, *, rounds: int, parameters: dict) -> dict:
    """A checkpoint with every key GaNDLF's load_model checks (version within the config's range)."""
    from GANDLF.version import __version__ as gandlf_version

    timestamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")  # GaNDLF's get_unique_timestamp format
    return {
        "epoch": rounds,  # a federated round is what a GaNDLF epoch is to a single site
        "model_state_dict": model_state,
        "optimizer_state_dict": optimizer_state,
        "loss": None,
        "timestamp": timestamp,
        "timestamp_hash": hashlib.sha256(timestamp.encode("utf-8")).hexdigest(),
        # GaNDLF records its own git commit here; a federation's provenance is the plan instead.
        "git_hash": None,
        "version": gandlf_version,
        "parameters": parameters,
    }


def write_model_dir(target: Path, *, gandlf_config: dict, models: dict[str, dict], rounds: int) -> Path:
    """`models` maps "best"/"final" to {model_state_dict, optimizer_state_dict}; written to a staging
    folder that replaces `target` whole, so a crash never leaves half a model directory."""
    import torch

    config = inference_config(gandlf_config)
    architecture = config["model"]["architecture"]
    with staged_dir(target) as stage:
        (stage / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        for kind, suffix in (("best", BEST_SUFFIX), ("final", LATEST_SUFFIX)):
            if kind in models:
                state = models[kind]
                torch.save(checkpoint(state["model_state_dict"], state["optimizer_state_dict"], rounds=rounds,
                                      parameters=config), stage / f"{architecture}{suffix}")
    return target
