"""The per-block variance networks, all blocks evaluated at once.

Block i has PertNN_i = Linear(5, H) -> Tanh -> Linear(H, 1); sigma_i = |PertNN_i(x_i)|. The n networks are
stored stacked (w1 [n, H, 5], b1 [n, H], w2 [n, H], b2 [n]) so one batched product evaluates them all.
Initialisation matches torch.nn.Linear's default, block by block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

FEATURES = ("mean", "unbiased_var", "loss_plus_prev", "loss_minus_prev", "sigma_prev")
HIDDEN = 64


class BlockVarianceNets(nn.Module):
    """n independent Linear(5, H)-Tanh-Linear(H, 1) networks, evaluated as one batched product."""

    def __init__(self, num_blocks: int, hidden: int = HIDDEN, generator: torch.Generator | None = None):
        super().__init__()
        self.num_blocks, self.hidden = num_blocks, hidden
        self.w1 = nn.Parameter(torch.empty(num_blocks, hidden, len(FEATURES)))
        self.b1 = nn.Parameter(torch.empty(num_blocks, hidden))
        self.w2 = nn.Parameter(torch.empty(num_blocks, hidden))
        self.b2 = nn.Parameter(torch.empty(num_blocks))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # nn.Linear's default: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for tensor, fan_in in (
            (self.w1, len(FEATURES)),
            (self.b1, len(FEATURES)),
            (self.w2, self.hidden),
            (self.b2, self.hidden),
        ):
            bound = 1.0 / math.sqrt(fan_in)
            tensor.uniform_(-bound, bound, generator=generator)

    def forward(self, features: Tensor) -> Tensor:
        """features [n, 5] -> sigma [n] (non-negative)."""
        hidden = torch.tanh(torch.einsum("nhf,nf->nh", self.w1, features.to(self.w1.dtype)) + self.b1)
        return ((hidden * self.w2).sum(dim=1) + self.b2).abs()

    def as_sequentials(self) -> list[nn.Sequential]:
        """Block i's network as the reference's Sequential(Linear(5, H), Tanh(), Linear(H, 1))."""
        nets = []
        for i in range(self.num_blocks):
            net = nn.Sequential(nn.Linear(len(FEATURES), self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))
            with torch.no_grad():
                net[0].weight.copy_(self.w1[i])
                net[0].bias.copy_(self.b1[i])
                net[2].weight.copy_(self.w2[i].unsqueeze(0))
                net[2].bias.copy_(self.b2[i].unsqueeze(0))
            nets.append(net)
        return nets

    @classmethod
    def from_sequentials(cls, nets: list[nn.Sequential]) -> BlockVarianceNets:
        """Stack reference-style Sequentials (checked to be Linear(5, H), Tanh, Linear(H, 1))."""
        hidden = nets[0][0].out_features
        stacked = cls(len(nets), hidden)
        with torch.no_grad():
            for i, net in enumerate(nets):
                first, last = net[0], net[2]
                if (first.in_features, first.out_features, last.in_features, last.out_features) != (
                    len(FEATURES),
                    hidden,
                    hidden,
                    1,
                ) or not isinstance(net[1], nn.Tanh):
                    raise ValueError(f"network {i} is not Linear({len(FEATURES)}, {hidden}), Tanh, Linear({hidden}, 1)")
                stacked.w1[i].copy_(first.weight)
                stacked.b1[i].copy_(first.bias)
                stacked.w2[i].copy_(last.weight[0])
                stacked.b2[i].copy_(last.bias[0])
        return stacked


def normalisation_factor(sigma: Tensor, effective_sizes: Tensor) -> Tensor:
    """c = sqrt(sum d~) / sqrt(sum d~ sigma^2): keeps the total perturbation size that of N(0, I)."""
    sizes = effective_sizes.to(torch.float64)
    return (sizes.sum() / (sizes * sigma.to(torch.float64) ** 2).sum()).sqrt()
