"""HiZOO (Zhao et al., "Second-Order Fine-Tuning without Pain for LLMs: a Hessian Informed Zeroth-Order
Optimizer", ICLR 2025, arXiv 2402.15173): perturb along √Σ ⊙ z, Σ a smoothed diagonal curvature estimate.

One step, 3 forward passes: L0 = L(θ), L± = L(θ ± ε √Σ ⊙ z). Then, per element, as the authors' released trainer
does it (`zo_Hessian_step_update`):
    Σ ← (1 − α) Σ + α · |L+ + L− − 2 L0| / (2ε²) · z² / Σ      (then clamped to ≤ `max_sigma`)
    θ ← θ − lr · (L+ − L−) / (2ε) · √Σ ⊙ z                    (with the refreshed Σ)
Σ settles near the loss's curvature scale along the directions (about tr H / 2 on a quadratic) and multiplies the
step (√Σ in the perturbation and again in the update): where the curvature is large, lr must shrink by as much or
the run diverges; with the small α of the release's scripts Σ stays near 1 (MeZO plus one forward). Σ is one
float32 tensor per weight (the model's size again).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zolightning.optim.kernels import fused_shaped
from zolightning.optim.rules.base import ZORule
from zolightning.optim.rules.shaped import ShapedDirections


class HiZOO(ZORule):
    """Hessian-informed ZO-SGD. Learned block variance does not compose with it (both would set the same
    per-element scale), and its curvature pairs L0 with one direction: one query per step.

    Args:
        hessian_smooth: α, the smoothing of Σ (the release's scripts use 1e-8 to 1e-1; 1e-6 here).
        max_sigma: upper clamp of Σ (none in the release's trainer; later forks clamp to fp16's 65504).
    """

    name = "hizoo"
    splits_by_block = False  # its curvature estimate reads a third, centre forward of the whole model
    takes_queries = False
    takes_block_scales = False

    def __init__(self, hessian_smooth: float = 1e-6, max_sigma: float = math.inf):
        if not 0 <= hessian_smooth <= 1 or max_sigma <= 0:
            raise ValueError(
                f"HiZOO needs 0 <= hessian_smooth <= 1 and max_sigma > 0, got {hessian_smooth}, {max_sigma}"
            )
        self.hessian_smooth, self.max_sigma = hessian_smooth, max_sigma

    def directions(self, engine):
        return SigmaDirections(engine)

    def fuses(self, engine, queries: int) -> bool:
        return engine.directions.fuses(1)

    def schedule(self, optimizer, closure):
        if optimizer.engine.directions.fuses(1):
            return self._fused_step(optimizer, closure)
        return self._reference_step(optimizer, closure)

    def _reference_step(self, optimizer, closure):
        engine = optimizer.engine
        seed, scales = optimizer.query_seeds()[0], [1.0] * len(engine.tensors())
        loss_zero = float(closure())
        loss_plus, loss_minus = engine.probe(closure, seed, scales)
        engine.perturb(seed, +1.0, scales)
        g = engine.slope(loss_plus, loss_minus)
        curvature = abs(loss_plus + loss_minus - 2 * loss_zero) / (2 * engine.eps**2)
        if not (math.isfinite(g) and math.isfinite(curvature)):
            return optimizer.skip(loss_plus, loss_minus)
        alpha, sigmas = self.hessian_smooth, engine.directions
        for index, (group, p, part, start) in enumerate(engine.parts()):
            z, sigma = sigmas.normal(seed, index, tuple(part.shape), part, start=start), sigmas.sigma(p, part)
            estimate = z.square().div_(sigma).mul_(curvature)
            sigma.mul_(1 - alpha).add_(estimate, alpha=alpha).clamp_(max=self.max_sigma)
            wide = part.detach().to(sigma.dtype)
            if group["weight_decay"]:
                wide.mul_(1.0 - group["lr"] * group["weight_decay"])
            wide.sub_(z.mul_(sigma.sqrt()), alpha=group["lr"] * g)
            part.copy_(wide)
        return optimizer.completed(loss_plus, loss_minus, g)

    def _fused_step(self, optimizer, closure):
        """The same step in three passes: +ε√Σz, −2ε√Σz, then restore, refresh Σ and update in one. g and the
        curvature stay on the device (a non-finite one makes the last pass a plain restore with Σ kept)."""
        from zolightning.optim.optimizer import ZOStepOutput

        engine = optimizer.engine
        seed, scales = optimizer.query_seeds()[0], [1.0] * len(engine.tensors())
        on_device = lambda loss: torch.as_tensor(loss, device=engine.device).detach().double()  # noqa: E731
        loss_zero = on_device(closure())
        loss_plus, loss_minus = engine.probe(closure, seed, scales, on_device)
        g = engine.slope(loss_plus, loss_minus)
        curvature = (loss_plus + loss_minus - 2 * loss_zero).abs() / (2 * engine.eps**2)
        ok = torch.isfinite(g) & torch.isfinite(curvature)
        zero = torch.zeros_like(g)
        refresh = torch.stack(
            [torch.where(ok, self.hessian_smooth, zero), torch.where(ok, curvature, zero), zero + self.max_sigma]
        )
        alpha, mult = engine.directions.update_factors(g, ok)
        s = engine.vector(scales)
        engine.directions.fused_pass(seed, s * (engine.offset * engine.eps), alpha, mult, refresh)
        engine.offset = 0.0
        optimizer.num_steps += 1
        summary = torch.stack([(loss_plus + loss_minus) / 2, g, loss_plus, loss_minus, (~ok).double()]).float()
        if optimizer.sync:  # one read for the whole step
            loss, g, loss_plus, loss_minus, skipped = summary.tolist()
            engine.skips.add(bool(skipped))
            return ZOStepOutput(loss, g, loss_plus, loss_minus, bool(skipped))
        engine.skips.add(~ok)
        return ZOStepOutput(*summary[:4].unbind(), ~ok)


class SigmaDirections(ShapedDirections):
    """D = √Σ ⊙ z, Σ per element in the optimizer state (`sigma`, float32 or float64 like the weights' arithmetic;
    shaped like this process's part of the parameter)."""

    def sigma(self, p: Tensor, part: Tensor) -> Tensor:
        state = self.engine.state[p]
        if "sigma" not in state:
            wide = torch.promote_types(part.dtype, torch.float32)
            state["sigma"] = torch.ones(part.shape, dtype=wide, device=part.device)
        return state["sigma"]

    def direction(self, index: int, part: Tensor, start: int, seed: int) -> Tensor:
        p = self.engine.tensors()[index][1]
        return self.normal(seed, index, tuple(part.shape), part, start=start).mul_(self.sigma(p, part).sqrt())

    def fused_pass(self, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor, refresh: Tensor | None = None) -> None:
        params = self.engine.params()
        sigmas = [self.sigma(p, part) for (_, p), part in zip(self.engine.tensors(), params)]
        fused_shaped.hizoo_pass(params, sigmas, seed, pre, alpha, mult, refresh)
