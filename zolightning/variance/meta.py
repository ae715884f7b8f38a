"""The math of one meta-training step (method.md §2.4, extended to a horizon of K ZO steps), without Lightning.

From weights theta_0, over K batches b_0..b_{K-1} (K = 1 is the published one-step look-ahead):
  for k < K:  sigma_k = |PertNN(features of theta_k)| with autograd on the networks; c_k from sigma_k;
              L+- at theta_k +- eps c_k sigma_k z_k on b_k, without autograd; g_k = (L+ - L-) / (2 eps);
              theta_{k+1} = theta_k - lr g_k c_k sigma_k (.) z_k
  meta-loss = mean_j L(theta_K; b_j), differentiable in the networks through every sigma_k.
The backpropagation is truncated as in the one-step objective: g_k and the features are constants (a finite
difference has no graph), so theta_K depends on sigma_k only through its own displacement. That dependence is
exact without keeping K copies of z: dL/dsigma_k[i] = -lr g_k c_k <dL/dtheta_K[i], z_k[i]>, with z_k regenerated
from its seed (the memory of one gradient, not K directions), and the meta-loss is backpropagated one batch at a
time (one batch's activations at a time). Every loss is a functional call: the model's weights are never written
(tied tensors stay tied because each tensor appears once, under its first name).

Why K > 1: one step rewards the largest safe single step (its loss is lowest where the step lands on this batch's
minimum); over K batches whose minima differ, the last iterate averages them only when the steps are smaller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from zolightning.optim.engine.noise import NoiseSource
from zolightning.variance.learned import block_statistics, network_inputs
from zolightning.variance.networks import normalisation_factor

BatchLoss = Callable[[nn.Module, dict], Tensor]


@dataclass
class InnerStep:
    """One of the unrolled ZO steps: its two losses, projected gradient, scales (detached) and c."""

    loss_plus: float
    loss_minus: float
    projected_grad: float
    sigma: Tensor
    c: float


@dataclass
class MetaStepResult:
    meta_loss: float  # mean over the K batches of L(theta_K; b_j); the networks' gradients are already accumulated
    steps: list[InnerStep] = field(default_factory=list)

    @property
    def zo_loss(self) -> float:
        """Mean of (L+ + L-)/2 over the unrolled steps: the loss the steps started from."""
        return sum((s.loss_plus + s.loss_minus) / 2 for s in self.steps) / len(self.steps)


def meta_features(params: Sequence[Tensor], losses_prev: Tensor, sigma_prev: Tensor) -> Tensor:
    """The networks' input per tensor: [mean, variance, L+_prev, L-_prev, sigma_prev] (method.md §2.3)."""
    return network_inputs(*block_statistics(params), losses_prev, sigma_prev)


def two_point_losses(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    scales: Tensor,
    eps: float,
    seed: int,
    noise: NoiseSource,
    batch_loss: BatchLoss,
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
    detach: bool = True,
) -> dict[str, Tensor]:
    """{name: theta_i - step_size * sigma_i * z_i}: graph to sigma (and to theta only where `detach` is off)."""
    directions = noise.directions(params, seed)
    return {
        name: (p.detach() if detach else p) - step_size * sigma[i].to(p.dtype) * z.to(p.dtype)
        for i, (name, p, z) in enumerate(zip(names, params, directions))
    }


def unrolled_meta_step(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    nets: nn.Module,
    history: tuple[Tensor, Tensor],
    effective_sizes: Tensor,
    batch_loss: BatchLoss,
    batches: Sequence[dict],
    eps: float,
    lr_update: float,
    seeds: Sequence[int],
    noise: NoiseSource,
    normalize: bool = True,
    backward: Callable[..., None] | None = Tensor.backward,
) -> MetaStepResult:
    """K = len(batches) ZO steps with the networks' scales, then the meta-loss backpropagated with `backward`
    (Lightning's `manual_backward`, say) into the networks' gradients; `backward=None` only evaluates.
    `history` = (L+-, sigma) of the step before theta_0, the networks' carried inputs."""
    horizon, train = len(batches), backward is not None
    losses_prev, sigma_prev = history
    values, steps, graphs = list(params), [], []
    for k, (batch, seed) in enumerate(zip(batches, seeds)):
        with torch.set_grad_enabled(train):
            sigma = nets(meta_features(values, losses_prev, sigma_prev))
        c = float(normalisation_factor(sigma.detach(), effective_sizes)) if normalize else 1.0
        plus, minus = two_point_losses(model, names, values, sigma.detach() * c, eps, seed, noise, batch_loss, batch)
        g = (plus - minus) / (2 * eps)
        steps.append(InnerStep(plus, minus, g, sigma.detach(), c))
        graphs.append((sigma, lr_update * g * c, seed))
        if k < horizon - 1:
            with torch.no_grad():
                values = list(lookahead(names, values, sigma.detach(), lr_update * g * c, seed, noise).values())
        losses_prev, sigma_prev = torch.tensor([plus, minus], device=sigma.device), sigma.detach()
    meta_loss = _final_loss(model, names, values, graphs, batch_loss, batches, noise, backward)
    return MetaStepResult(meta_loss, steps)


def _final_loss(model, names, values, graphs, batch_loss, batches, noise, backward) -> float:
    """mean_j L(theta_K; b_j), backpropagated batch by batch; the earlier steps' sigma get theirs from dL/dtheta_K."""
    horizon = len(batches)
    sigma, step_size, seed = graphs[-1]
    earlier = horizon > 1 and backward is not None
    base = [v.detach().requires_grad_() for v in values] if earlier else values
    with torch.set_grad_enabled(backward is not None):
        theta = lookahead(names, base, sigma, step_size, seed, noise, detach=not earlier)
        total = 0.0
        for j, batch in enumerate(batches):
            loss = batch_loss(FunctionalModel(model, theta), batch)
            loss = loss / horizon if horizon > 1 else loss  # K = 1: today's objective, bit for bit
            if backward is not None:
                backward(loss, retain_graph=j < horizon - 1)
            total += float(loss.detach())
    if earlier:
        for sigma_k, step_k, seed_k in graphs[:-1]:
            directions = noise.directions(base, seed_k)
            dots = torch.stack([(b.grad * z.to(b.dtype)).sum().to(sigma_k.dtype) for b, z in zip(base, directions)])
            torch.autograd.backward(sigma_k, -step_k * dots)
    return total


class FunctionalModel(nn.Module):
    """`model` evaluated at other parameter values (torch.func.functional_call), for code that calls modules."""

    def __init__(self, model: nn.Module, values: dict[str, Tensor]):
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_values", values)
        self.config = model.config

    def forward(self, *args, **kwargs):
        return functional_call(self._model, self._values, args, kwargs)
