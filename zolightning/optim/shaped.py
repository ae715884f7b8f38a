"""ZO optimizers whose directions are not s ⊙ z: HiZOO's diagonal preconditioning and LOZO's low-rank UVᵀ.

Both keep EstimatedZO's engine (seeded directions regenerated per pass, never stored whole; the skip of
non-finite steps; exact resume) and change only what direction D_i tensor i moves along:

- HiZOO (Zhao et al., "Second-Order Fine-Tuning without Pain for LLMs: a Hessian Informed Zeroth-Order
  Optimizer", ICLR 2025, arXiv 2402.15173): D = √Σ ⊙ z with a per-element Σ (init 1) refreshed each step from
  the second difference of three forward passes.
- LOZO (Chen et al., "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank Structures",
  arXiv 2410.07698): D = U Vᵀ for matrices (U m×r fresh each step, V n×r redrawn every ν steps: the lazy
  subspace), plain z for vectors.

Where the paper's text leaves a detail open, the authors' released trainers decide (named in each class).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from zolightning.optim import fused_rules, fused_shaped
from zolightning.optim.estimated import EstimatedZO
from zolightning.optim.noise import step_seed
from zolightning.optim.perturbation import add_normal
from zolightning.optim.zo_sgd import ZOStepOutput, _axpy

_LAZY_TAG = 0x4C4F5A4F  # separates LOZO's V stream from the step seeds


class ShapedZO(EstimatedZO):
    """Base: subclasses define `direction(index, p, seed)`; perturbation and estimate both go through it."""

    def normal(self, seed: int, index: int, shape: tuple[int, ...], like: Tensor, slot: int = 1) -> Tensor:
        """N(0, 1) of `shape`, a function of (seed, tensor index) alone, drawn in float32 and returned in the
        arithmetic dtype of `like` (float32, or float64 for float64 weights). With philox noise the result may
        live in a scratch buffer (`slot`) that the next draw of the same shape overwrites: use it at once."""
        device = like.device
        if self.noise == "philox":
            z = self.scratch.zeros(shape, torch.float32, device, slot)
            add_normal(z, seed, index, self._vector([1.0]))
        else:
            generator = torch.Generator(device=device).manual_seed(step_seed(seed, index))
            z = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        return z.to(torch.promote_types(like.dtype, torch.float32))

    def direction(self, index: int, p: Tensor, seed: int) -> Tensor:
        raise NotImplementedError

    def _scale_list(self, scales) -> list[float]:
        return scales.tolist() if torch.is_tensor(scales) else list(scales)

    def _perturb(self, seed: int, factor: float, scales) -> None:
        if self._fuses():
            s, offset = self._vector(scales), self._offset + factor
            ones = self._per_group([1.0] * len(self.param_groups))  # cached: no fill per pass
            self.shaped_pass(seed, s * (self._offset * self.eps), s * (offset * self.eps), ones)
            self._offset = offset
            return
        for index, ((_, p), s) in enumerate(zip(self._tensors(), self._scale_list(scales))):
            _axpy(p, self.direction(index, p, seed), factor * self.eps * s)

    # ---- the fused path: one launch per pass (`fused_shaped.py`); philox noise -----------------------
    DEVICE_STEP = True  # the fused path may keep g on the device; the tensor-by-tensor path reads it anyway
    FUSED_QUERIES = False  # whether the fused update takes q > 1 queries (LOZO's does)

    def _fuses(self) -> bool:
        if not hasattr(self, "_fusable"):  # the tensors never change: decide once
            tensors = [p for _, p in self._tensors()]
            queries_ok = self.queries == 1 or self.FUSED_QUERIES
            self._fusable = self.noise == "philox" and queries_ok and fused_shaped.usable(tensors)
        return self._fusable

    def shaped_pass(self, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor, refresh: Tensor | None = None) -> None:
        """All tensors: w <- mult·round(w − pre·D_old) + alpha·D_new (per-tensor vectors; see fused_shaped)."""
        raise NotImplementedError

    def _update_factors(self, g: Tensor | list[float], ok: Tensor | None) -> tuple[Tensor, Tensor]:
        """(alpha, mult) of the update pass: θ ← k·θ − lr·g·D per group, or a plain restore where `ok` is False."""
        g = g[0] if isinstance(g, list) else g.reshape(())
        lr = self._per_group([group["lr"] for group in self.param_groups], torch.float64)
        k = self._per_group([1.0 - group["lr"] * group["weight_decay"] for group in self.param_groups])
        if ok is None:
            return (lr * -g).float(), k
        return (lr * torch.where(ok, -g, 0.0)).float(), torch.where(ok, k, 1.0)

    def _fused_update(self, seeds: list[int], scales, g, ok: Tensor | None) -> None:
        s = self._vector(scales)
        alpha, mult = self._update_factors(g, ok)
        self.shaped_pass(seeds[0], s * (self._offset * self.eps), s * alpha, mult)
        self._offset = 0.0

    def gradient_estimates(self, estimates: list[tuple[int, float]], scales) -> Iterator[tuple[dict, Tensor, Tensor]]:
        for index, ((group, p), s) in enumerate(zip(self._tensors(), self._scale_list(scales))):
            grad = torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
            for seed, g in estimates:
                grad.add_(self.direction(index, p, seed), alpha=g)
            yield group, p, grad.mul_(s / len(estimates))

    def update(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        return grad  # plain SGD on the shaped estimate


class LOZO(ShapedZO):
    """Low-rank ZO-SGD (LOZO): matrices move along U Vᵀ, vectors along z; θ ← θ − lr ĝ.

    Tensors of 2 or more dimensions are seen as (shape[0], rest) matrices. U (m×r) is drawn from the step's
    seed, V (n×r) from the seed of its window of `interval` steps, so it needs no saved state to resume. As in
    the authors' released trainer (optsuite/LOZO, `lowrank_zo_step`), the estimate is g U Vᵀ with no 1/r
    factor: with r = 1 each entry of U Vᵀ has unit variance, like z, and MeZO's lr carries over.

    Args (beyond EstimatedZO's):
        rank: r, the rank of each matrix's perturbation (the release's script uses 1).
        interval: ν, steps between redraws of V (the release's script uses 100).
    """

    FUSED_QUERIES = True

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, rank: int = 1, interval: int = 100, **kwargs):
        if rank < 1 or interval < 1:
            raise ValueError(f"LOZO needs rank >= 1 and interval >= 1, got {rank}, {interval}")
        super().__init__(params, lr=lr, eps=eps, **kwargs)
        self.rank, self.interval = rank, interval
        self._v_cache: dict[tuple[int, int], Tensor] = {}

    def _v(self, index: int, n: int, like: Tensor) -> Tensor:
        window = self.num_steps // self.interval
        key = (window, index)
        if key not in self._v_cache:
            if self._v_cache and next(iter(self._v_cache))[0] != window:
                self._v_cache.clear()
            seed = step_seed(self.seed ^ _LAZY_TAG, window)
            self._v_cache[key] = self.normal(seed, index, (n, self.rank), like, slot=2).clone()
        return self._v_cache[key]

    def shaped_pass(self, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor, refresh: Tensor | None = None) -> None:
        params = self._params()
        if getattr(self, "_factors", None) is None:
            self._factors, self._drawn = fused_shaped.LowRankTables(params, self.rank), (None, None)
        window = self.num_steps // self.interval
        if self._drawn[1] != window:
            self._factors.fill(self._factors.v, step_seed(self.seed ^ _LAZY_TAG, window))
        if self._drawn[0] != seed:
            self._factors.fill(self._factors.u, seed)
        self._drawn = (seed, window)
        fused_shaped.lowrank_pass(params, self._factors, seed, pre, alpha, mult)

    def _fused_update(self, seeds: list[int], scales, g, ok: Tensor | None) -> None:
        """q > 1: back at θ, then θ ← k·θ − lr·s·(Σ_j g_j/q U_j) Vᵀ for the matrices in one pass (U Vᵀ is linear in U,
        so the q queries' U are summed in the small factor buffer first) and k·θ − lr·s·Σ_j g_j/q z_j for the
        vectors in one multi-query rule pass over them alone."""
        if len(seeds) == 1:
            return super()._fused_update(seeds, scales, g, ok)
        self._perturb(seeds[-1], +1.0, scales)
        s, factors = self._vector(scales), self._factors
        alpha, mult = self._update_factors(self._vector([1.0]), ok)  # −lr and k per tensor (0 and 1 where not ok)
        weights = torch.as_tensor(g, dtype=torch.float64, device=s.device).reshape(-1) / len(seeds)
        total = torch.zeros_like(factors.u_flat)
        for seed, weight in zip(seeds, weights):
            factors.fill(factors.u, seed)
            total.add_(factors.u_flat * weight.float())
        factors.u_flat.copy_(total)
        self._drawn = (None, self._drawn[1])  # the buffer holds no query's U any more
        is_matrix = factors.is_matrix
        fused_shaped.lowrank_pass(
            self._params(), factors, seeds[0], 0 * s, s * alpha * is_matrix, 1 + (mult - 1) * is_matrix
        )
        self._vector_update(seeds, scales, g, ok, mult)

    def _vector_update(self, seeds: list[int], scales, g, ok: Tensor | None, mult: Tensor) -> None:
        params, vectors, index = self._params(), self._factors.vectors, self._factors.vector_index
        if not vectors:
            return
        hyper = torch.zeros(len(vectors), fused_rules.HYPER_WIDTH, device=mult.device)  # the plain rule reads none
        coefficient = self._coefficients(scales, g).index_select(1, index)
        lrs = self._per_group([group["lr"] for group in self.param_groups]).index_select(0, index)
        flag = self._vector([1.0]) if ok is None else ok
        fused_rules.update(
            [params[i] for i in vectors], [()] * len(vectors), "plain", seeds, 0 * coefficient, coefficient,
            lrs, mult.index_select(0, index), hyper, flag, keys=vectors,
        )  # fmt: skip

    def direction(self, index: int, p: Tensor, seed: int) -> Tensor:
        if p.dim() < 2:
            return self.normal(seed, index, tuple(p.shape), p)
        m = p.shape[0]
        u = self.normal(seed, index, (m, self.rank), p)
        return (u @ self._v(index, p.numel() // m, p).T).view(p.shape)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"]["lozo"] = {"rank": self.rank, "interval": self.interval}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("zo", {}).get("lozo", {"rank": self.rank, "interval": self.interval})
        if (saved["rank"], saved["interval"]) != (self.rank, self.interval):
            raise ValueError(
                f"the checkpoint was trained with LOZO {saved}, this run has rank={self.rank}, interval={self.interval}"
            )
        super().load_state_dict(state_dict)


class HiZOO(ShapedZO):
    """Hessian-informed ZO-SGD (HiZOO): perturb along √Σ ⊙ z, Σ a smoothed diagonal curvature estimate.

    One step, 3 forward passes: L0 = L(θ), L± = L(θ ± ε √Σ ⊙ z). Then, per element, as the authors' released
    trainer does it (`zo_Hessian_step_update`):
        Σ ← (1 − α) Σ + α · |L+ + L− − 2 L0| / (2ε²) · z² / Σ      (then clamped to ≤ `max_sigma`)
        θ ← θ − lr · (L+ − L−) / (2ε) · √Σ ⊙ z                    (with the refreshed Σ)
    Σ settles near the loss's curvature scale along the directions (about tr H / 2 on a quadratic) and multiplies
    the step (√Σ in the perturbation and again in the update): where the curvature is large, lr must shrink by
    as much or the run diverges; with the small α of the release's scripts Σ stays near 1 (MeZO plus one
    forward). Σ is one float32 tensor per weight (the model's size again). Learned block variance does not compose with
    it (both would set the same per-element scale), so `block_scales` is refused; one query per step.

    Args (beyond EstimatedZO's):
        hessian_smooth: α, the smoothing of Σ (the release's scripts use 1e-8 to 1e-1; 1e-6 here).
        max_sigma: upper clamp of Σ (none in the release's trainer; later forks clamp to fp16's 65504).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        hessian_smooth: float = 1e-6,
        max_sigma: float = math.inf,
        **kwargs,
    ):
        if not 0 <= hessian_smooth <= 1 or max_sigma <= 0:
            raise ValueError(
                f"HiZOO needs 0 <= hessian_smooth <= 1 and max_sigma > 0, got {hessian_smooth}, {max_sigma}"
            )
        if kwargs.get("block_scales") is not None:
            raise ValueError("HiZOO sets a per-element perturbation scale itself; it does not take block_scales")
        if kwargs.get("queries", 1) != 1:
            raise ValueError("HiZOO takes one query per step (its curvature estimate pairs L0 with one direction)")
        super().__init__(params, lr=lr, eps=eps, **kwargs)
        self.hessian_smooth, self.max_sigma = hessian_smooth, max_sigma

    def _sigma(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "sigma" not in state:
            state["sigma"] = torch.ones(p.shape, dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
        return state["sigma"]

    def direction(self, index: int, p: Tensor, seed: int) -> Tensor:
        return self.normal(seed, index, tuple(p.shape), p).mul_(self._sigma(p).sqrt())

    def shaped_pass(self, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor, refresh: Tensor | None = None) -> None:
        params = self._params()
        fused_shaped.hizoo_pass(params, [self._sigma(p) for p in params], seed, pre, alpha, mult, refresh)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor | float]) -> ZOStepOutput:  # type: ignore[override]
        if closure is None:
            raise ValueError("HiZOO.step needs a closure returning the loss")
        if self._fuses():
            return self._fused_hizoo_step(closure)
        seed = self.query_seeds()[0]
        scales = [1.0] * len(self._tensors())
        loss_zero = float(closure())
        self._perturb(seed, +1.0, scales)
        loss_plus = float(closure())
        self._perturb(seed, -2.0, scales)
        loss_minus = float(closure())
        self._perturb(seed, +1.0, scales)
        g = (loss_plus - loss_minus) / (2 * self.eps)
        curvature = abs(loss_plus + loss_minus - 2 * loss_zero) / (2 * self.eps**2)
        if not (math.isfinite(g) and math.isfinite(curvature)):
            return self._skip(loss_plus, loss_minus)
        alpha = self.hessian_smooth
        for index, (group, p) in enumerate(self._tensors()):
            z, sigma = self.normal(seed, index, tuple(p.shape), p), self._sigma(p)
            estimate = z.square().div_(sigma).mul_(curvature)
            sigma.mul_(1 - alpha).add_(estimate, alpha=alpha).clamp_(max=self.max_sigma)
            wide = p.detach().to(sigma.dtype)
            if group["weight_decay"]:
                wide.mul_(1.0 - group["lr"] * group["weight_decay"])
            wide.sub_(z.mul_(sigma.sqrt()), alpha=group["lr"] * g)
            p.copy_(wide)
        return self._completed(loss_plus, loss_minus, g)

    def _fused_hizoo_step(self, closure: Callable[[], Tensor | float]) -> ZOStepOutput:
        """The same step in three passes: +ε√Σz, −2ε√Σz, then restore, refresh Σ and update in one. g and the
        curvature stay on the device (a non-finite one makes the last pass a plain restore with Σ kept)."""
        seed, device = self.query_seeds()[0], self.param_groups[0]["params"][0].device
        scales = [1.0] * len(self._tensors())
        losses = [torch.as_tensor(closure(), device=device).detach().double()]
        self._perturb(seed, +1.0, scales)
        losses.append(torch.as_tensor(closure(), device=device).detach().double())
        self._perturb(seed, -2.0, scales)
        losses.append(torch.as_tensor(closure(), device=device).detach().double())
        loss_zero, loss_plus, loss_minus = losses
        g = (loss_plus - loss_minus) / (2 * self.eps)
        curvature = (loss_plus + loss_minus - 2 * loss_zero).abs() / (2 * self.eps**2)
        ok = torch.isfinite(g) & torch.isfinite(curvature)
        zero = torch.zeros_like(g)
        refresh = torch.stack(
            [torch.where(ok, self.hessian_smooth, zero), torch.where(ok, curvature, zero), zero + self.max_sigma]
        )
        alpha, mult = self._update_factors(g, ok)
        s = self._vector(scales)
        self.shaped_pass(seed, s * (self._offset * self.eps), alpha, mult, refresh)
        self._offset = 0.0
        self.num_steps += 1
        summary = torch.stack([(loss_plus + loss_minus) / 2, g, loss_plus, loss_minus, (~ok).double()]).float()
        if self.sync:  # one read for the whole step
            loss, g, loss_plus, loss_minus, skipped = summary.tolist()
            self._skips.add(bool(skipped))
            return ZOStepOutput(loss, g, loss_plus, loss_minus, bool(skipped))
        self._skips.add(~ok)
        return ZOStepOutput(*summary[:4].unbind(), ~ok)
