"""OpenFL's GaNDLF task runner plus FedProx, which OpenFL only offers for its own optimizers."""

from openfl.federated.task.runner_gandlf import GaNDLFTaskRunner as _OpenFLGaNDLFTaskRunner


class GaNDLFTaskRunner(_OpenFLGaNDLFTaskRunner):
    def __init__(self, proximal_mu: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def train(self, col_name, round_num, input_tensor_dict, use_tqdm=False, epochs=1, **kwargs):
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
