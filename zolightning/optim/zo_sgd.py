"""ZOSGD: zeroth-order SGD (MeZO) as a `torch.optim.Optimizer` whose `step(closure)` does all the work."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer

from zolightning.optim import perturbation
from zolightning.optim.counters import SkipCounter, count_forwards
from zolightning.optim.noise import NoiseSource, step_seed
from zolightning.optim.shards import is_sharded, local_shard
from zolightning.optim.step_graphs import StepGraphs

NOISE_KINDS = ("generator", "philox")


class BlockScales(Protocol):
    """Per-tensor perturbation multipliers (1 everywhere is MeZO); see the learned-variance issue."""

    def scales(self, params: Sequence[Tensor]) -> Sequence[float] | Tensor:
        """One multiplier per tensor: floats, or a 1-D tensor on the parameters' device (no host sync)."""
        ...

    def observe(self, loss_plus: float, loss_minus: float) -> None: ...


class ZOStepOutput(NamedTuple):
    """What one step saw: Python numbers, or 0-dim device tensors when the optimizer runs with sync=False."""

    loss: float | Tensor  # (L+ + L-) / 2, the loss near the current weights
    projected_grad: float | Tensor  # g = (L+ - L-) / (2 eps)
    loss_plus: float | Tensor
    loss_minus: float | Tensor
    skipped: bool | Tensor  # a non-finite loss or scale: weights restored, no update


Scales = list[float] | Tensor  # per tensor, host floats or one device vector


def check_step_sizes(lr: float, eps: float, weight_decay: float) -> None:
    """Refuse hyper-parameters no step can survive, before step 1, with one line."""
    if not all(math.isfinite(x) for x in (lr, eps, weight_decay)) or lr < 0 or eps <= 0 or weight_decay < 0:
        raise ValueError(f"need finite lr >= 0, eps > 0, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
    # g = (L+ - L-) / (2 eps) is of order 1/eps; an update lr * g past float32's range can only overflow
    if lr / eps >= torch.finfo(torch.float32).max:
        raise ValueError(f"lr {lr} with eps {eps}: an update lr * g (g ~ 1/eps) would not fit in float32; lower lr")


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
        sync: read the two losses on the host each step (the MeZO way). With `sync=False` (philox noise, no
            block scales) g stays on the device and feeds the update pass directly: a step never waits for
            the GPU, so the host queues the next work while the GPU runs the last, and launch overhead
            disappears behind it. The step's output then holds 0-dim tensors, and skips are counted on the
            device (`num_skipped`, `consecutive_skipped` wait for the GPU when read).
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
        sync: bool = True,
    ):
        check_step_sizes(lr, eps, weight_decay)
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
        if stochastic_rounding and noise != "philox":
            raise ValueError("stochastic_rounding needs noise='philox' (the generator path rounds to nearest)")
        if not sync and (noise != "philox" or block_scales is not None):
            raise ValueError("sync=False needs noise='philox' and no block_scales (their history reads the losses)")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.sharded = any(is_sharded(p) for _, p in self._tensors())
        if self.sharded and (noise != "philox" or stochastic_rounding):
            raise ValueError(
                "sharded parameters (FSDP2) need noise='philox' (z indexed by element: each rank draws its own "
                "rows), and do not support stochastic_rounding yet"
            )
        self.eps, self.seed, self.block_scales = eps, seed, block_scales
        self.noise, self.stochastic_rounding, self.sync = noise, stochastic_rounding, sync
        self._offset = 0.0  # philox: the weights currently sit at theta + offset * eps * s * z
        self.num_steps = 0
        self.num_forwards = 0  # closure calls: what equal-budget comparisons count (2q, 3 for HiZOO, 4-5 Conserve)
        self._skips = SkipCounter()
        self._noise = NoiseSource()
        self._constants: dict[tuple, Tensor] = {}
        self._step_params: list[Tensor] | None = None
        self.step_graphs: StepGraphs | None = None  # `capture_steps`
        self.register_step_pre_hook(ZOSGD._forget_step_params)  # every step (and subclass steps) checks afresh
        self.register_step_post_hook(ZOSGD._forget_step_params)
        self.register_step_pre_hook(count_forwards)

    @staticmethod
    def _forget_step_params(optimizer: ZOSGD, *_) -> None:
        optimizer._step_params = None

    def _params(self) -> list[Tensor]:
        """The tensors of this step, checked once for the fused pass: a step's three or four passes reuse the
        check instead of each walking every tensor's storage (2 ms of host time per SmolLM2 step)."""
        if self._step_params is None:
            from zolightning.optim import fused

            self._step_params = fused.trusted([p for _, p in self._tensors()])
        return self._step_params

    @property
    def num_skipped(self) -> int:
        return self._skips.total

    @property
    def consecutive_skipped(self) -> int:
        return self._skips.consecutive

    def _tensors(self) -> list[tuple[dict, Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    def _apply(self, seed: int, alphas: Sequence[float | Tensor]) -> None:
        """One pass: tensor i += alphas[i] * z_i, with z regenerated from `seed`."""
        tensors = [p for _, p in self._tensors()]
        for p, z, alpha in zip(tensors, self._noise.directions(tensors, seed), alphas):
            _axpy(p, z, alpha)

    def _vector(self, values: Scales | list[float], dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-tensor values as a vector on the parameters' device (host lists: built once, reused)."""
        device = self.param_groups[0]["params"][0].device
        if torch.is_tensor(values):
            return values.to(device=device, dtype=dtype)
        key = (dtype, *values)
        if key not in self._constants:
            if len(self._constants) > 16:  # changing values (lr schedules): keep the cache small
                self._constants.clear()
            values = torch.tensor(values, dtype=dtype)
            # a plain host-to-GPU copy waits for all queued GPU work; a pinned, non-blocking one does not
            pinned = values.pin_memory() if device.type == "cuda" else values
            self._constants[key] = pinned.to(device, non_blocking=True)
        return self._constants[key]

    def _per_group(self, values: list[float], dtype: torch.dtype = torch.float32) -> Tensor:
        """One value per group as a per-tensor device vector, cached like `_vector`. An lr schedule changes it
        every step: one shared value is then a fill on the device, not a new host list copied over."""
        if len(set(values)) != 1:
            return self._vector([v for v, group in zip(values, self.param_groups) for _ in group["params"]], dtype)
        key = ("per group", dtype, values[0])
        if key not in self._constants:
            if len(self._constants) > 16:  # as in _vector: changing values must not grow the cache
                self._constants.clear()
            device = self.param_groups[0]["params"][0].device
            self._constants[key] = torch.full((len(self._tensors()),), values[0], dtype=dtype, device=device)
        return self._constants[key]

    def _philox_shift(
        self, seed: int, scales: Scales, offset: float, update: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """Weights at theta + self._offset eps s z -> theta + offset eps s z, or with update = (mult, step)
        -> mult theta + step s z (the restore-and-update pass, rounded stochastically if asked)."""
        if self.sharded:  # each rank's rows, and where they start in the full tensors
            tensors, starts = zip(*(local_shard(p) for _, p in self._tensors()))
        else:
            tensors, starts = self._params(), None
        s = self._vector(scales)
        pre = s * (self._offset * self.eps)
        if update is None:
            alpha, mult, stochastic = s * (offset * self.eps), torch.ones_like(s), False
        else:
            mult, step = update
            alpha, stochastic, offset = s * step, self.stochastic_rounding, 0.0
        # The update pass can report each block's sums as it writes it (learned variance's next features).
        # (Sharded: the sums would be one rank's rows; the variance reduces its own statistics instead.)
        wants = update is not None and hasattr(self.block_scales, "observe_statistics") and not self.sharded
        sums = torch.empty(len(tensors), 2, dtype=torch.float64, device=s.device) if wants else None
        perturbation.shift(tensors, list(range(len(tensors))), seed, pre, alpha, mult, stochastic, sums, starts)
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

    def _philox_update(self, seed: int, scales: Scales, g: float | Tensor, ok: Tensor | None = None) -> None:
        """The restore-and-update pass: theta_new = k theta - lr g s z, k = 1 - lr wd per group. With a device
        flag `ok`, a False makes it a plain restore (mult 1, step 0), decided on the device."""
        if self.step_graphs is not None:  # filled before the step: a replayed graph reads this step's lr
            lr, k = self.step_graphs.lr, self.step_graphs.mult
        else:
            lr = self._per_group([group["lr"] for group in self.param_groups], torch.float64)
            k = self._per_group([1.0 - group["lr"] * group["weight_decay"] for group in self.param_groups])
        minus_g = -g if ok is None else torch.where(ok, -g, 0.0)
        step = (lr * minus_g).float()  # lr * g in float64, rounded once
        mult = k if ok is None else torch.where(ok, k, 1.0)
        self._philox_shift(seed, scales, 0.0, (mult, step))

    def _restore_and_update(self, seed: int, g: float, scales: Scales) -> None:
        # Currently at theta - eps s z; theta_new = k theta - lr g s z with k = 1 - lr wd, per group.
        if self.noise == "philox":
            self._philox_update(seed, scales, g)
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
        self._skips.add(True)
        self.num_steps += 1
        return ZOStepOutput((loss_plus + loss_minus) / 2, math.nan, loss_plus, loss_minus, True)

    def _device_step(self, seed: int | Tensor, scales: Scales, closure: Callable[[], Tensor | float]) -> Tensor:
        """The GPU work of a step with g kept on the device (a skipped step is an update pass with mult 1 and
        step 0), as [loss, g, L+, L-, skipped] in float32. Host state is left as found: a CUDA graph records it."""
        device = self.param_groups[0]["params"][0].device
        self._perturb(seed, +1.0, scales)
        loss_plus = torch.as_tensor(closure(), device=device).detach().float()
        self._perturb(seed, -2.0, scales)
        loss_minus = torch.as_tensor(closure(), device=device).detach().float()
        g = (loss_plus.double() - loss_minus.double()) / (2 * self.eps)  # float64 like the host path: same steps
        ok = torch.isfinite(g)
        self._philox_update(seed, scales, g, ok)
        self._skips.add(~ok)
        return torch.stack([(loss_plus + loss_minus) / 2, g.float(), loss_plus, loss_minus, (~ok).float()])

    def _step_on_device(self, seed: int, scales: Scales, closure: Callable[[], Tensor | float]) -> ZOStepOutput:
        if self.step_graphs is not None:
            summary = self.step_graphs.run(seed, scales, closure)
        else:
            summary = self._device_step(seed, scales, closure)
        self.num_steps += 1
        loss, g, loss_plus, loss_minus, skipped = summary.unbind()
        return ZOStepOutput(loss, g, loss_plus, loss_minus, skipped.bool())

    def capture_steps(self, pool=None, limit: int = 16) -> StepGraphs:
        """Replay whole steps as CUDA graphs (`step_graphs.py`); needs sync=False on one CUDA device."""
        if self.sync or self.sharded:
            raise ValueError("step graphs need sync=False (philox, no block scales) and unsharded weights")
        self.step_graphs = StepGraphs(self, pool, limit)
        return self.step_graphs

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
        if not self.sync:
            return self._step_on_device(seed, scales, closure)
        self._perturb(seed, +1.0, scales)
        loss_plus = float(closure())
        self._perturb(seed, -2.0, scales)
        loss_minus = float(closure())
        g = (loss_plus - loss_minus) / (2 * self.eps)
        if not (math.isfinite(g) and bool(all_finite)):  # the device flag is read after the closures' sync
            self._perturb(seed, +1.0, scales)
            return self._skip(loss_plus, loss_minus)
        self._restore_and_update(seed, g, scales)
        return self._completed(loss_plus, loss_minus, g)

    def _completed(self, loss_plus: float, loss_minus: float, g: float) -> ZOStepOutput:
        """After an applied update: the scales' history, the counters, the step's output."""
        if self.block_scales:
            self.block_scales.observe(loss_plus, loss_minus)
        self.num_steps += 1
        self._skips.add(False)
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
            "num_forwards": self.num_forwards,
        }
        if self.block_scales is not None and hasattr(self.block_scales, "state_dict"):
            state["zo"]["block_scales"] = self.block_scales.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        super().load_state_dict(state_dict)
        if zo is not None:
            self.num_steps = zo["num_steps"]
            self.num_forwards = zo.get("num_forwards", 0)  # checkpoints before the count: 0, not a guess
            self._skips = SkipCounter(zo["num_skipped"], zo.get("consecutive_skipped", 0))
            self.seed, self.eps = zo["seed"], zo["eps"]
            trained_with = zo.get("noise", "generator")
            if trained_with != self.noise:
                raise ValueError(f"the checkpoint was trained with noise={trained_with!r}, this run has {self.noise!r}")
            if "block_scales" in zo and self.block_scales is not None:
                self.block_scales.load_state_dict(zo["block_scales"])
