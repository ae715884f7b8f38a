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

from zolightning.optim.engine.shards import is_sharded, local_shard, shard_group
from zolightning.variance.blocks import Block
from zolightning.variance.networks import BlockVarianceNets, normalisation_factor


def mean_and_variance(sums: Tensor, numels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, unbiased variance) in float32 from float64 [n, 2] (sum, sum of squares) and element counts."""
    total, squares = sums.unbind(1)
    mean = total / numels
    variance = ((squares - total * mean) / (numels - 1).clamp(min=1)).clamp(min=0)
    return mean.float(), variance.float()


def sharded_block_statistics(params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """block_statistics of FSDP2 shards: each rank sums its rows, the sums are added across the shard group."""
    import torch.distributed as dist

    groups = [shard_group(p) for p in params]
    group = next((g for g in groups if g is not None), None)
    leader = group is None or dist.get_rank(group) == 0
    rows = []
    for p, own_group in zip(params, groups):
        local = local_shard(p)[0].detach().double()
        if own_group is None and not leader:  # held whole by every rank: counted once
            local = local.new_zeros(0)
        rows.append(torch.stack([local.sum(), local.square().sum()]))
    sums = torch.stack(rows)
    if group is not None:
        dist.all_reduce(sums, group=group)
    numels = torch.tensor([p.numel() for p in params], dtype=torch.float64, device=sums.device)
    return mean_and_variance(sums, numels)


def block_statistics(params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(mean [n], unbiased variance [n]) of each tensor, in float32; a 1-element tensor has variance 0."""
    if any(is_sharded(p) for p in params):
        return sharded_block_statistics(params)
    pairs = [torch.var_mean(p.detach(), correction=1) for p in params]
    variance = torch.stack([v.float() for v, _ in pairs])
    mean = torch.stack([m.float() for _, m in pairs])
    return mean, torch.nan_to_num(variance, nan=0.0)


def network_inputs(mean: Tensor, variance: Tensor, losses_prev: Tensor, sigma_prev: Tensor) -> Tensor:
    """[n, 5] inputs of the block networks in the published order (method.md §2.3): mean, unbiased var,
    L+_{t-1}, L-_{t-1}, sigma_{t-1}; the one place that order is written (use and meta-training)."""
    losses = losses_prev.expand(len(mean), 2)
    return torch.cat([mean[:, None], variance[:, None], losses, sigma_prev[:, None]], dim=1)


class LearnedVariance:
    """Block scales from learned networks, with the carried state of the published method.

    The whole computation (statistics of every block, the networks, c) stays on the parameters' device
    and returns a tensor, so the step needs no host sync for it; on CUDA it is captured once in a CUDA
    graph and replayed (one launch instead of hundreds).

    Args:
        nets: the networks, block i for the optimizer's i-th tensor.
        blocks: the blocks in the same order (effective sizes for the normalisation).
        normalize: rescale so that sum d~_i (c sigma_i)^2 = sum d~_i.
        cuda_graph: capture the computation in a CUDA graph on CUDA devices.
        sigma_ceiling: cap every sigma_i at this multiple of the mean sigma over blocks, before the
            normalisation and the history (None: the published method). Not in the paper: SmolLM2's own files
            gave the tied embedding a sigma 5-10x the others, an expected step there 20-40x MeZO's at the same
            lr, and the runs diverged (docs/notebook.md); a ceiling bounds that block's share.
    """

    def __init__(
        self,
        nets: BlockVarianceNets,
        blocks: Sequence[Block],
        normalize: bool = True,
        cuda_graph: bool = True,
        sigma_ceiling: float | None = None,
    ):
        if nets.num_blocks != len(blocks):
            raise ValueError(f"{nets.num_blocks} networks for {len(blocks)} blocks")
        if sigma_ceiling is not None and not sigma_ceiling > 0:
            raise ValueError(f"sigma_ceiling must be a positive multiple of the mean sigma, got {sigma_ceiling}")
        self.nets, self.blocks, self.normalize, self.cuda_graph = nets.float(), list(blocks), normalize, cuda_graph
        self.sigma_ceiling = sigma_ceiling
        self.effective_sizes = torch.tensor([b.effective_size for b in blocks], dtype=torch.float64)
        self.sigma_prev = torch.ones(len(blocks))  # carried state, on the device once in use
        self.losses_prev = torch.zeros(2)  # L+_{t-1}, L-_{t-1}
        self.last_sigma, self._last_c = self.sigma_prev, torch.ones(())
        self._pending: Tensor | None = None
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[Tensor, Tensor, Tensor]]] = {}
        # (sum, sum of squares) per block as the optimizer last wrote them, and the weights' versions then
        self._sums: Tensor | None = None
        self._versions: list[int] | None = None

    @property
    def loss_prev(self) -> tuple[float, float]:
        return tuple(self.losses_prev.tolist())

    @property
    def last_c(self) -> float:
        return float(self._last_c)

    def observe_statistics(self, sums: Tensor, params: Sequence[Tensor]) -> None:
        """The optimizer's update pass reports (sum, sum of squares) of every block it wrote: the next step's
        mean and variance come from them, without another pass over the weights, while the weights' version
        counters show that nothing else has written them since."""
        if self._sums is None or self._sums.device != sums.device:
            self._sums = torch.zeros_like(sums, dtype=torch.float64)
            self._numels = torch.tensor([p.numel() for p in params], dtype=torch.float64, device=sums.device)
        self._sums.copy_(sums)  # fixed buffers: the CUDA graph reads them
        self._versions = [p._version for p in params]

    def _sums_current(self, params: Sequence[Tensor]) -> bool:
        return self._versions is not None and self._versions == [p._version for p in params]

    def _statistics_from_sums(self, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return mean_and_variance(self._sums, self._numels)

    def features(self, params: Sequence[Tensor], from_sums: bool = False) -> Tensor:
        """[n, 5] inputs in the published order: mean, unbiased var, L+_{t-1}, L-_{t-1}, sigma_{t-1}."""
        mean, variance = self._statistics_from_sums(params) if from_sums else block_statistics(params)
        return network_inputs(mean, variance, self.losses_prev, self.sigma_prev)

    def _compute(self, params: Sequence[Tensor], from_sums: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        sigma = self.nets(self.features(params, from_sums))
        if self.sigma_ceiling is not None:  # the mean, not the median: plain reductions stay capturable
            sigma = torch.minimum(sigma, self.sigma_ceiling * sigma.mean())
        c = (
            normalisation_factor(sigma, self.effective_sizes)
            if self.normalize
            else torch.ones((), dtype=torch.float64, device=sigma.device)
        )
        return sigma, c, (sigma.double() * c).float()

    def _to(self, device: torch.device) -> None:
        self.nets.to(device)
        self.effective_sizes = self.effective_sizes.to(device)
        self.sigma_prev = self.sigma_prev.to(device)
        self.losses_prev = self.losses_prev.to(device)
        self._graphs.clear()
        self._sums, self._versions = None, None

    def _replay(self, params: Sequence[Tensor], from_sums: bool) -> tuple[Tensor, Tensor, Tensor]:
        key = (tuple(id(p) for p in params), from_sums)
        if key not in self._graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._compute(params, from_sums)  # warm-up outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static = self._compute(params, from_sums)
            self._graphs[key] = (graph, static)
        graph, static = self._graphs[key]
        graph.replay()
        return static

    @torch.no_grad()
    def scales(self, params: Sequence[Tensor]) -> Tensor:
        """c * sigma_i for every block, a float32 vector on the parameters' device."""
        if len(params) != len(self.blocks):
            raise ValueError(f"the optimizer walks {len(params)} tensors, the variance has {len(self.blocks)} blocks")
        device = params[0].device
        if self.sigma_prev.device != device:
            self._to(device)
        use_graph = self.cuda_graph and device.type == "cuda" and not is_sharded(params[0])  # no collectives in it
        from_sums = self._sums_current(params)
        sigma, c, scales = self._replay(params, from_sums) if use_graph else self._compute(params, from_sums)
        self._pending, self.last_sigma, self._last_c = sigma, sigma, c
        return scales

    def observe(self, loss_plus: float, loss_minus: float) -> None:
        """Called after a step that was taken: its losses and sigma become the next step's history."""
        # In place, on the device (fill_ takes host scalars without a sync): the CUDA graph reads these buffers.
        self.losses_prev[0].fill_(loss_plus)
        self.losses_prev[1].fill_(loss_minus)
        if self._pending is not None:
            self.sigma_prev.copy_(self._pending)
            self._pending = None

    def state_dict(self) -> dict:
        return {"sigma_prev": self.sigma_prev.cpu(), "loss_prev": list(self.loss_prev)}

    def load_state_dict(self, state: dict) -> None:
        self.sigma_prev.copy_(state["sigma_prev"])
        self.losses_prev.copy_(torch.tensor(state["loss_prev"]))


def learned_variance_for(
    path: str,
    model: torch.nn.Module,
    walk: Sequence[Tensor],
    batch_size: int,
    world_size: int = 1,
    normalize: bool = True,
    sigma_ceiling: float | None = None,
) -> LearnedVariance:
    """Load a learned-optimizer file onto `model`, its networks ordered like the optimizer's walk."""
    from zolightning.variance.blocks import describe_blocks, trainable_named_parameters
    from zolightning.variance.file_format import LearnedOptimizerFile

    learned = LearnedOptimizerFile.load(path)
    named = trainable_named_parameters(model)
    learned.check_matches([(n, tuple(p.shape)) for n, p in named])
    by_id = {id(p): block for (_, p), block in zip(named, describe_blocks(model, batch_size, world_size))}
    blocks = [by_id[id(p)] for p in walk]
    return LearnedVariance(learned.nets_for([b.name for b in blocks]), blocks, normalize, sigma_ceiling=sigma_ceiling)


def sigma_by_kind(sigma: Tensor, kinds: Sequence[str]) -> dict[str, float]:
    """Mean sigma of each block family (attn_q, mlp, norm, embedding, ...), for logging."""
    out: dict[str, list[float]] = {}
    for kind, value in zip(kinds, sigma.tolist()):
        out.setdefault(kind, []).append(value)
    return {kind: sum(values) / len(values) for kind, values in out.items()}
