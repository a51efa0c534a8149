"""K runs of one configuration (K seeds) as one module: torch.func stacks their weights, vmap runs all K at once.

Small nets (LeNet-5 on MNIST) keep a GPU, or a CPU's vector units, mostly idle one run at a time. Stacked, one
step of the K runs is one batched call (vmap turns each conv into one grouped conv, each linear into a batched
matmul), and each run keeps its own numbers: its weights, BN statistics and α are slice k of the stacked ones,
its gradient is that of its own loss (the losses are summed), so SGD moves each slice as K separate runs would
(tests/test_stack.py checks this against K separate models).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter and buffer names cannot hold dots


class StackedModels(nn.Module):
    """K models of one architecture as one module: input (K, B, ...) → output (K, B, ...), model k on slice k.

    ``train()``/``eval()`` switch all K (BN batch or running statistics). ``unstacked(k)`` is model k's state
    dict, which the architecture's own ``load_state_dict`` takes (a checkpoint of one run).
    """

    def __init__(self, models: list[nn.Module], base: nn.Module | None = None):
        super().__init__()
        params, buffers = stack_module_state(models)  # name → (K, *shape)
        self.names = list(params), list(buffers)
        for name, value in params.items():
            self.register_parameter(_key(name), nn.Parameter(value.detach()))
        for name, value in buffers.items():
            self.register_buffer(_key(name), value)
        # the architecture without storage, in a list so that it is no submodule (its meta weights stay out):
        # functional_call runs it on slice k of the stacked tensors. ``base``: another module with the same
        # parameter and buffer names (src/stacked swaps its activations for one whose STE is per slice)
        self._base = [copy.deepcopy(models[0] if base is None else base).to("meta")]

    def train(self, mode: bool = True):
        self._base[0].train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: getattr(self, _key(n)) for n in self.names[0]}
        buffers = {n: getattr(self, _key(n)) for n in self.names[1]}

        def one(p, b, xk):
            return functional_call(self._base[0], (p, b), (xk,))

        return vmap(one, randomness="different")(params, buffers, x)  # (K, B, ...)

    def bind(self, models: list[nn.Module]) -> None:
        """Make model k's parameters and buffers views of slice k (same tensor objects, new storage).

        Then each model is its run: a per-run optimizer steps its parameters in place (so the stacked ones), the
        stacked forward updates its BN statistics, and its state_dict is its slice (clone before saving: a
        view pickles its whole storage). ``copy_grads`` hands each model its slice of the stacked gradient.
        """
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.data = getattr(self, _key(name)).data[k]
            for name in [n for n, _ in model.named_buffers()]:  # a list: the loop replaces buffers
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._buffers[leaf] = getattr(self, _key(name))[k]

    def copy_grads(self, models: list[nn.Module]) -> None:
        """Model k's .grad = slice k of the stacked gradient (a view: no copy); the stacked ones are cleared."""
        for name in self.names[0]:
            stacked = getattr(self, _key(name))
            for k, model in enumerate(models):
                model.get_parameter(name).grad = None if stacked.grad is None else stacked.grad[k]
            stacked.grad = None

    def unstacked(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's state dict (the architecture's own keys, in its order)."""
        return {n: getattr(self, _key(n))[k].detach().clone() for n in self._base[0].state_dict()}


def stacked_loss(loss_fn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_k loss_fn(out[k], y[k]) for out (K, B, ...) and y (K, B): each run's gradient is that of its own loss."""
    return sum(loss_fn(o, t) for o, t in zip(out, y, strict=True))
