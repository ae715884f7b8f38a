"""LOZO (Chen et al., "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank Structures", arXiv
2410.07698): matrices move along U Vᵀ, vectors along z; θ ← θ − lr·ĝ.

Tensors of 2 or more dimensions are seen as (shape[0], rest) matrices. U (m×r) is drawn from the step's seed, V (n×r)
from the seed of its window of `interval` steps, so it needs no saved state to resume. As in the authors' released
trainer (optsuite/LOZO, `lowrank_zo_step`), the estimate is g U Vᵀ with no 1/r factor: with r = 1 each entry of
U Vᵀ has unit variance, like z, and MeZO's lr carries over.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zolightning.optim.engine import updates
from zolightning.optim.engine.noise import step_seed
from zolightning.optim.kernels import fused_rules, fused_shaped
from zolightning.optim.kernels.fused_rules import PLAIN
from zolightning.optim.rules.base import ZORule
from zolightning.optim.rules.shaped import ShapedDirections

LAZY_TAG = 0x4C4F5A4F  # separates LOZO's V stream from the step seeds


class LOZO(ZORule):
    """Low-rank ZO-SGD.

    Args:
        rank: r, the rank of each matrix's perturbation (the release's script uses 1).
        interval: ν, steps between redraws of V (the release's script uses 100).
    """

    name = "lozo"
    splits_by_block = False  # its low-rank factors are drawn per matrix pair across the step

    def __init__(self, rank: int = 1, interval: int = 100):
        if rank < 1 or interval < 1:
            raise ValueError(f"LOZO needs rank >= 1 and interval >= 1, got {rank}, {interval}")
        self.rank, self.interval = rank, interval

    def directions(self, engine):
        return LowRankDirections(engine, self.rank, self.interval)

    def fuses(self, engine, queries: int) -> bool:
        return engine.directions.fuses(queries)

    def fused_update(self, engine, seeds, scales, g, ok, closure) -> None:
        if len(seeds) == 1:
            engine.directions.fused_update(seeds, scales, g, ok)
        else:
            engine.directions.fused_update_queries(seeds, scales, g, ok)

    def checkpoint_entries(self) -> dict:
        return {"lozo": {"rank": self.rank, "interval": self.interval}}

    def check_checkpoint(self, zo: dict) -> None:
        saved = zo.get("lozo", {"rank": self.rank, "interval": self.interval})
        if (saved["rank"], saved["interval"]) != (self.rank, self.interval):
            raise ValueError(
                f"the checkpoint was trained with LOZO {saved}, this run has rank={self.rank}, interval={self.interval}"
            )


class LowRankDirections(ShapedDirections):
    """D = U Vᵀ for matrices, z for the others; V is redrawn at each window of `interval` steps."""

    def __init__(self, engine, rank: int, interval: int):
        super().__init__(engine, fused_queries=True)
        self.rank, self.interval = rank, interval
        self._v_cache: dict[tuple[int, int], Tensor] = {}
        self._factors: fused_shaped.LowRankTables | None = None
        self._drawn: tuple = (None, None)  # the (step seed, window) whose U and V the factor buffers hold

    def window(self) -> int:
        return self.engine.num_steps // self.interval

    def _v(self, index: int, n: int, like: Tensor) -> Tensor:
        window = self.window()
        key = (window, index)
        if key not in self._v_cache:
            if self._v_cache and next(iter(self._v_cache))[0] != window:
                self._v_cache.clear()
            seed = step_seed(self.engine.seed ^ LAZY_TAG, window)
            self._v_cache[key] = self.normal(seed, index, (n, self.rank), like, slot=2).clone()
        return self._v_cache[key]

    def direction(self, index: int, part: Tensor, start: int, seed: int) -> Tensor:
        if part.dim() < 2:
            return self.normal(seed, index, tuple(part.shape), part, start=start)
        if part.numel() == 0:  # a rank past the last row holds nothing
            return torch.zeros_like(part, dtype=torch.promote_types(part.dtype, torch.float32))
        rows, width = part.shape[0], part[0].numel()  # a shard holds whole rows (FSDP2 splits dim 0)
        u = self.normal(seed, index, (rows, self.rank), part, start=start // width * self.rank)  # its rows of U
        return (u @ self._v(index, width, part).T).view(part.shape)

    def fused_pass(self, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor, refresh: Tensor | None = None) -> None:
        params = self.engine.params()
        if self._factors is None:
            self._factors = fused_shaped.LowRankTables(params, self.rank)
        window = self.window()
        if self._drawn[1] != window:
            self._factors.fill(self._factors.v, step_seed(self.engine.seed ^ LAZY_TAG, window))
        if self._drawn[0] != seed:
            self._factors.fill(self._factors.u, seed)
        self._drawn = (seed, window)
        fused_shaped.lowrank_pass(params, self._factors, seed, pre, alpha, mult)

    def fused_update_queries(self, seeds: list[int], scales, g, ok: Tensor | None) -> None:
        """q > 1: back at θ, then θ ← k·θ − lr·s·(Σ_j g_j/q U_j) Vᵀ for the matrices in one pass (U Vᵀ is linear in U,
        so the q queries' U are summed in the small factor buffer first) and k·θ − lr·s·Σ_j g_j/q z_j for the
        vectors in one multi-query rule pass over them alone."""
        engine = self.engine
        engine.perturb(seeds[-1], +1.0, scales)
        s, factors = engine.vector(scales), self._factors
        alpha, mult = self.update_factors(engine.vector([1.0]), ok)  # −lr and k per tensor (0 and 1 where not ok)
        weights = torch.as_tensor(g, dtype=torch.float64, device=s.device).reshape(-1) / len(seeds)
        total = torch.zeros_like(factors.u_flat)
        for seed, weight in zip(seeds, weights):
            factors.fill(factors.u, seed)
            total.add_(factors.u_flat * weight.float())
        factors.u_flat.copy_(total)
        self._drawn = (None, self._drawn[1])  # the buffer holds no query's U any more
        is_matrix = factors.is_matrix
        fused_shaped.lowrank_pass(
            engine.params(), factors, seeds[0], 0 * s, s * alpha * is_matrix, 1 + (mult - 1) * is_matrix
        )
        self._vector_update(seeds, scales, g, ok, mult)

    def _vector_update(self, seeds: list[int], scales, g, ok: Tensor | None, mult: Tensor) -> None:
        engine, vectors, index = self.engine, self._factors.vectors, self._factors.vector_index
        if not vectors:
            return
        params = engine.params()
        hyper = torch.zeros(len(vectors), fused_rules.HYPER_WIDTH, device=mult.device)  # the plain rule reads none
        coefficient = updates.coefficients(engine, scales, g).index_select(1, index)
        lrs = engine.lrs().index_select(0, index)
        flag = engine.vector([1.0]) if ok is None else ok
        fused_rules.update(
            [params[i] for i in vectors], [()] * len(vectors), PLAIN, seeds, 0 * coefficient, coefficient,
            lrs, mult.index_select(0, index), hyper, flag, keys=vectors,
        )  # fmt: skip
