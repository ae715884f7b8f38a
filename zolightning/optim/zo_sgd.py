"""ZOSGD: zeroth-order SGD (MeZO) as a `torch.optim.Optimizer` whose `step(closure)` does all the work."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer

from zolightning.optim.noise import NoiseSource, step_seed


class BlockScales(Protocol):
    """Per-tensor perturbation multipliers (1 everywhere is MeZO); see the learned-variance issue."""

    def scales(self, params: Sequence[Tensor]) -> Sequence[float]: ...

    def observe(self, loss_plus: float, loss_minus: float) -> None: ...


class ZOStepOutput(NamedTuple):
    loss: float  # (L+ + L-) / 2, the loss near the current weights
    projected_grad: float  # g = (L+ - L-) / (2 eps)
    loss_plus: float
    loss_minus: float
    skipped: bool  # a non-finite loss: weights restored, no update


def _axpy(p: Tensor, z: Tensor, alpha: float) -> None:
    """p += alpha * z with the arithmetic in float32 (or p's wider dtype) and one rounding."""
    if p.dtype in (torch.float32, torch.float64):
        p.add_(z, alpha=alpha)
    else:
        p.copy_(torch.add(p.float(), z, alpha=alpha))


class ZOSGD(Optimizer):
    """Memory-efficient zeroth-order SGD (MeZO, arXiv 2305.17333), in place.

    Each `step(closure)`: theta + eps z -> L+ -> theta - eps z -> L- -> restore and update with
    g = (L+ - L-) / (2 eps). The restore and the update are one pass: theta += (eps - lr g) z.
    z is never stored: it is regenerated from (seed, step) for each pass (see `noise.py`).

    Args:
        params: tensors or parameter groups; groups may set their own `lr` and `weight_decay`.
        lr: learning rate eta.
        eps: perturbation scale epsilon.
        weight_decay: decoupled L2 factor, theta -= lr * weight_decay * theta on each update.
        seed: run seed; the noise of step t is a function of (seed, t) alone.
        block_scales: optional per-tensor multipliers of z (learned block variance); None means 1.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_scales: BlockScales | None = None,
    ):
        if lr < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"need lr >= 0, eps > 0, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.eps, self.seed, self.block_scales = eps, seed, block_scales
        self.num_steps, self.num_skipped, self.consecutive_skipped = 0, 0, 0
        self._noise = NoiseSource()

    def _tensors(self) -> list[tuple[dict, Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    def _perturb(self, seed: int, factor: float, scales: Sequence[float]) -> None:
        tensors = self._tensors()
        z_iter = self._noise.directions([p for _, p in tensors], seed)
        for (_, p), z, s in zip(tensors, z_iter, scales):
            _axpy(p, z, factor * self.eps * s)

    def _restore_and_update(self, seed: int, g: float, scales: Sequence[float]) -> None:
        tensors = self._tensors()
        z_iter = self._noise.directions([p for _, p in tensors], seed)
        for (group, p), z, s in zip(tensors, z_iter, scales):
            # Currently at theta - eps s z; theta_new = k theta - lr g s z with k = 1 - lr wd.
            k = 1.0 - group["lr"] * group["weight_decay"]
            if k != 1.0:
                p.mul_(k)
            _axpy(p, z, s * (k * self.eps - group["lr"] * g))

    def _scales(self, params: list[Tensor]) -> list[float]:
        return list(self.block_scales.scales(params)) if self.block_scales else [1.0] * len(params)

    def _skip(self, loss_plus: float = math.nan, loss_minus: float = math.nan) -> ZOStepOutput:
        self.num_skipped += 1
        self.consecutive_skipped += 1
        self.num_steps += 1
        return ZOStepOutput((loss_plus + loss_minus) / 2, math.nan, loss_plus, loss_minus, True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor | float]) -> ZOStepOutput:  # type: ignore[override]
        """One ZO step. `closure()` returns the minibatch loss at the current weights (no backward).

        A non-finite block scale or loss never reaches the weights: the step is skipped (weights
        restored, no update, history unchanged) and counted in `num_skipped` / `consecutive_skipped`.
        """
        if closure is None:
            raise ValueError("ZOSGD.step needs a closure returning the loss; it never reads .grad")
        seed = step_seed(self.seed, self.num_steps)
        scales = self._scales([p for _, p in self._tensors()])
        if not all(math.isfinite(s) for s in scales):
            return self._skip()
        self._perturb(seed, +1.0, scales)
        loss_plus = float(closure())
        self._perturb(seed, -2.0, scales)
        loss_minus = float(closure())
        g = (loss_plus - loss_minus) / (2 * self.eps)
        if not math.isfinite(g):
            self._perturb(seed, +1.0, scales)
            return self._skip(loss_plus, loss_minus)
        self._restore_and_update(seed, g, scales)
        if self.block_scales:
            self.block_scales.observe(loss_plus, loss_minus)
        self.num_steps += 1
        self.consecutive_skipped = 0
        return ZOStepOutput((loss_plus + loss_minus) / 2, g, loss_plus, loss_minus, False)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"] = {
            "num_steps": self.num_steps,
            "num_skipped": self.num_skipped,
            "seed": self.seed,
            "eps": self.eps,
            "consecutive_skipped": self.consecutive_skipped,
        }
        if self.block_scales is not None and hasattr(self.block_scales, "state_dict"):
            state["zo"]["block_scales"] = self.block_scales.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        super().load_state_dict(state_dict)
        if zo is not None:
            self.num_steps, self.num_skipped = zo["num_steps"], zo["num_skipped"]
            self.seed, self.eps = zo["seed"], zo["eps"]
            self.consecutive_skipped = zo.get("consecutive_skipped", 0)
            if "block_scales" in zo and self.block_scales is not None:
                self.block_scales.load_state_dict(zo["block_scales"])
