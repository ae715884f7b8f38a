"""The math of one meta-training step (method.md §2.4), without Lightning.

At weights theta, on one batch:
  1. sigma = |PertNN(x)| with autograd on the networks; c from sigma, as a constant;
  2. L+- at theta +- eps c sigma z without autograd; g = (L+ - L-) / (2 eps), a constant;
  3. look-ahead theta' = theta - lr_update g c sigma (.) z: differentiable in the networks through sigma only;
  4. meta-loss = L(theta'; batch), evaluated by a functional call (no second copy of the model's modules;
     tied tensors stay tied because each tensor appears once, under its first name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from zolightning.optim.engine.noise import NoiseSource
from zolightning.variance.networks import normalisation_factor


@dataclass
class MetaStepResult:
    meta_loss: Tensor  # differentiable in the networks' parameters
    loss_plus: float
    loss_minus: float
    projected_grad: float
    sigma: Tensor  # detached
    c: float


def two_point_losses(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    scales: Tensor,
    eps: float,
    seed: int,
    noise: NoiseSource,
    batch_loss: Callable[[nn.Module, dict], Tensor],
    batch: dict,
) -> tuple[float, float]:
    """(L+, L-) at theta +- eps * scales_i * z_i, evaluated functionally: the weights are never written."""
    losses = []
    with torch.no_grad():
        for sign in (+1.0, -1.0):
            shifted = lookahead(names, params, scales.detach(), -sign * eps, seed, noise)
            losses.append(float(batch_loss(FunctionalModel(model, shifted), batch)))
    return losses[0], losses[1]


def lookahead(
    names: Sequence[str],
    params: Sequence[Tensor],
    sigma: Tensor,
    step_size: Tensor | float,
    seed: int,
    noise: NoiseSource,
) -> dict[str, Tensor]:
    """{name: theta_i - step_size * sigma_i * z_i}: graph to sigma only (theta detached, z constant)."""
    directions = noise.directions(params, seed)
    return {
        name: p.detach() - step_size * sigma[i].to(p.dtype) * z.to(p.dtype)
        for i, (name, p, z) in enumerate(zip(names, params, directions))
    }


def meta_step(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    nets: nn.Module,
    features: Tensor,
    effective_sizes: Tensor,
    batch_loss: Callable[[nn.Module, dict], Tensor],
    batch: dict,
    eps: float,
    lr_update: float,
    seed: int,
    noise: NoiseSource,
    normalize: bool = True,
) -> MetaStepResult:
    """One look-ahead meta step; backpropagate `meta_loss` to train the networks."""
    sigma = nets(features)
    c = float(normalisation_factor(sigma.detach(), effective_sizes)) if normalize else 1.0
    plus, minus = two_point_losses(model, names, params, sigma.detach() * c, eps, seed, noise, batch_loss, batch)
    g = (plus - minus) / (2 * eps)
    theta = lookahead(names, params, sigma, lr_update * g * c, seed, noise)

    meta_loss = batch_loss(FunctionalModel(model, theta), batch)
    return MetaStepResult(meta_loss, plus, minus, g, sigma.detach(), c)


class FunctionalModel(nn.Module):
    """`model` evaluated at other parameter values (torch.func.functional_call), for code that calls modules."""

    def __init__(self, model: nn.Module, values: dict[str, Tensor]):
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_values", values)
        self.config = model.config

    def forward(self, *args, **kwargs):
        return functional_call(self._model, self._values, args, kwargs)
