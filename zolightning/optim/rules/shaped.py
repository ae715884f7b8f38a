"""Direction sources for rules whose directions are not s⊙z: the engine perturbs and estimates along D instead.

A source serves one engine: `direction(index, part, start, seed)` is D of tensor `index` (of its part from flat
element `start` on, for shards) for a step seed: the PyTorch reference, tensor by tensor. `fused_pass(seed, pre,
alpha, mult)` moves every tensor in one launch (`kernels/fused_shaped.py`): w ← mult·round(w − pre·D_old) +
alpha·D_new. z is the engine's noise, so both paths move along the same directions.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from torch import Tensor

from zolightning.optim.engine.engine import move_tensor


class ShapedDirections:
    """Base of the direction sources; subclasses define `direction` and `fused_pass`."""

    def __init__(self, engine, fused_queries: bool = False):
        # a weak reference: the engine holds this source, and a cycle would keep a dropped optimizer's states
        # (HiZOO's Σ: the model's size in float32) alive until the next garbage collection (seen on the GPU)
        self.engine, self.fused_queries = weakref.proxy(engine), fused_queries

    def fuses(self, queries: int) -> bool:
        """The fused passes address whole tensors: sharded weights take the reference passes."""
        return self.engine.fuses() and not self.engine.sharded and (queries == 1 or self.fused_queries)

    def normal(self, seed: int, index: int, shape: tuple[int, ...], like: Tensor, slot: int = 1, start: int = 0):
        """N(0, 1) of `shape`, a function of (seed, tensor index) alone (from element `start` of the whole draw on),
        in the arithmetic dtype of `like` (float32, or float64 for float64 weights). Philox draws may live in a
        scratch buffer (`slot`): use them at once."""
        engine = self.engine
        z = engine.noise.normal(seed, index, shape, like.device, engine.scratch, slot, start)
        return z.to(torch.promote_types(like.dtype, torch.float32))

    def direction(self, index: int, part: Tensor, start: int, seed: int) -> Tensor:
        raise NotImplementedError

    def fused_pass(self, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor, refresh: Tensor | None = None) -> None:
        raise NotImplementedError

    def move(self, seed: int, scales, offset: float) -> None:
        """The engine's shift along D: from θ + engine.offset·ε·s⊙D to θ + offset·ε·s⊙D."""
        engine = self.engine
        if self.fuses(1):  # (a rule that fuses q > 1 moves along the last query's D here too)
            s = engine.vector(scales)
            ones = engine.per_group([1.0] * len(engine.groups))  # cached: no fill per pass
            self.fused_pass(seed, s * (engine.offset * engine.eps), s * (offset * engine.eps), ones)
            return
        factor = offset - engine.offset
        scale_list = scales.tolist() if torch.is_tensor(scales) else list(scales)
        for index, ((_, _, part, start), s) in enumerate(zip(engine.parts(), scale_list)):
            move_tensor(part, self.direction(index, part, start, seed), factor * engine.eps * s)

    def estimates(self, probes: list[tuple[int, float]], scales) -> Iterator[tuple[dict, Tensor, Tensor, Tensor]]:
        """As `updates.estimates`: (group, parameter, part, ĝ of the part) along D."""
        scale_list = scales.tolist() if torch.is_tensor(scales) else list(scales)
        for index, ((group, p, part, start), s) in enumerate(zip(self.engine.parts(), scale_list)):
            grad = torch.zeros(part.shape, dtype=torch.promote_types(part.dtype, torch.float32), device=part.device)
            for seed, g in probes:
                grad.add_(self.direction(index, part, start, seed), alpha=g)
            yield group, p, part, grad.mul_(s / len(probes))

    def update_factors(self, g: Tensor | list[float], ok: Tensor | None) -> tuple[Tensor, Tensor]:
        """(alpha, mult) of the update pass: θ ← k·θ − lr·g·D per group, or a plain restore where `ok` is False."""
        g = g[0] if isinstance(g, list) else g.reshape(())
        lr, k = self.engine.lrs(torch.float64), self.engine.decays()
        if ok is None:
            return (lr * -g).float(), k
        return (lr * torch.where(ok, -g, 0.0)).float(), torch.where(ok, k, 1.0)

    def fused_update(self, seeds: list[int], scales, g, ok: Tensor | None) -> None:
        """One query: restore and update along D in one pass."""
        engine = self.engine
        s = engine.vector(scales)
        alpha, mult = self.update_factors(g, ok)
        self.fused_pass(seeds[0], s * (engine.offset * engine.eps), s * alpha, mult)
        engine.offset = 0.0
