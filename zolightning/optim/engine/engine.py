"""The ZO engine: the parameter walk, the noise, and the passes that move weights along seeded directions.

A ZO step is a few passes over every weight (perturb +εz, −2εz, then restore and update) between forward passes.
Every rule shares them; only the update differs. The engine owns what the passes need (the tensors in walk order,
each tensor's block scale, shard offsets, the per-tensor device vectors of lr and decay, how far the weights are
displaced now, the skip counters) and offers the passes as a small API:

    probe(closure, seed, scales)          -> (L+, L−): weights left at θ − ε s⊙D
    shift(seed, scales, offset)           -> weights at θ + offset·ε·s⊙D (offset 0: restored)
    restore_and_update(seed, scales, g)   -> θ ← kθ − lr·g·s⊙z, one pass (MeZO)

D is the noise's z, or the rule's shaped direction (`directions`: HiZOO's √Σ⊙z, LOZO's UVᵀ). The updates of rules
with state run in `engine/updates.py`; the noise object (`engine/noise.py`) is chosen once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from zolightning.optim.engine.counters import SkipCounter
from zolightning.optim.engine.noise import GeneratorNoise, PhiloxNoise, axpy
from zolightning.optim.engine.shards import is_sharded, local_shard
from zolightning.optim.kernels import perturbation

Scales = list[float] | Tensor  # per tensor, host floats or one device vector


class BlockScales(Protocol):
    """Per-tensor perturbation multipliers (1 everywhere is MeZO); see the learned-variance issue."""

    def scales(self, params: Sequence[Tensor]) -> Sequence[float] | Tensor:
        """One multiplier per tensor: floats, or a 1-D tensor on the parameters' device (no host sync)."""
        ...

    def observe(self, loss_plus: float, loss_minus: float) -> None: ...


class ZOEngine:
    """The passes of a ZO step over `groups` (an optimizer's `param_groups`, read live: added groups are seen).

    Args:
        groups: parameter groups, each with `lr` and `weight_decay`.
        eps: perturbation scale ε.
        noise: the direction source (`GeneratorNoise` or `PhiloxNoise`).
        block_scales: per-tensor multipliers of the directions (learned variance), or None for 1.
        stochastic_rounding: round bf16 weights stochastically in philox update passes.
    """

    def __init__(self, groups: list[dict], eps: float, noise: GeneratorNoise | PhiloxNoise, block_scales=None,
                 stochastic_rounding: bool = False):  # fmt: skip
        self.groups, self.eps, self.noise, self.block_scales = groups, eps, noise, block_scales
        self.stochastic_rounding = stochastic_rounding
        self.sharded = any(is_sharded(p) for _, p in self.tensors())
        self.offset = 0.0  # the weights sit at θ + offset·ε·s⊙D
        self.seed, self.num_steps = 0, 0  # the run's seed and the steps taken: what each step's directions follow
        self.directions = None  # a shaped rule's direction source (its `directions(engine)`); None: the noise's z
        self.skips = SkipCounter()
        self.scratch = perturbation.Scratch()
        self.step_graphs = None  # `StepGraphs` once whole steps are captured
        self._constants: dict[tuple, Tensor] = {}
        self._step_params: list[Tensor] | None = None
        self._fuses: bool | None = None
        self.state: dict = {}  # per-tensor rule state (the optimizer hands over its `state`)
        self.hyper_cache: tuple = (None, None)  # the rule kernel's parameters, rebuilt when the groups' options change
        # Each tensor's noise key: its position in the whole model's walk. None: this engine walks the whole model
        # (keys 0..n-1); an engine over one block of a streamed model (`offload/`) names its tensors' positions.
        self.keys: list[int] | None = None

    # ---- the walk ------------------------------------------------------------------------------------
    def tensors(self) -> list[tuple[dict, Tensor]]:
        return [(group, p) for group in self.groups for p in group["params"]]

    def tensors_by_group(self) -> list[tuple[int, Tensor]]:
        """(group index, tensor) in walk order."""
        return [(index, p) for index, group in enumerate(self.groups) for p in group["params"]]

    def parts(self) -> list[tuple[dict, Tensor, Tensor, int]]:
        """(group, parameter, the part this process holds, its first element's flat index in the full tensor): the
        whole tensor and 0 unless the weights are sharded (FSDP2)."""
        return [(group, p, *local_shard(p)) for group, p in self.tensors()]

    def params(self) -> list[Tensor]:
        """The tensors (this process's parts) of this step, checked once for the fused pass: a step's three or four
        passes reuse the check instead of each walking every tensor's storage (2 ms of host time per SmolLM2 step)."""
        if self._step_params is None:
            from zolightning.optim.kernels import fused

            local = [part for _, _, part, _ in self.parts()] if self.sharded else [p for _, p in self.tensors()]
            self._step_params = fused.trusted(local)
        return self._step_params

    def tensor_keys(self) -> list[int]:
        """The noise key of each tensor in walk order (z of element j of tensor k is f(seed, k, j))."""
        return list(range(len(self.tensors()))) if self.keys is None else self.keys

    def starts(self) -> list[int] | None:
        """Where each part starts in its full tensor; None for unsharded weights."""
        return [start for *_, start in self.parts()] if self.sharded else None

    def new_step(self) -> None:
        """Forget the checked tensors: every step checks afresh (weights may have been replaced between steps)."""
        self._step_params = None

    @property
    def device(self) -> torch.device:
        return next(p for group in self.groups for p in group["params"]).device

    def fuses(self) -> bool:
        """Whether the fused Triton passes run on these weights: decided once (the tensors never change)."""
        if self._fuses is None:  # a part starting inside a Philox group of 4 takes the reference passes
            self._fuses = self.noise.fuses(self.params()) and not any(s % 4 for s in self.starts() or ())
        return self._fuses

    def use_reference_passes(self) -> None:
        """Run every pass tensor by tensor with PyTorch ops even where the fused kernels could (to compare them)."""
        self._fuses = False

    # ---- per-tensor device vectors ---------------------------------------------------------------------
    def vector(self, values: Scales | list[float], dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-tensor values as a vector on the parameters' device (host lists: built once, reused)."""
        device = self.device
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

    def per_group(self, values: list[float], dtype: torch.dtype = torch.float32) -> Tensor:
        """One value per group as a per-tensor device vector, cached like `vector`. An lr schedule changes it
        every step: one shared value is then a fill on the device, not a new host list copied over."""
        if len(set(values)) != 1:
            return self.vector([v for v, group in zip(values, self.groups) for _ in group["params"]], dtype)
        key = ("per group", dtype, values[0])
        if key not in self._constants:
            if len(self._constants) > 16:  # as in `vector`: changing values must not grow the cache
                self._constants.clear()
            self._constants[key] = torch.full((len(self.tensors()),), values[0], dtype=dtype, device=self.device)
        return self._constants[key]

    def lrs(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.per_group([group["lr"] for group in self.groups], dtype)

    def decays(self) -> Tensor:
        """k = 1 − lr·wd per tensor: the decoupled weight decay's multiplier."""
        return self.per_group([1.0 - group["lr"] * group["weight_decay"] for group in self.groups])

    def scales(self) -> tuple[Scales, Tensor | bool]:
        """(scales with non-finite entries zeroed, whether all were finite: a bool or a device flag)."""
        params = [p for _, p in self.tensors()]
        if self.block_scales is None:
            return [1.0] * len(params), True
        scales = self.block_scales.scales(params)
        if torch.is_tensor(scales):
            finite = torch.isfinite(scales)
            return torch.where(finite, scales, torch.zeros_like(scales)), finite.all()
        scales = list(scales)
        finite = all(math.isfinite(s) for s in scales)
        return [s if math.isfinite(s) else 0.0 for s in scales], finite

    # ---- the passes ------------------------------------------------------------------------------------
    def shift(self, seed: int | Tensor, scales: Scales, offset: float) -> None:
        """Move the weights from θ + self.offset·ε·s⊙D to θ + offset·ε·s⊙D."""
        if self.directions is not None:
            self.directions.move(seed, scales, offset)
        elif self.noise.counter_based:
            self.counter_pass(seed, scales, offset)
        else:
            factor = offset - self.offset
            tensors = [p for _, p in self.tensors()]
            if torch.is_tensor(scales):
                self.noise.add(tensors, seed, (scales * (factor * self.eps)).unbind())
            else:
                self.noise.add(tensors, seed, [factor * self.eps * s for s in scales])
        self.offset = offset

    def perturb(self, seed: int | Tensor, factor: float, scales: Scales) -> None:
        self.shift(seed, scales, self.offset + factor)

    def on_device(self, loss) -> Tensor:
        """A closure's loss as a 0-dim float32 tensor on the weights' device (no host sync)."""
        return torch.as_tensor(loss, device=self.device).detach().float()

    def probe(self, closure: Callable, seed: int | Tensor, scales: Scales, read: Callable = float):
        """The two-point probe: (L+, L−) at θ ± ε s⊙D, each passed through `read` (host floats by default, or
        `on_device`); the weights are left at θ − ε s⊙D (the update pass, or `shift(..., 0.0)`, restores them)."""
        self.perturb(seed, +1.0, scales)
        loss_plus = read(closure())
        self.perturb(seed, -2.0, scales)
        return loss_plus, read(closure())

    def slope(self, loss_plus, loss_minus):
        """The projected gradient g = (L+ − L−) / (2ε) of a probe: host floats, or device tensors in float64 (so
        that steps with g on the device take the host path's steps)."""
        if torch.is_tensor(loss_plus):
            loss_plus, loss_minus = loss_plus.double(), loss_minus.double()
        return (loss_plus - loss_minus) / (2 * self.eps)

    def counter_pass(self, seed, scales: Scales, offset: float, update: tuple[Tensor, Tensor] | None = None) -> None:
        """Philox: weights at θ + self.offset·ε·s⊙z -> θ + offset·ε·s⊙z, or with update = (mult, step)
        -> mult·θ + step·s⊙z (the restore-and-update pass, rounded stochastically if asked)."""
        tensors, starts = self.params(), self.starts()  # sharded: each rank's rows, and where they start
        s = self.vector(scales)
        pre = s * (self.offset * self.eps)
        if update is None:
            alpha, mult, stochastic = s * (offset * self.eps), torch.ones_like(s), False
        else:
            mult, step = update
            alpha, stochastic, offset = s * step, self.stochastic_rounding, 0.0
        # The update pass can report each block's sums as it writes it (learned variance's next features).
        # (Sharded: the sums would be one rank's rows; the variance reduces its own statistics instead.)
        wants = update is not None and hasattr(self.block_scales, "observe_statistics") and not self.sharded
        sums = torch.empty(len(tensors), 2, dtype=torch.float64, device=s.device) if wants else None
        perturbation.shift(tensors, self.tensor_keys(), seed, pre, alpha, mult, stochastic, sums, starts)
        if wants:
            self.block_scales.observe_statistics(sums, tensors)
        self.offset = offset

    def restore_and_update(self, seed, scales: Scales, g: float | Tensor, ok: Tensor | None = None) -> None:
        """From θ − ε s⊙z: θ ← kθ − lr·g·s⊙z (k = 1 − lr·wd per group) in one pass. With a device flag `ok`, a
        False makes it a plain restore (mult 1, step 0), decided on the device."""
        if self.noise.counter_based:
            if self.step_graphs is not None:  # filled before the step: a replayed graph reads this step's lr
                lr, k = self.step_graphs.lr, self.step_graphs.mult
            else:
                lr, k = self.lrs(torch.float64), self.decays()
            minus_g = -g if ok is None else torch.where(ok, -g, 0.0)
            step = (lr * minus_g).float()  # lr * g in float64, rounded once
            self.counter_pass(seed, scales, 0.0, (k if ok is None else torch.where(ok, k, 1.0), step))
            return
        coefficients = []
        for group in self.groups:
            k = 1.0 - group["lr"] * group["weight_decay"]
            if k != 1.0:  # (generator noise: never sharded)
                torch._foreach_mul_(group["params"], k)
            coefficients += [k * self.eps - group["lr"] * g] * len(group["params"])
        tensors = [p for _, p in self.tensors()]
        if torch.is_tensor(scales):
            # Few distinct coefficients (one per group): fill slices instead of copying a host list.
            coefficient = torch.empty_like(scales)
            start = 0
            for group in self.groups:
                end = start + len(group["params"])
                coefficient[start:end].fill_(coefficients[start] if end > start else 0.0)
                start = end
            self.noise.add(tensors, seed, (scales * coefficient).unbind())
        else:
            self.noise.add(tensors, seed, [s * c for s, c in zip(scales, coefficients)])
        self.offset = 0.0

    def decay(self) -> None:
        """θ ← (1 − lr·wd) θ per group, in place (rules that decay after their move)."""
        for group in self.groups:
            if group["weight_decay"]:
                parts = [local_shard(p)[0] for p in group["params"]]
                torch._foreach_mul_(parts, 1.0 - group["lr"] * group["weight_decay"])


def move_tensor(p: Tensor, direction: Tensor, alpha: float) -> None:
    """p += alpha·direction with one rounding (the tensor-by-tensor passes of shaped directions)."""
    axpy(p, direction, alpha)
