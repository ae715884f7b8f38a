"""LearnedVariance: per-block perturbation scales c * sigma_i from the variance networks (method.md §2.1-2.3).

Plugged into ZOSGD as its `block_scales`. Each step: features of every block (mean, unbiased variance of
its weights, last step's L+ and L-, its last sigma) -> sigma = |PertNN(x)| for all blocks in one batched
product -> c from the normalisation -> one list of floats for the optimizer's passes. The history (L+, L-,
sigma) advances only on steps that were taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zolightning.variance.blocks import Block
from zolightning.variance.networks import BlockVarianceNets, normalisation_factor


def block_statistics(params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(mean [n], unbiased variance [n]) of each tensor, in float32; a 1-element tensor has variance 0."""
    pairs = [torch.var_mean(p.detach(), correction=1) for p in params]
    variance = torch.stack([v.float() for v, _ in pairs])
    mean = torch.stack([m.float() for _, m in pairs])
    return mean, torch.nan_to_num(variance, nan=0.0)


class LearnedVariance:
    """Block scales from learned networks, with the carried state of the published method.

    Args:
        nets: the networks, block i for the optimizer's i-th tensor.
        blocks: the blocks in the same order (effective sizes for the normalisation).
        normalize: rescale so that sum d~_i (c sigma_i)^2 = sum d~_i.
    """

    def __init__(self, nets: BlockVarianceNets, blocks: Sequence[Block], normalize: bool = True):
        if nets.num_blocks != len(blocks):
            raise ValueError(f"{nets.num_blocks} networks for {len(blocks)} blocks")
        self.nets, self.blocks, self.normalize = nets.float(), list(blocks), normalize
        self.effective_sizes = torch.tensor([b.effective_size for b in blocks], dtype=torch.float64)
        self.sigma_prev = torch.ones(len(blocks))
        self.loss_prev = (0.0, 0.0)
        self.last_sigma, self.last_c = self.sigma_prev, 1.0
        self._pending: Tensor | None = None

    def features(self, params: Sequence[Tensor]) -> Tensor:
        """[n, 5] inputs in the published order: mean, unbiased var, L+_{t-1}, L-_{t-1}, sigma_{t-1}."""
        mean, variance = block_statistics(params)
        device = mean.device
        losses = torch.tensor(self.loss_prev, device=device).expand(len(params), 2)
        return torch.cat([mean[:, None], variance[:, None], losses, self.sigma_prev.to(device)[:, None]], dim=1)

    @torch.no_grad()
    def scales(self, params: Sequence[Tensor]) -> list[float]:
        if len(params) != len(self.blocks):
            raise ValueError(f"the optimizer walks {len(params)} tensors, the variance has {len(self.blocks)} blocks")
        features = self.features(params)
        if self.effective_sizes.device != features.device:  # once: keep the hot path free of copies
            self.nets.to(features.device)
            self.effective_sizes = self.effective_sizes.to(features.device)
        sigma = self.nets(features)
        c = normalisation_factor(sigma, self.effective_sizes) if self.normalize else 1.0
        scales = (sigma.double() * c).tolist()  # the step's one host sync
        self._pending = sigma
        self.last_sigma, self.last_c = sigma, float(c)
        return scales

    def observe(self, loss_plus: float, loss_minus: float) -> None:
        """Called after a step that was taken: its losses and sigma become the next step's history."""
        self.loss_prev = (loss_plus, loss_minus)
        if self._pending is not None:
            self.sigma_prev = self._pending
            self._pending = None

    def state_dict(self) -> dict:
        return {"sigma_prev": self.sigma_prev.cpu(), "loss_prev": list(self.loss_prev)}

    def load_state_dict(self, state: dict) -> None:
        self.sigma_prev = state["sigma_prev"].clone()
        self.loss_prev = tuple(state["loss_prev"])


def learned_variance_for(
    path: str,
    model: torch.nn.Module,
    walk: Sequence[Tensor],
    batch_size: int,
    world_size: int = 1,
    normalize: bool = True,
) -> LearnedVariance:
    """Load a learned-optimizer file onto `model`, its networks ordered like the optimizer's walk."""
    from zolightning.variance.blocks import describe_blocks, trainable_named_parameters
    from zolightning.variance.file_format import LearnedOptimizerFile

    learned = LearnedOptimizerFile.load(path)
    named = trainable_named_parameters(model)
    learned.check_matches([(n, tuple(p.shape)) for n, p in named])
    by_id = {id(p): block for (_, p), block in zip(named, describe_blocks(model, batch_size, world_size))}
    blocks = [by_id[id(p)] for p in walk]
    return LearnedVariance(learned.nets_for([b.name for b in blocks]), blocks, normalize)


def sigma_by_kind(sigma: Tensor, kinds: Sequence[str]) -> dict[str, float]:
    """Mean sigma of each block family (attn_q, mlp, norm, embedding, ...), for logging."""
    out: dict[str, list[float]] = {}
    for kind, value in zip(kinds, sigma.tolist()):
        out.setdefault(kind, []).append(value)
    return {kind: sum(values) / len(values) for kind, values in out.items()}
