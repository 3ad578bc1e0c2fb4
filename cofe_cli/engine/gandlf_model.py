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
    # GaNDLF 0.1.5's inference crashes on a config with differential_privacy (its lightning module calls
    # a missing _initialize_inference_differential_privacy); the weights carry no Opacus names to strip.
    # The federation's plan keeps the section (federation.task_runner_settings).
    config.pop("differential_privacy", None)
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
    with quiet(), _silenced_fds(1, 2), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's notes on experimental converters, not the user's concern
        post_training_model_optimization(str(checkpoint_file), str(config_file), str(out_dir))
    if not target.is_file():
        raise CofeError(f"GaNDLF could not export {Path(checkpoint_file).name} to ONNX (its architecture has no ONNX export)",
                        hint="leave out --onnx")
    return target


@contextlib.contextmanager
def _silenced_fds(*fds: int):
    """GaNDLF and torch print past Python's sys.stdout/sys.stderr (torch.onnx's verbose graph from C++,
    tqdm bars and pandas warnings to stderr): the file descriptors themselves go to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with open(os.devnull, "wb") as devnull:
        for fd in fds:
            os.dup2(devnull.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy_of_fd in saved.items():
            os.dup2(copy_of_fd, fd)
            os.close(copy_of_fd)


def infer(checkpoint_file: Path, config_file: Path, csv_file: Path, out_dir: Path, *,
          instance_norm_statistics: str, differential_privacy: dict | None = None) -> dict[str, float]:
    """GaNDLF's own inference path (its testing loader and validate_network in inference mode, as its
    legacy inference_loop does) with the federation's instance-norm choice. Masks land in
    out_dir/testing/<subject>/; returns the metrics when the CSV has labels, else {}."""
    import torch
    from GANDLF.compute.forward_pass import validate_network
    from GANDLF.compute.generic import create_pytorch_objects
    from GANDLF.config_manager import ConfigManager
    from GANDLF.data import get_testing_loader
    from GANDLF.utils import parseTestingCSV, populate_header_in_parameters

    from cofe_cli.engine.openfl_task_runner import use_instance_norm_statistics

    # GaNDLF's tqdm bars and pandas warnings go to stderr; the command shows its own progress.
    with _silenced_fds(2), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = ConfigManager(str(config_file))
        params["output_dir"] = str(out_dir)
        params["save_output"] = True
        _, data, headers = parseTestingCSV(str(csv_file), str(out_dir))
        params = populate_header_in_parameters(params, headers)
        params["testing_data"] = data
        for key in ("penalty_weights", "sampling_weights", "class_weights"):  # as GaNDLF's InferenceManager does
            params.setdefault(key, None)
        model, _, _, _, _, params = create_pytorch_objects(params, device=params.get("device", "cpu"))
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
        if differential_privacy:  # the plan's section: the exported config leaves it out (inference_config)
            from cofe_cli.engine import privacy

            params["differential_privacy"] = differential_privacy
            # The layers the federation trained (Opacus's fix), not GaNDLF's plain ones.
            model = privacy.trained_architecture(model, params)
            privacy.load_trained_state(model, state["model_state_dict"])
        else:
            model.load_state_dict(state["model_state_dict"])
        use_instance_norm_statistics(model, instance_norm_statistics)
        _, metrics = validate_network(model, get_testing_loader(params), None, params, mode="inference")
    return {name: float(value) for name, value in (metrics or {}).items() if _is_number(value)}


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
