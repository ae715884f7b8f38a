"""ZOSGD: zeroth-order SGD (MeZO) as a `torch.optim.Optimizer` whose `step(closure)` does all the work."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer

from zolightning.optim import perturbation
from zolightning.optim.noise import NoiseSource, step_seed

NOISE_KINDS = ("generator", "philox")


class BlockScales(Protocol):
    """Per-tensor perturbation multipliers (1 everywhere is MeZO); see the learned-variance issue."""

    def scales(self, params: Sequence[Tensor]) -> Sequence[float] | Tensor:
        """One multiplier per tensor: floats, or a 1-D tensor on the parameters' device (no host sync)."""
        ...

    def observe(self, loss_plus: float, loss_minus: float) -> None: ...


class ZOStepOutput(NamedTuple):
    loss: float  # (L+ + L-) / 2, the loss near the current weights
    projected_grad: float  # g = (L+ - L-) / (2 eps)
    loss_plus: float
    loss_minus: float
    skipped: bool  # a non-finite loss or scale: weights restored, no update


Scales = list[float] | Tensor  # per tensor, host floats or one device vector


def _axpy(p: Tensor, z: Tensor, alpha: float | Tensor) -> None:
    """p += alpha * z with the arithmetic in float32 (or p's wider dtype) and one rounding.

    `alpha` may be a 0-d device tensor: addcmul reads it on the device, so no host sync is needed.
    """
    wide = p.dtype in (torch.float32, torch.float64)
    target = p if wide else p.float()
    if torch.is_tensor(alpha):
        target.addcmul_(z, alpha)
    else:
        target.add_(z, alpha=alpha)
    if not wide:
        p.copy_(target)


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
        noise: `generator` (a seeded torch.Generator per pass, tensor by tensor: the reference MeZO path) or
            `philox` (counter-based z, a pure function of (seed, tensor position, element index); on CUDA with
            Triton each pass is one fused kernel, elsewhere the PyTorch reference of `philox.py`). The philox
            passes recover the unperturbed weight on its dtype grid before each update (see `perturbation.py`).
        stochastic_rounding: philox only: round bf16 weights stochastically in the update pass.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_scales: BlockScales | None = None,
        noise: str = "generator",
        stochastic_rounding: bool = False,
    ):
        if lr < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"need lr >= 0, eps > 0, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
        if stochastic_rounding and noise != "philox":
            raise ValueError("stochastic_rounding needs noise='philox' (the generator path rounds to nearest)")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.eps, self.seed, self.block_scales = eps, seed, block_scales
        self.noise, self.stochastic_rounding = noise, stochastic_rounding
        self._offset = 0.0  # philox: the weights currently sit at theta + offset * eps * s * z
        self.num_steps, self.num_skipped, self.consecutive_skipped = 0, 0, 0
        self._noise = NoiseSource()

    def _tensors(self) -> list[tuple[dict, Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    def _apply(self, seed: int, alphas: Sequence[float | Tensor]) -> None:
        """One pass: tensor i += alphas[i] * z_i, with z regenerated from `seed`."""
        tensors = [p for _, p in self._tensors()]
        for p, z, alpha in zip(tensors, self._noise.directions(tensors, seed), alphas):
            _axpy(p, z, alpha)

    def _vector(self, values: Scales | list[float]) -> Tensor:
        """Per-tensor values as a float32 vector on the parameters' device (a fill, not a copy, when uniform)."""
        device = self.param_groups[0]["params"][0].device
        if torch.is_tensor(values):
            return values.to(device=device, dtype=torch.float32)
        if values and all(v == values[0] for v in values):
            return torch.full((len(values),), values[0], dtype=torch.float32, device=device)
        return torch.tensor(values, dtype=torch.float32, device=device)

    def _philox_shift(
        self, seed: int, scales: Scales, offset: float, update: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """Weights at theta + self._offset eps s z -> theta + offset eps s z, or with update = (mult, step)
        -> mult theta + step s z (the restore-and-update pass, rounded stochastically if asked)."""
        tensors = [p for _, p in self._tensors()]
        s = self._vector(scales)
        pre = s * (self._offset * self.eps)
        if update is None:
            alpha, mult, stochastic = s * (offset * self.eps), torch.ones_like(s), False
        else:
            mult, step = update
            alpha, stochastic, offset = s * step, self.stochastic_rounding, 0.0
        # The update pass can report each block's sums as it writes it (learned variance's next features).
        wants = update is not None and hasattr(self.block_scales, "observe_statistics")
        sums = torch.empty(len(tensors), 2, dtype=torch.float64, device=s.device) if wants else None
        perturbation.shift(tensors, list(range(len(tensors))), seed, pre, alpha, mult, stochastic, sums)
        if wants:
            self.block_scales.observe_statistics(sums, tensors)
        self._offset = offset

    def _perturb(self, seed: int, factor: float, scales: Scales) -> None:
        if self.noise == "philox":
            self._philox_shift(seed, scales, self._offset + factor)
            return
        if torch.is_tensor(scales):
            self._apply(seed, (scales * (factor * self.eps)).unbind())
        else:
            self._apply(seed, [factor * self.eps * s for s in scales])

    def _restore_and_update(self, seed: int, g: float, scales: Scales) -> None:
        # Currently at theta - eps s z; theta_new = k theta - lr g s z with k = 1 - lr wd, per group.
        if self.noise == "philox":
            mult, step = [], []
            for group in self.param_groups:
                mult += [1.0 - group["lr"] * group["weight_decay"]] * len(group["params"])
                step += [-group["lr"] * g] * len(group["params"])
            self._philox_shift(seed, scales, 0.0, (self._vector(mult), self._vector(step)))
            return
        coefficients = []
        for group in self.param_groups:
            k = 1.0 - group["lr"] * group["weight_decay"]
            if k != 1.0:
                torch._foreach_mul_(group["params"], k)
            coefficients += [k * self.eps - group["lr"] * g] * len(group["params"])
        if torch.is_tensor(scales):
            # Few distinct coefficients (one per group): fill slices instead of copying a host list.
            coefficient = torch.empty_like(scales)
            start = 0
            for group in self.param_groups:
                end = start + len(group["params"])
                coefficient[start:end].fill_(coefficients[start] if end > start else 0.0)
                start = end
            self._apply(seed, (scales * coefficient).unbind())
        else:
            self._apply(seed, [s * c for s, c in zip(scales, coefficients)])

    def _scales(self, params: list[Tensor]) -> tuple[Scales, Tensor | bool]:
        """(scales with non-finite entries zeroed, whether all were finite: a bool or a device flag)."""
        if self.block_scales is None:
            return [1.0] * len(params), True
        scales = self.block_scales.scales(params)
        if torch.is_tensor(scales):
            finite = torch.isfinite(scales)
            return torch.where(finite, scales, torch.zeros_like(scales)), finite.all()
        scales = list(scales)
        finite = all(math.isfinite(s) for s in scales)
        return [s if math.isfinite(s) else 0.0 for s in scales], finite

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
        Blocks with a non-finite scale are not perturbed at all (their scale is zeroed on the device).
        """
        if closure is None:
            raise ValueError("ZOSGD.step needs a closure returning the loss; it never reads .grad")
        seed = step_seed(self.seed, self.num_steps)
        scales, all_finite = self._scales([p for _, p in self._tensors()])
        self._perturb(seed, +1.0, scales)
        loss_plus = float(closure())
        self._perturb(seed, -2.0, scales)
        loss_minus = float(closure())
        g = (loss_plus - loss_minus) / (2 * self.eps)
        if not (math.isfinite(g) and bool(all_finite)):  # the device flag is read after the closures' sync
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
            "noise": self.noise,
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
            trained_with = zo.get("noise", "generator")
            if trained_with != self.noise:
                raise ValueError(f"the checkpoint was trained with noise={trained_with!r}, this run has {self.noise!r}")
            if "block_scales" in zo and self.block_scales is not None:
                self.block_scales.load_state_dict(zo["block_scales"])
