"""OpenFL's GaNDLF task runner, plus FedProx (which OpenFL only offers for its own optimizers),
instance-norm validation that survives sites with different scanners, and validation with batched
patches and cached validation subjects (engine/batched_validation.py)."""

import logging

import numpy as np
from openfl.federated.task.runner_gandlf import GaNDLFTaskRunner as _OpenFLGaNDLFTaskRunner
from openfl.utilities import TensorKey

from cofe_cli.engine import batched_validation, privacy
from cofe_cli.metrics import BUDGET_EXHAUSTED_METRIC, EPSILON_METRIC
from cofe_cli.plan.builder import AUTO_BATCH, GANDLF_VALIDATION, parse_validation_batch

logger = logging.getLogger(__name__)


class GaNDLFTaskRunner(_OpenFLGaNDLFTaskRunner):
    """`instance_norm_statistics: input` validates with each volume's own statistics, as instance
    normalisation defines them. GaNDLF 0.1.5 hard-codes track_running_stats=True, so in eval mode
    its models use running statistics, which in a federation are an average over sites whose
    scanners differ, and the aggregated model then scores near zero (measured on the demo: Dice
    0.03/0.23/0.01 over three rounds with running statistics, 0.03/0.30/0.66 with input ones).
    Training and the weights (running buffers included) are unchanged."""

    def __init__(self, proximal_mu: float = 0.0, instance_norm_statistics: str = "running",
                 validation_batch="auto", validation_cache_mb=batched_validation.DEFAULT_CACHE_MB,
                 privacy_planned_epochs: int = 1, max_epsilon: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)
        self.dp = privacy.settings(kwargs.get("gandlf_config"))
        self.privacy_planned_epochs = privacy_planned_epochs  # rounds x epochs: what `epsilon` is spread over
        self.max_epsilon = max_epsilon
        self.accountant = None  # built at the first round, when the collaborator's name is known
        if self.dp:
            self.params["differential_privacy"] = self.dp
            self.model, self.optimizer, self.scheduler = privacy.make_compatible(
                self.model, self.optimizer, self.scheduler, self.params)
            self.initialize_tensorkeys_for_functions(with_opt_vars=False)
        self.instance_norm_statistics = instance_norm_statistics
        batch = parse_validation_batch(batched_validation.setting(validation_batch, batched_validation.BATCH_ENV),
                                       source=f"validation_batch (plan, or {batched_validation.BATCH_ENV})")
        self.validation_batch = None if batch == AUTO_BATCH else batch  # None: batched_validation sizes it
        cache_mb = float(batched_validation.setting(validation_cache_mb, batched_validation.CACHE_ENV))
        self.validation_subjects = batched_validation.ValidationCache(
            self.data_loader.val_dataloader, int(cache_mb * 2**20)) if self.data_loader.val_dataloader else None

    def train(self, col_name, round_num, input_tensor_dict, use_tqdm=False, epochs=1, **kwargs):
        seed_task(col_name, round_num)
        if self.dp:
            return self.train_privately(col_name, round_num, input_tensor_dict, epochs)
        if not self.proximal_mu:
            return super().train(col_name, round_num, input_tensor_dict, use_tqdm, epochs, **kwargs)
        # GaNDLF owns the training loop, so the proximal term mu/2*||w - w_global||^2 enters as
        # its gradient mu*(w - w_global), added by a hook on every parameter.
        self.rebuild_model(round_num, input_tensor_dict)
        hooks = []
        for param in self.model.parameters():
            if param.requires_grad:
                anchor = param.detach().clone()
                hooks.append(param.register_hook(lambda grad, p=param, a=anchor: grad + self.proximal_mu * (p.detach() - a)))
        try:
            return super().train(col_name, round_num, input_tensor_dict, use_tqdm, epochs, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    def train_privately(self, col_name, round_num, input_tensor_dict, epochs):
        """OpenFL's GaNDLFTaskRunner.train with DP-SGD (engine/privacy.py). A site whose next round
        would pass --max-epsilon sends the model it received back unchanged, and still validates."""
        from openfl.federated.task.runner_gandlf import create_tensorkey_dicts

        if self.accountant is None:
            self.accountant = privacy.SiteAccountant(col_name, self.dp, self.privacy_planned_epochs, self.max_epsilon)
        self.rebuild_model(round_num, input_tensor_dict)
        loss, metrics, trained = privacy.train_privately(self, self.accountant, epochs)
        metric_dict = {EPSILON_METRIC: self.accountant.epsilon(), BUDGET_EXHAUSTED_METRIC: float(not trained)}
        if trained:
            metric_dict["loss"] = loss
            metric_dict.update({f"train_{name}": value for name, value in metrics.items()})
        tensor_dict = privacy.unwrapped_names(self.get_tensor_dict(with_opt_vars=self.opt_treatment == "CONTINUE_GLOBAL"))
        global_tensor_dict, local_tensor_dict = create_tensorkey_dicts(
            tensor_dict, metric_dict, col_name, round_num, self.tensor_dict_split_fn_kwargs)
        if self.opt_treatment == "CONTINUE_GLOBAL":
            self.initialize_tensorkeys_for_functions(with_opt_vars=True)
        self.training_round_completed = True
        return global_tensor_dict, local_tensor_dict

    def validate(self, col_name, round_num, input_tensor_dict, use_tqdm=False, **kwargs):
        fallback = ("validation_batch: gandlf" if self.validation_batch == GANDLF_VALIDATION
                    else batched_validation.fallback_reason(self.params))
        if fallback is not None:
            # GaNDLF's own validation, patch by patch, for what the batched path does not reproduce.
            logger.info("Validating with GaNDLF's validate_network: %s", fallback)
            return super().validate(col_name, round_num, input_tensor_dict, use_tqdm, **kwargs)
        self.rebuild_model(round_num, input_tensor_dict, validation=True)
        loss, metrics = batched_validation.validate_batched(
            self.model, self.validation_subjects, self.scheduler, self.params, round_num,
            batch_size=self.validation_batch)
        # The tensors OpenFL's GaNDLFTaskRunner.validate reports.
        tags = ("metric", "validate_local" if kwargs["apply"] == "local" else "validate_agg")
        output = {TensorKey("valid_loss", col_name, round_num, True, tags): np.array(loss)}
        for name, value in metrics.items():
            output[TensorKey(f"valid_{name}", col_name, round_num, True, tags)] = np.array(value)
        return output, {}

    def rebuild_model(self, round_num, input_tensor_dict, validation=False):
        # Loading the state dict needs the running buffers registered.
        use_instance_norm_statistics(self.model, "running")
        super().rebuild_model(round_num, input_tensor_dict, validation)
        if validation:
            use_instance_norm_statistics(self.model, self.instance_norm_statistics)


def seed_task(col_name: str, round_num: int) -> None:
    """A site's round draws the same random numbers (patch sampling, shuffling, augmentation) whether the
    site runs in a process of its own or in a shared worker (`--workers`), and in every rerun: seeded from
    the site's name and the round, not from the OS, so two runs of one federation can be compared."""
    import random
    import zlib

    import torch

    seed = zlib.crc32(f"{col_name}/{round_num}".encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_instance_norm_statistics(model, statistics: str) -> None:
    """`input`: every instance norm that holds running statistics normalises with the input's own (as
    instance normalisation defines it) even in eval mode; `running`: with the running ones (GaNDLF's)."""
    from torch.nn.modules.instancenorm import _InstanceNorm

    for module in model.modules():
        if isinstance(module, _InstanceNorm) and module.running_mean is not None:
            module.track_running_stats = statistics == "running"
