"""What a block-variance allocation buys: gradient signal against curvature, in the second-order model of one step.

For z ~ N(0, S), S = diag(s_b^2) on block b, the two-point estimate's update theta <- theta - lr (z^T g) z
changes a loss that is quadratic near theta (gradient g, Hessian H) by, in expectation over z (Isserlis):

    E[dL] = -lr g^T S g + lr^2 / 2 * ((g^T S g) tr(S H) + 2 g^T S H S g).

With minibatches, the first term sees the mean gradient (the signal, A_signal = gbar^T S gbar) and the second the
minibatch gradient the estimate carries (A_mb = E_i g_i^T S g_i). Hence, per allocation s:
  * the step lowers the loss only while lr < lr_max = 2 A_signal / (A_mb B + D), B = tr(S H), D = 2 E g^T S H S g;
  * at its best lr it lowers it by A_signal^2 / (2 (A_mb B + D)), the number an allocation is judged by.
Malladi et al. (MeZO, arXiv 2305.17333, sec. 4) use the same expansion for S = I. Everything is estimated without
a second-order autograd pass: gradients by one backward per batch, tr(S H) by Hutchinson probes and g^T S H S g by
one direction, both through second differences of the loss, (L(t + h d) + L(t - h d) - 2 L(t)) / h^2 = d^T H d.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


class LossProbe:
    """The loss at theta + h d for directions d, the weights restored exactly from a copy after each evaluation."""

    def __init__(self, params: Sequence[Tensor], loss: Callable[[], Tensor]):
        self.params, self.loss = list(params), loss
        self.originals = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def at(self, direction: Sequence[Tensor | None], h: float) -> float:
        touched = [(p, o, d) for p, o, d in zip(self.params, self.originals, direction) if d is not None]
        for p, o, d in touched:
            p.copy_(o).add_(d.to(p.dtype), alpha=h)
        value = float(self.loss())
        for p, o, _ in touched:
            p.copy_(o)
        return value

    @torch.no_grad()
    def base(self) -> float:
        return float(self.loss())

    def curvature(self, direction: Sequence[Tensor | None], h: float, base: float) -> float:
        """d^T H d by a central second difference (exact for a quadratic)."""
        return (self.at(direction, h) + self.at(direction, -h) - 2 * base) / h**2


@dataclass
class GeometrySums:
    """Running sums over batches; `allocation_terms` and `kind_table` turn them into the module docstring's terms."""

    kinds: list[str]
    allocations: dict[str, Tensor]  # name -> s, one scale per tensor
    batches: int = 0
    grad_sq: Tensor | None = None  # per tensor: sum_i ||g_i,b||^2
    grad_sum: list[Tensor] | None = None  # sum_i g_i, per tensor
    kind_trace: dict[str, list[float]] = field(default_factory=dict)  # kind -> samples of tr(H_kind)
    allocation_trace: dict[str, list[float]] = field(default_factory=dict)  # name -> samples of tr(S H)
    gradient_term: dict[str, list[float]] = field(default_factory=dict)  # name -> samples of g_i^T S H S g_i


def _gaussian_like(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    return [torch.randn(p.shape, generator=generator, device=p.device, dtype=torch.float32) for p in params]


def observe_batch(
    sums: GeometrySums,
    params: Sequence[Tensor],
    loss: Callable[[], Tensor],
    eps: float,
    probes: int,
    generator: torch.Generator,
) -> None:
    """One batch: its gradient (backward), then probes of the curvature along gradient and random directions."""
    grads = _gradient(params, loss)
    sq = torch.stack([(g.double() ** 2).sum() for g in grads])
    sums.grad_sq = sq if sums.grad_sq is None else sums.grad_sq + sq
    sums.grad_sum = grads if sums.grad_sum is None else [a + g for a, g in zip(sums.grad_sum, grads)]
    sums.batches += 1
    probe = LossProbe(params, loss)
    base = probe.base()
    _probe_along_gradient(sums, probe, grads, base, eps)
    for _ in range(probes):
        u = _gaussian_like(params, generator)
        for kind in dict.fromkeys(sums.kinds):
            masked = [ub if k == kind else None for ub, k in zip(u, sums.kinds)]
            sums.kind_trace.setdefault(kind, []).append(probe.curvature(masked, eps, base))
        for name, s in sums.allocations.items():
            scaled = [ub * float(sb) for ub, sb in zip(u, s)]
            sums.allocation_trace.setdefault(name, []).append(probe.curvature(scaled, eps, base))


def _gradient(params: Sequence[Tensor], loss: Callable[[], Tensor]) -> list[Tensor]:
    for p in params:
        p.grad = None
    loss().backward()
    grads = [p.grad.detach().float().clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def _probe_along_gradient(sums: GeometrySums, probe: LossProbe, grads: list[Tensor], base: float, eps: float) -> None:
    """g^T S H S g for each allocation: the curvature along S g times |S g|^2."""
    numel = sum(g.numel() for g in grads)
    for name, s in sums.allocations.items():
        along = [g * float(sb) ** 2 for g, sb in zip(grads, s)]
        norm_sq = sum(float((a.double() ** 2).sum()) for a in along)
        unit = [a / norm_sq**0.5 for a in along]
        # a step as long as the whole eps z, so that the difference stands above the loss's rounding
        curvature = probe.curvature(unit, eps * numel**0.5, base)
        sums.gradient_term.setdefault(name, []).append(curvature * norm_sq)


def _mean_and_sem(samples: Sequence[float]) -> tuple[float, float]:
    values = torch.tensor(samples, dtype=torch.float64)
    sem = values.std() / len(values) ** 0.5 if len(values) > 1 else torch.tensor(float("nan"))
    return float(values.mean()), float(sem)


def signal_per_tensor(sums: GeometrySums) -> Tensor:
    """Unbiased ||E g_b||^2 per tensor from n minibatch gradients: (n ||gbar||^2 - mean ||g_i||^2) / (n - 1)."""
    n = sums.batches
    if n < 2:
        raise ValueError("the signal needs at least 2 batches")
    mean_sq = torch.stack([((g.double() / n) ** 2).sum() for g in sums.grad_sum])
    return ((n * mean_sq - sums.grad_sq / n) / (n - 1)).cpu()


def minibatch_per_tensor(sums: GeometrySums) -> Tensor:
    """E ||g_i,b||^2 per tensor: the minibatch gradient's norm, noise included."""
    return (sums.grad_sq / sums.batches).cpu()


@dataclass(frozen=True)
class AllocationTerms:
    signal: float  # A_signal = gbar^T S gbar
    minibatch: float  # A_mb = E g_i^T S g_i
    trace: float  # B = tr(S H)
    trace_sem: float
    gradient_term: float  # D = 2 E g_i^T S H S g_i
    gradient_term_sem: float

    @property
    def lr_max(self) -> float:
        """The largest lr at which a step lowers the loss in expectation."""
        return 2 * self.signal / self.denominator

    @property
    def best_decrease(self) -> float:
        """The expected decrease of one step at the best lr, lr_max / 2."""
        return self.signal**2 / (2 * self.denominator)

    @property
    def denominator(self) -> float:
        return self.minibatch * self.trace + self.gradient_term

    def expected_change(self, lr: float) -> float:
        return -lr * self.signal + lr**2 / 2 * self.denominator


def allocation_terms(sums: GeometrySums) -> dict[str, AllocationTerms]:
    signal, minibatch = signal_per_tensor(sums), minibatch_per_tensor(sums)
    terms = {}
    for name, s in sums.allocations.items():
        s_sq = s.double() ** 2
        trace, sem = _mean_and_sem(sums.allocation_trace[name])
        gradient, gradient_sem = (2 * x for x in _mean_and_sem(sums.gradient_term[name]))
        terms[name] = AllocationTerms(
            float((s_sq * signal).sum()), float((s_sq * minibatch).sum()), trace, sem, gradient, gradient_sem
        )
    return terms


def kind_table(sums: GeometrySums, numels: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per block family: elements, signal and minibatch gradient norms, tr(H) with its standard error."""
    signal, minibatch = signal_per_tensor(sums), minibatch_per_tensor(sums)
    table = {}
    for kind in dict.fromkeys(sums.kinds):
        mask = torch.tensor([k == kind for k in sums.kinds])
        trace, sem = _mean_and_sem(sums.kind_trace[kind])
        table[kind] = {
            "tensors": int(mask.sum()),
            "elements": sum(n for n, k in zip(numels, sums.kinds) if k == kind),
            "signal": float(signal[mask].sum()),
            "minibatch": float(minibatch[mask].sum()),
            "trace": trace,
            "trace_sem": sem,
        }
    return table
