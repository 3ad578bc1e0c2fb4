"""The federation's model as a GaNDLF model directory, the form GaNDLF's own inference loads.

    gandlf run -c DIR/config.yaml -i test.csv --infer -m DIR -o OUT

GaNDLF 0.1.5 (GANDLF/utils/modelio.py, compute/inference_loop.py) looks in DIR for
`<architecture>_best.pth.tar`, then `<architecture>_latest.pth.tar`, and refuses a checkpoint that
lacks any of epoch, model_state_dict, optimizer_state_dict, loss, timestamp, timestamp_hash, git_hash
and version. The directory holds the best model under the first name, the final one under the second,
and the GaNDLF config the federation trained with.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import os
import sys
import warnings
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


def write_model_dir(target: Path, *, gandlf_config: dict, parameters: dict, models: dict[str, dict],
                    rounds: int) -> Path:
    """`models` maps "best"/"final" to {model_state_dict, optimizer_state_dict}; `parameters` are the
    config as GaNDLF parsed it (what GaNDLF's own save_model stores, and what its ONNX export reads).
    Written to a staging folder that replaces `target` whole, so a crash never leaves half a model
    directory."""
    import torch

    config = inference_config(gandlf_config)
    architecture = config["model"]["architecture"]
    with staged_dir(target) as stage:
        (stage / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        for kind, suffix in (("best", BEST_SUFFIX), ("final", LATEST_SUFFIX)):
            if kind in models:
                state = models[kind]
                torch.save(checkpoint(state["model_state_dict"], state["optimizer_state_dict"], rounds=rounds,
                                      parameters=inference_config(parameters)), stage / f"{architecture}{suffix}")
    return target


def export_onnx(checkpoint_file: Path, config_file: Path, out_dir: Path) -> Path:
    """ONNX through GaNDLF's own library function (its `optimize-model` CLI crashes in 0.1.5)."""
    from GANDLF.cli.post_training_model_optimization import post_training_model_optimization

    from cofe_cli.engine.participant import quiet
    from cofe_cli.errors import CofeError

    target = Path(out_dir) / Path(checkpoint_file).name.replace(".pth.tar", ".onnx")
    with quiet(), _silenced_stdout_fd(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's notes on experimental converters, not the user's concern
        post_training_model_optimization(str(checkpoint_file), str(config_file), str(out_dir))
    if not target.is_file():
        raise CofeError(f"GaNDLF could not export {Path(checkpoint_file).name} to ONNX (its architecture has no ONNX export)",
                        hint="leave out --onnx")
    return target


@contextlib.contextmanager
def _silenced_stdout_fd():
    """GaNDLF exports with torch.onnx's verbose=True, which prints the whole graph from C++ straight
    to file descriptor 1, past Python's sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
