"""ZOOptimizer: a ZO engine and a rule joined as a `torch.optim.Optimizer` whose `step(closure)` does all the work."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from zolightning.optim.engine.counters import SkipCounter, count_forwards
from zolightning.optim.engine.engine import ZOEngine
from zolightning.optim.engine.noise import make_noise, step_seed
from zolightning.optim.engine.step_graphs import StepGraphs
from zolightning.optim.rules.base import ZORule
from zolightning.optim.rules.sgd import ZOSGD

CHECKPOINT_FORMAT = 1  # the `zo` entry of the state dict; entries without a version are format 1 too


class ZOStepOutput(NamedTuple):
    """What one step saw: Python numbers, or 0-dim device tensors when the optimizer runs with sync=False."""

    loss: float | Tensor  # (L+ + L-) / 2, the loss near the current weights
    projected_grad: float | Tensor  # g = (L+ - L-) / (2 eps)
    loss_plus: float | Tensor
    loss_minus: float | Tensor
    skipped: bool | Tensor  # a non-finite loss or scale: weights restored, no update


def check_step_sizes(lr: float, eps: float, weight_decay: float) -> None:
    """Refuse hyper-parameters no step can survive, before step 1, with one line."""
    if not all(math.isfinite(x) for x in (lr, eps, weight_decay)) or lr < 0 or eps <= 0 or weight_decay < 0:
        raise ValueError(f"need finite lr >= 0, eps > 0, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
    # g = (L+ - L-) / (2 eps) is of order 1/eps; an update lr * g past float32's range can only overflow
    if lr / eps >= torch.finfo(torch.float32).max:
        raise ValueError(f"lr {lr} with eps {eps}: an update lr * g (g ~ 1/eps) would not fit in float32; lower lr")


class ZOOptimizer(Optimizer):
    """Zeroth-order optimization in place: each `step(closure)` probes θ ± εs⊙z and applies `rule`'s update.

    z is never stored: it is regenerated from (seed, step, query) for each pass (`engine/noise.py`). A non-finite
    block scale or loss never reaches the weights: the step is skipped (weights restored, no update, history
    unchanged) and counted in `num_skipped` / `consecutive_skipped`.

    Args:
        params: tensors or parameter groups; groups may set their own `lr`, `weight_decay` and rule options.
        rule: the update rule (`optim/rules/`); default ZOSGD (MeZO).
        lr: learning rate η.
        eps: perturbation scale ε.
        weight_decay: decoupled L2 factor, θ ← (1 − lr·wd)·θ on each update.
        seed: run seed; the noise of step t is a function of (seed, t) alone.
        queries: directions averaged per step (q; 2q forward passes a step). Query 0 uses MeZO's seed.
        block_scales: optional per-tensor multipliers of z (learned block variance); None means 1.
        noise: `generator` (a seeded torch.Generator per pass, tensor by tensor: the reference MeZO path) or
            `philox` (counter-based z; on CUDA with Triton each pass is one fused kernel, elsewhere the PyTorch
            reference). The philox passes recover the unperturbed weight on its dtype grid before each update.
        stochastic_rounding: philox MeZO only: round bf16 weights stochastically in the update pass.
        sync: read the losses on the host each step. With `sync=False` (philox, no block scales, a rule with
            `device_step`) g stays on the device and feeds the update pass directly: a step never waits for the
            GPU. The step's output then holds 0-dim tensors, and skips are counted on the device.
    """

    def __init__(self, params, rule: ZORule | None = None, lr: float = 1e-6, eps: float = 1e-3,
                 weight_decay: float = 0.0, seed: int = 0, queries: int = 1, block_scales=None,
                 noise: str = "generator", stochastic_rounding: bool = False, sync: bool = True):  # fmt: skip
        rule = ZOSGD() if rule is None else rule
        check_step_sizes(lr, eps, weight_decay)
        _check_combination(rule, queries, block_scales, noise, stochastic_rounding, sync)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, **rule.group_defaults()})
        self.rule, self.queries, self.sync = rule, queries, sync
        self.engine = ZOEngine(self.param_groups, eps, make_noise(noise), block_scales, stochastic_rounding)
        self.engine.seed = seed
        self.engine.state = self.state
        if self.engine.sharded and (noise != "philox" or stochastic_rounding):
            raise ValueError(
                "sharded parameters (FSDP2) need noise='philox' (z indexed by element: each rank draws its own "
                "rows), and do not support stochastic_rounding yet"
            )
        self.engine.directions = rule.directions(self.engine)
        self.num_forwards = 0  # forwards: what equal-budget comparisons count (2q, 3 for HiZOO, 4-5 Conserve)
        self.forwards_per_closure = 1  # a closure scores one forward (a streamed step's scores both branches)
        self.register_step_pre_hook(lambda optimizer, *_: optimizer.engine.new_step())
        self.register_step_post_hook(lambda optimizer, *_: optimizer.engine.new_step())
        self.register_step_pre_hook(count_forwards)

    # ---- what a user reads -------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.engine.seed

    @property
    def num_steps(self) -> int:
        """Steps taken (skipped ones included): with the seed, what the next step's directions follow."""
        return self.engine.num_steps

    @num_steps.setter
    def num_steps(self, value: int) -> None:
        self.engine.num_steps = value

    @property
    def eps(self) -> float:
        return self.engine.eps

    @property
    def noise(self) -> str:
        return self.engine.noise.name

    @property
    def block_scales(self):
        return self.engine.block_scales

    @property
    def sharded(self) -> bool:
        return self.engine.sharded

    @property
    def step_graphs(self) -> StepGraphs | None:
        return self.engine.step_graphs

    @property
    def num_skipped(self) -> int:
        return self.engine.skips.total

    @property
    def consecutive_skipped(self) -> int:
        return self.engine.skips.consecutive

    @property
    def one_pass_update(self) -> bool:
        """MeZO's step: one query of the plain rule, restore and update in one pass (capturable as a CUDA graph)."""
        return getattr(self.rule, "one_pass_update", False) and self.queries == 1

    @property
    def fused(self) -> bool:
        """Whether this optimizer's passes run as fused Triton kernels (philox noise on CUDA with Triton)."""
        return self.engine.fuses() and (self.one_pass_update or self.rule.fuses(self.engine, self.queries))

    def query_seeds(self) -> list[int]:
        first = step_seed(self.seed, self.num_steps)
        return [first] + [step_seed(first, i) for i in range(1, self.queries)]

    def capture_steps(self, pool=None, limit: int = 16) -> StepGraphs:
        """Replay whole steps as CUDA graphs (`engine/step_graphs.py`); MeZO's step with sync=False on one device."""
        if self.sync or self.sharded or not self.one_pass_update:
            raise ValueError("step graphs need MeZO's step (zo_sgd, one query) with sync=False on unsharded weights")
        self.engine.step_graphs = StepGraphs(self, pool, limit)
        return self.engine.step_graphs

    # ---- the step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor | float]) -> ZOStepOutput:  # type: ignore[override]
        """One ZO step. `closure()` returns the minibatch loss at the current weights (no backward)."""
        if closure is None:
            raise ValueError(
                f"{type(self.rule).__name__}: step needs a closure returning the loss; it never reads .grad"
            )
        scheduled = self.rule.schedule(self, closure)  # a rule with a probe schedule of its own (HiZOO)
        if scheduled is not None:
            return scheduled
        scales, all_finite = self.engine.scales()
        if self.one_pass_update:
            return self._mezo_step(closure, scales, all_finite)
        if self.rule.fuses(self.engine, self.queries):
            return self._fused_step(closure, scales, all_finite)
        return self._reference_step(closure, scales, all_finite)

    def _mezo_step(self, closure, scales, all_finite) -> ZOStepOutput:
        seed, engine = self.query_seeds()[0], self.engine
        if not self.sync:
            summary = (
                self.step_graphs.run(seed, scales, closure)
                if self.step_graphs
                else self.device_step(seed, scales, closure)
            )
            self.num_steps += 1
            loss, g, loss_plus, loss_minus, skipped = summary.unbind()
            return ZOStepOutput(loss, g, loss_plus, loss_minus, skipped.bool())
        loss_plus, loss_minus = engine.probe(closure, seed, scales)
        g = engine.slope(loss_plus, loss_minus)
        if not (math.isfinite(g) and bool(all_finite)):  # the device flag is read after the closures' sync
            engine.perturb(seed, +1.0, scales)
            return self.skip(loss_plus, loss_minus)
        engine.restore_and_update(seed, scales, g)
        return self.completed(loss_plus, loss_minus, g)

    def device_step(self, seed: int | Tensor, scales, closure: Callable) -> Tensor:
        """MeZO's GPU work with g kept on the device (a skipped step is an update pass with mult 1 and step 0), as
        [loss, g, L+, L-, skipped] in float32. Host state is left as found: a CUDA graph records it."""
        engine = self.engine
        loss_plus, loss_minus = engine.probe(closure, seed, scales, engine.on_device)
        g = engine.slope(loss_plus, loss_minus)
        ok = torch.isfinite(g)
        engine.restore_and_update(seed, scales, g, ok)
        engine.skips.add(~ok)
        return torch.stack([(loss_plus + loss_minus) / 2, g.float(), loss_plus, loss_minus, (~ok).float()])

    def _reference_step(self, closure, scales, all_finite) -> ZOStepOutput:
        """q probes, each restored at once (a non-finite g skips the step there), then the rule's update."""
        engine, probes, plus, minus = self.engine, [], [], []
        for seed in self.query_seeds():
            loss_plus, loss_minus = engine.probe(closure, seed, scales)
            plus.append(loss_plus)
            minus.append(loss_minus)
            engine.perturb(seed, +1.0, scales)  # back at θ before the next query and the update
            probes.append((seed, engine.slope(loss_plus, loss_minus)))
            if not math.isfinite(probes[-1][1]):
                return self.skip(loss_plus, loss_minus)
        loss_plus, loss_minus = sum(plus) / len(plus), sum(minus) / len(minus)
        if not bool(all_finite):
            return self.skip(loss_plus, loss_minus)
        self.rule.reference_update(engine, probes, scales, closure)
        return self.completed(loss_plus, loss_minus, sum(g for _, g in probes) / len(probes))

    def _fused_step(self, closure, scales, all_finite) -> ZOStepOutput:
        """The queries' perturbation passes (each query's restore is its own pass, the last one's is folded into
        the update), then the rule's update in one pass over all queries' z."""
        engine, seeds, plus, minus = self.engine, self.query_seeds(), [], []
        on_device = not self.sync
        for j, seed in enumerate(seeds):
            if j:
                engine.perturb(seeds[j - 1], +1.0, scales)  # back at θ before the next query
            # the host path reads the losses after all passes are queued: one wait for the GPU, at the end
            loss_plus, loss_minus = engine.probe(closure, seed, scales, engine.on_device if on_device else _raw)
            plus.append(loss_plus)
            minus.append(loss_minus)
        if on_device:  # a non-finite g turns the pass into a plain restore, decided on the device
            plus, minus = (values[0] if len(values) == 1 else torch.stack(values) for values in (plus, minus))
            g = engine.slope(plus, minus)
            ok = torch.isfinite(g) if g.dim() == 0 else torch.isfinite(g).all()
            self.rule.fused_update(engine, seeds, scales, torch.where(ok, g, 0.0), ok, closure)
            engine.skips.add(~ok)
            self.num_steps += 1
            if g.dim():
                plus, minus, g = plus.mean(), minus.mean(), g.mean()
            return ZOStepOutput((plus + minus) / 2, g.float(), plus, minus, ~ok)
        plus, minus = [float(v) for v in plus], [float(v) for v in minus]
        g = [engine.slope(a, b) for a, b in zip(plus, minus)]
        loss_plus, loss_minus = sum(plus) / len(plus), sum(minus) / len(minus)
        if not (all(map(math.isfinite, g)) and bool(all_finite)):
            engine.perturb(seeds[-1], +1.0, scales)
            return self.skip(loss_plus, loss_minus)
        self.rule.fused_update(engine, seeds, scales, g, None, closure)
        return self.completed(loss_plus, loss_minus, sum(g) / len(g))

    def skip(self, loss_plus: float = math.nan, loss_minus: float = math.nan) -> ZOStepOutput:
        """A step that changed nothing (the weights are back at θ): counted, and reported with its losses."""
        self.engine.skips.add(True)
        self.num_steps += 1
        return ZOStepOutput((loss_plus + loss_minus) / 2, math.nan, loss_plus, loss_minus, True)

    def completed(self, loss_plus: float, loss_minus: float, g: float) -> ZOStepOutput:
        """After an applied update: the scales' history, the counters, the step's output."""
        if self.block_scales:
            self.block_scales.observe(loss_plus, loss_minus)
        self.num_steps += 1
        self.engine.skips.add(False)
        return ZOStepOutput((loss_plus + loss_minus) / 2, g, loss_plus, loss_minus, False)

    # ---- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"] = {
            "format": CHECKPOINT_FORMAT,
            "num_steps": self.num_steps,
            "num_skipped": self.num_skipped,
            "seed": self.seed,
            "eps": self.eps,
            "consecutive_skipped": self.consecutive_skipped,
            "noise": self.noise,
            "num_forwards": self.num_forwards,
            "queries": self.queries,
            **self.rule.checkpoint_entries(),
        }
        if self.block_scales is not None and hasattr(self.block_scales, "state_dict"):
            state["zo"]["block_scales"] = self.block_scales.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is not None:
            _check_resume(self, zo)
        super().load_state_dict(state_dict)
        # torch.optim replaces `param_groups` and `state` with new objects: the engine reads those
        self.engine.groups, self.engine.state = self.param_groups, self.state
        if zo is not None:
            self.num_steps = zo["num_steps"]
            self.num_forwards = zo.get("num_forwards", 0)  # checkpoints before the count: 0, not a guess
            self.engine.skips = SkipCounter(zo["num_skipped"], zo.get("consecutive_skipped", 0))
            self.engine.seed, self.engine.eps = zo["seed"], zo["eps"]
            if "block_scales" in zo and self.block_scales is not None:
                self.block_scales.load_state_dict(zo["block_scales"])


def _raw(loss):
    return loss


def _check_resume(optimizer: ZOOptimizer, zo: dict) -> None:
    """Refuse a checkpoint whose run this optimizer would not continue, naming the difference."""
    if zo.get("format", 1) > CHECKPOINT_FORMAT:
        raise ValueError(f"the checkpoint's ZO state is format {zo['format']}; this zolightning reads format "
                         f"{CHECKPOINT_FORMAT} (upgrade zolightning)")  # fmt: skip
    trained_with = zo.get("noise", "generator")
    if trained_with != optimizer.noise:
        raise ValueError(f"the checkpoint was trained with noise={trained_with!r}, this run has {optimizer.noise!r}")
    queries = zo.get("queries", optimizer.queries)
    if queries != optimizer.queries:
        raise ValueError(f"the checkpoint was trained with queries={queries}, this run has {optimizer.queries}")
    optimizer.rule.check_checkpoint(zo)


def _check_combination(rule: ZORule, queries: int, block_scales, noise: str, stochastic_rounding: bool, sync: bool):
    name = type(rule).__name__
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    if queries > 1 and not rule.takes_queries:
        raise ValueError(f"{name} takes one query per step, got queries={queries}")
    if block_scales is not None and not rule.takes_block_scales:
        raise ValueError(f"{name} sets a per-element perturbation scale itself; it does not take block_scales")
    if stochastic_rounding and noise != "philox":
        raise ValueError("stochastic_rounding needs noise='philox' (the generator path rounds to nearest)")
    if stochastic_rounding and not (getattr(rule, "one_pass_update", False) and queries == 1):
        raise ValueError(f"stochastic_rounding is supported by zo_sgd with one query only, not {rule.name}")
    if not sync and (noise != "philox" or block_scales is not None):
        raise ValueError("sync=False needs noise='philox' and no block_scales (their history reads the losses)")
    if not sync and not rule.device_step:
        raise ValueError(f"{name} reads g on the host (sync=True)")
