"""DP-SGD at a site, as GaNDLF 0.1.5's own training loop applies it (GANDLF/compute/training_loop.py),
which OpenFL's GaNDLF runner bypasses: Opacus clips every sample's gradient to max_grad_norm and adds
Gaussian noise (noise_multiplier x max_grad_norm) to their sum at every step.

The accountant's history (noise multiplier, sample rate, steps) is this site's record of the budget
spent: it lives in the collaborator's workspace and survives rounds and restarts, so epsilon after
round N counts every step of rounds 1..N.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from cofe_cli.fsutil import atomic_write_text

logger = logging.getLogger(__name__)

# Relative to the collaborator's workspace (OpenFL's working directory).
ACCOUNTANT_DIR = Path("local_state")
# Prefix Opacus's GradSampleModule puts before every tensor name of the model it wraps.
WRAPPER_PREFIX = "_module."
# An instance or batch norm's buffers, which Opacus's fix turns off.
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def settings(gandlf_config) -> dict | None:
    """The `differential_privacy` section of the plan's GaNDLF config (cofe's init filled in GaNDLF's
    defaults), or None without DP. Not GaNDLF's parsed one: GaNDLF 0.1.5's validator replaces any
    section by its defaults (it tests for a dict after pydantic made it a model)."""
    if isinstance(gandlf_config, str):
        import yaml

        with open(gandlf_config) as handle:
            gandlf_config = yaml.safe_load(handle)
    section = (gandlf_config or {}).get("differential_privacy")
    return dict(section) if section else None


def make_compatible(model, optimizer, scheduler, params: dict):
    """GaNDLF's opacus_model_fix (Opacus's ModuleValidator: e.g. BatchNorm -> GroupNorm), done when the
    task runner is built, so the initial model, every site and the aggregator share the fixed
    architecture. A replaced module has new parameters: the optimizer and scheduler are rebuilt on them."""
    from GANDLF.optimizers import get_optimizer
    from GANDLF.schedulers import get_scheduler
    from opacus.validators import ModuleValidator

    if not ModuleValidator.validate(model, strict=False):
        return model, optimizer, scheduler
    model = trained_architecture(model, params)
    params["model_parameters"] = model.parameters()
    optimizer = get_optimizer(params)
    if scheduler is not None:
        params["optimizer_object"] = optimizer
        scheduler = get_scheduler(params)
    for key in ("model_parameters", "optimizer_object"):
        params.pop(key, None)
    return model, optimizer, scheduler


def trained_architecture(model, params: dict):
    """GaNDLF's model as a DP federation trains it: Opacus's fix applied (what make_compatible does at
    every site), for inference of a DP-trained model with the layers it was trained with."""
    from GANDLF.privacy.opacus import opacus_model_fix

    with _trusting_torch_load():
        model = opacus_model_fix(model, params)
    _drop_untracked_running_statistics(model)
    return model


def gandlf_inference_buffers(model_state: dict, params: dict) -> dict:
    """What a DP-trained model's state lacks for `gandlf run --infer`, which builds GaNDLF's plain
    architecture without Opacus's fix: every buffer of that architecture the DP model does not have (the
    running statistics the fix turned off), at its initial value, as GaNDLF's own DP training leaves them
    (Opacus's fix keeps those buffers, untouched). GaNDLF's CLI then normalises with those neutral
    statistics; `cofe infer` normalises as the federation did (each input's own statistics)."""
    from GANDLF.models import get_model

    plain = get_model(params).state_dict()
    return {name: value.clone() for name, value in plain.items() if name not in model_state}


def load_trained_state(model, model_state: dict) -> None:
    """Load a DP-trained model's state (with or without gandlf_inference_buffers) into
    trained_architecture's model: nothing of the model may be missing; only those buffers may be extra
    (torch refuses them even with strict=False, so they are left out)."""
    own = model.state_dict()
    missing = [name for name in own if name not in model_state]
    unknown = [name for name in model_state if name not in own and name.rsplit(".", 1)[-1] not in RUNNING_STATISTICS]
    if missing or unknown:
        raise RuntimeError(f"the checkpoint does not fit the DP-trained architecture: missing {missing[:3]}, "
                           f"unexpected {unknown[:3]}")
    model.load_state_dict({name: value for name, value in model_state.items() if name in own})


def _drop_untracked_running_statistics(model) -> None:
    # Opacus's fix turns instance norms' running statistics off (they would leak data, noiseless) but
    # keeps their buffers, and then refuses to train a layer with buffers. Without them the norms
    # normalise with each input's own statistics, in training and validation alike.
    from torch.nn.modules.instancenorm import _InstanceNorm

    for module in model.modules():
        if isinstance(module, _InstanceNorm) and not module.track_running_stats:
            for name in RUNNING_STATISTICS:
                if getattr(module, name, None) is not None:
                    module.register_buffer(name, None)


def _step_on_empty_batches(optimizer) -> None:
    """A parameter the step's loss did not reach has no per-sample gradient, and Opacus's optimizer
    raises; in an empty batch (see _NonEmptyBatches) none has one. Zero per-sample gradients give
    DP-SGD's step exactly: noise alone for an empty batch (and the accountant counts it)."""
    import torch

    original = optimizer.pre_step

    def pre_step(closure=None):
        present = [p.grad_sample for p in optimizer.params if p.grad_sample is not None]
        samples = (present[0][0] if isinstance(present[0], list) else present[0]).shape[0] if present else 0
        for param in optimizer.params:
            if param.grad_sample is None:
                param.grad_sample = torch.zeros((samples, *param.shape), dtype=param.dtype, device=param.device)
        return original(closure)

    optimizer.pre_step = pre_step


class _NonEmptyBatches:
    """The Opacus loader's batches for GaNDLF's train_network, which runs the model on every batch it
    is given, and a model cannot run on an empty one (instance norm raises IndexError). Poisson
    sampling draws empty batches now and then (3 patches per epoch: ~30% of steps): each is a DP-SGD
    step all the same, taken here as noise alone, so the accountant's steps are the sampler's steps.

    train_network averages its loss and metrics over len(): the batches it was given, once it has seen
    them all (before that: the loader's length, for its progress bar)."""

    def __init__(self, loader, optimizer, params: dict):
        self.loader, self.optimizer, self.params = loader, optimizer, params
        self.given = None

    def __iter__(self):
        from GANDLF.privacy.opacus import handle_dynamic_batch_size

        self.given = 0
        for subject in self.loader:
            subject, size = handle_dynamic_batch_size(subject=subject, params=self.params)
            if size:
                self.given += 1
                yield subject
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self.optimizer.step()
        logger.info("DP-SGD epoch: %d of %d steps had an empty batch (noise only)",
                    len(self.loader) - self.given, len(self.loader))

    def __len__(self):
        return len(self.loader) if self.given is None else max(1, self.given)


def _freeze_unused_parameters(model, params: dict) -> None:
    """GaNDLF's models hold layers their forward pass never uses (e.g. a decoder's third conv): they
    get no gradient, and Opacus's optimizer refuses a trainable parameter without per-sample
    gradients. Found by one backward pass on a random patch; they are not trained without DP either."""
    import torch

    if getattr(model, "_cofe_unused_frozen", False):
        return
    shape = (1, params["model"]["num_channels"], *params["patch_size"][:params["model"]["dimension"]])
    model.zero_grad(set_to_none=True)
    model(torch.rand(shape, device=params["device"])).float().sum().backward()
    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    model._cofe_unused_frozen = True


@contextlib.contextmanager
def _trusting_torch_load():
    # Opacus clones the model through torch.save/torch.load, which torch >= 2.6 refuses for a pickled
    # module (weights_only). The bytes are this process's own model, just serialised: safe to load.
    previous = os.environ.get(_NO_WEIGHTS_ONLY)
    os.environ[_NO_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_NO_WEIGHTS_ONLY, None)
        else:
            os.environ[_NO_WEIGHTS_ONLY] = previous


_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def unwrapped_names(state: dict) -> dict:
    """A state dict with Opacus's wrapper prefix taken off, as OpenFL and GaNDLF inference name tensors."""
    return {name.removeprefix(WRAPPER_PREFIX): value for name, value in state.items()}


class SiteAccountant:
    """One site's privacy accounting across rounds and restarts."""

    def __init__(self, collaborator: str, dp: dict, planned_epochs: int, max_epsilon: float | None):
        self.path = ACCOUNTANT_DIR / f"privacy_accountant_{collaborator}.json"
        self.dp = dp
        self.planned_epochs = max(1, int(planned_epochs))
        self.max_epsilon = max_epsilon
        self.history = self._load()

    def _load(self) -> list:
        if not self.path.is_file():
            return []
        saved = json.loads(self.path.read_text())
        if saved.get("accountant") != self.dp["accountant"]:
            raise RuntimeError(f"{self.path} was written by the {saved.get('accountant')} accountant, "
                               f"but the plan names {self.dp['accountant']}")
        return [tuple(entry) for entry in saved["history"]]

    def save(self, history) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.history = [tuple(entry) for entry in history]
        atomic_write_text(self.path, json.dumps({"accountant": self.dp["accountant"],
                                                 "history": [list(entry) for entry in self.history]}) + "\n")

    def new_accountant(self, history=None):
        from opacus.accountants import create_accountant

        accountant = create_accountant(self.dp["accountant"])
        accountant.history = list(self.history if history is None else history)
        return accountant

    def epsilon(self, history=None) -> float:
        history = self.history if history is None else history
        return float(self.new_accountant(history).get_epsilon(delta=self.dp["delta"])) if history else 0.0

    def noise_multiplier(self, sample_rate: float) -> float:
        """The configured multiplier, or, with `epsilon`, the one that spends it over the planned
        rounds x epochs at this site's sample rate (as GaNDLF's make_private_with_epsilon would)."""
        if "epsilon" not in self.dp:
            return float(self.dp["noise_multiplier"])
        from opacus.accountants.utils import get_noise_multiplier

        return float(get_noise_multiplier(target_epsilon=self.dp["epsilon"], target_delta=self.dp["delta"],
                                          sample_rate=sample_rate, epochs=self.planned_epochs,
                                          accountant=self.dp["accountant"]))

    def would_exceed(self, noise_multiplier: float, sample_rate: float, steps: int) -> bool:
        """Whether `steps` more would take the spent epsilon past --max-epsilon."""
        if self.max_epsilon is None:
            return False
        accountant = self.new_accountant()
        for _ in range(steps):
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        return self.epsilon(accountant.history) > self.max_epsilon


def train_privately(runner, accountant: SiteAccountant, epochs: int):
    """`epochs` of GaNDLF's train_network on the runner's model through Opacus; the model is left
    unwrapped (its own tensor names) with the trained weights. Returns (loss, metrics, trained)."""
    from GANDLF.compute.training_loop import train_network
    from GANDLF.privacy.opacus.model_handling import empty_collate
    from opacus import PrivacyEngine

    params = runner.params
    loader = runner.data_loader.train_dataloader
    sample_rate = 1 / len(loader)  # Opacus's Poisson sampling: each sample in a step with this probability
    noise = accountant.noise_multiplier(sample_rate)
    if accountant.would_exceed(noise, sample_rate, len(loader) * epochs):
        logger.info("privacy budget: another round would pass --max-epsilon %s (spent %.4f); not training",
                    accountant.max_epsilon, accountant.epsilon())
        return None, {}, False
    _freeze_unused_parameters(runner.model, params)
    engine = PrivacyEngine(accountant=accountant.dp["accountant"], secure_mode=accountant.dp["secure_mode"])
    engine.accountant = accountant.new_accountant()
    batch_size = params["batch_size"]  # GaNDLF's train_network sets it to each Poisson batch's size
    runner.model.train()  # Opacus wraps only a model in training mode; OpenFL validated it just before
    model, optimizer, private_loader = engine.make_private(
        module=runner.model, optimizer=runner.optimizer, data_loader=loader,
        noise_multiplier=noise, max_grad_norm=accountant.dp["max_grad_norm"])
    private_loader.collate_fn = empty_collate(private_loader.dataset[0])
    _step_on_empty_batches(optimizer)
    try:
        model.train()
        for epoch in range(epochs):
            logger.info("DP-SGD epoch %d: noise multiplier %.4f, max_grad_norm %s, sample rate %.4f",
                        epoch, noise, accountant.dp["max_grad_norm"], sample_rate)
            batches = _NonEmptyBatches(private_loader, optimizer, params)
            loss, metrics = train_network(model, batches, optimizer, params)
    finally:
        params["batch_size"] = batch_size
        model._close()  # removes Opacus's hooks from runner.model, which keeps the trained weights
    accountant.save(engine.accountant.history)
    logger.info("privacy spent: epsilon %.4f at delta %s", accountant.epsilon(), accountant.dp["delta"])
    return loss, metrics, True
