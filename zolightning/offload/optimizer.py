"""StreamedZOOptimizer: the ZO step of a model whose units are streamed from host memory, each moved once per step.

The resident step is three passes over every weight between two whole forwards (+εz, −2εz, restore and update).
Streamed, the passes of one unit run while that unit is on the GPU, inside one forward of the doubled batch
(`units.py`): on entering a unit the step applies the *previous* step's update to it (its g is only known once the
previous forward has ended: ZO2's lazy update), moves it to θ + εz for rows [0, B), to θ − εz for rows [B, 2B), and
the unit goes back to host memory left at θ − εz, where the resident step would leave it before its update pass.
Each unit runs on its own `ZOEngine` whose tensors keep their keys in the whole model's walk, so z, the passes and
the rule's kernel are those of the resident step, element for element; the unit's rule state travels with it.

A pending update is applied to every unit before anything reads the weights on the host: `flush()` (checkpoints,
the end of training). Forwards outside a step (validation) apply it as they pass.
"""

from __future__ import annotations

import math
from collections import ChainMap
from dataclasses import dataclass

import torch

from zolightning.offload.streamer import BlockStreamer
from zolightning.offload.units import Unit, halves, joined, owned
from zolightning.optim.engine.engine import ZOEngine
from zolightning.optim.engine.noise import make_noise
from zolightning.optim.optimizer import ZOOptimizer, ZOStepOutput


@dataclass(frozen=True)
class Pending:
    """A step's update not yet applied everywhere: its seed, g (None: restore only) and each group's lr and wd."""

    seed: int
    g: float | None
    options: tuple[dict, ...]


def check_streamable(optimizer: ZOOptimizer) -> None:
    """Refuse, with one line naming what works, the settings a block-by-block step cannot run."""
    rule = optimizer.rule
    if not rule.splits_by_block:
        raise ValueError(f"zo_offload applies updates block by block, which {type(rule).__name__} cannot; "
                         "use zo_sgd, zo_sgd_momentum, zo_sgd_nesterov, zo_sgd_sign or zo_adam")  # fmt: skip
    if optimizer.queries != 1:
        raise ValueError("zo_offload runs one query per step (each query would stream every weight again)")
    if optimizer.noise != "philox":
        raise ValueError("zo_offload needs noise=philox (z indexed by element, drawn block by block)")
    if optimizer.block_scales is not None:
        raise ValueError("zo_offload does not take learned variance yet (its networks read every block's statistics "
                         "before the step); use variance=isotropic")  # fmt: skip


def check_offload_options(hparams) -> None:
    """Refuse the fine-tuning options a streamed model cannot run, with one line naming what can."""
    if hparams.accumulate_grad_batches != 1:
        raise ValueError("zo_offload takes one batch per step (each micro-batch would stream every weight again); "
                         "raise data.batch_size, or use accumulation on a model that fits the GPU")  # fmt: skip
    if hparams.objective == "f1":
        raise ValueError("zo_offload scores objective=loss or accuracy; f1's greedy decoding is one forward per token")
    if hparams.peft == "prefix":
        raise ValueError("zo_offload trains every weight or LoRA adapters; prefix tuning is not supported")


class StreamedZOOptimizer(ZOOptimizer):
    """A `ZOOptimizer` over a streamed model: `step(closure)` with `closure()` returning the losses of both branches
    (`[L+, L−]`) from one forward of the doubled batch (`forward/scoring.py`: `branch_objectives`).

    Args:
        params, rule, lr, eps, weight_decay, seed, noise, stochastic_rounding: as `ZOOptimizer` (one query, no
            block scales, philox noise).
        streamer: the model's `BlockStreamer`; the optimizer routes its units' forwards through itself.
    """

    def __init__(self, params, rule=None, *, streamer: BlockStreamer, **options):
        super().__init__(params, rule, **options)
        check_streamable(self)
        self.streamer = streamer
        self.forwards_per_closure = 2  # one closure, the two branches' forwards
        streamer.states = lambda p: self.state.get(p, {})
        streamer.runner = self.run_unit
        keys = {id(p): k for k, (_, p) in enumerate(self.engine.tensors())}
        self._engines = {unit: self._unit_engine(owned(unit), keys) for unit in streamer.units}
        self._sharing = {unit: self._shared_engines(unit, keys) for unit in streamer.units if unit.shared}
        self.probing: int | None = None  # the seed of the step whose forward is running
        self.pending: Pending | None = None
        self._applied: set[Unit] = set()  # units the pending update has reached
        self._entered: set[Unit] = set()  # units entered by this step's forward

    def _unit_engine(self, tensors: list, keys: dict) -> ZOEngine:
        mine = {id(p) for p in tensors}
        # each group a view of the optimizer's: its own tensors, the live options (an lr schedule is seen), and a
        # first map that `_catch_up` fills with the options of the step being applied
        groups = [ChainMap({}, {"params": [p for p in g["params"] if id(p) in mine]}, g) for g in self.param_groups]
        engine = ZOEngine(groups, self.eps, make_noise("philox"), None, self.engine.stochastic_rounding)
        engine.keys = [keys[id(p)] for _, p in engine.tensors()]
        engine.state = self.state
        return engine

    def _shared_engines(self, unit: Unit, keys: dict) -> list[tuple[Unit, ZOEngine]]:
        """(owner, an engine over the tensors `unit` shares with it) for each earlier unit it shares tensors with."""
        shared = {id(p) for p in unit.shared}
        out = []
        for owner in self.streamer.units:
            mine = [p for p in owned(owner) if id(p) in shared]
            if mine:
                out.append((owner, self._unit_engine(mine, keys)))
        return out

    # ---- the step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure) -> ZOStepOutput:  # type: ignore[override]
        """One ZO step; `closure()` returns [L+, L−] from one forward of the doubled batch."""
        if closure is None:
            raise ValueError("a streamed ZO step needs a closure returning [L+, L-] of the doubled batch")
        self.probing, self._entered = self.query_seeds()[0], set()
        try:
            loss_plus, loss_minus = (float(v) for v in closure())
        finally:
            seed, self.probing = self.probing, None
        self._settle()  # units this forward skipped still take the pending update before it is replaced
        options = tuple({"lr": group["lr"], "weight_decay": group["weight_decay"]} for group in self.param_groups)
        g = self.engine.slope(loss_plus, loss_minus)
        self.pending, self._applied = Pending(seed, g if math.isfinite(g) else None, options), set()
        if self.pending.g is None:
            return self.skip(loss_plus, loss_minus)
        return self.completed(loss_plus, loss_minus, g)

    def run_unit(self, unit: Unit, forward, args: tuple, kwargs: dict):
        """The streamer's runner: a unit's call, as both branches during a step, else once at θ."""
        if self.probing is None:
            return self._visit(unit, lambda: forward(*args, **kwargs))
        first, second = halves(args, kwargs)

        def both():
            self._entered.add(unit)
            self._side(unit, +1.0)
            out_plus = forward(*first[0], **first[1])
            self._side(unit, -1.0)
            return joined(out_plus, forward(*second[0], **second[1]))

        return self._visit(unit, both, changed=True)

    def _visit(self, unit: Unit, work, changed: bool = False):
        self.streamer.acquire(unit)
        for engine in self._unit_engines(unit):  # the unit's tensors are new GPU copies: check them afresh
            engine.new_step()
        try:
            changed = self._catch_up(unit) or changed
            return work()
        finally:
            self.streamer.release(unit, changed)

    def _unit_engines(self, unit: Unit) -> list[ZOEngine]:
        return [self._engines[unit], *(engine for _, engine in self._sharing.get(unit, ()))]

    def _side(self, unit: Unit, side: float) -> None:
        """Move the unit's weights (and tensors it shares with an earlier unit) to θ + side·εz of this step."""
        scales = [1.0] * len(self._engines[unit].tensors())
        if scales:
            self._engines[unit].shift(self.probing, scales, side)
        for owner, sharing in self._sharing.get(unit, ()):  # tied weights: where their owner's passes left them
            if owner not in self._entered:
                raise RuntimeError(f"{unit.name} reads tied weights before {owner.name}, their owner, in the forward")
            if side > 0:  # the first branch: the tensors are where the owner left them (θ − εz); back there after
                sharing.offset = self._engines[owner].offset
            sharing.shift(self.probing, [1.0] * len(sharing.tensors()), side)

    def _catch_up(self, unit: Unit) -> bool:
        """Apply the pending update to `unit` if it has not had it; whether the weights changed."""
        if self.pending is None or unit in self._applied:
            return False
        self._applied.add(unit)
        engine, pending = self._engines[unit], self.pending
        for group, options in zip(engine.groups, pending.options):
            group.maps[0].update(options)  # the lr and decay of the step that computed g
        try:
            self._update(engine, pending)
        finally:
            for group in engine.groups:
                group.maps[0].clear()
        return True

    def _update(self, engine: ZOEngine, pending: Pending) -> None:
        """From θ − εz to the rule's new θ: the resident step's update pass, on this unit's tensors."""
        scales = [1.0] * len(engine.tensors())
        if not scales:
            return
        if pending.g is None:
            engine.shift(pending.seed, scales, 0.0)
        elif self.one_pass_update:
            engine.restore_and_update(pending.seed, scales, pending.g)
        elif self.rule.fuses(engine, 1):
            self.rule.fused_update(engine, [pending.seed], scales, [pending.g], None, None)
        else:
            engine.shift(pending.seed, scales, 0.0)
            self.rule.reference_update(engine, [(pending.seed, pending.g)], scales, None)

    @property
    def settled(self) -> bool:
        """Whether every unit holds the last step's update (the host weights are θ, not θ − εz)."""
        return self.pending is None or len(self._applied) == len(self.streamer.units)

    # ---- host reads ------------------------------------------------------------------------------------
    @torch.no_grad()
    def flush(self) -> None:
        """Apply the pending update to every unit and wait for the copies: the host weights are then current."""
        self._settle()
        self.streamer.synchronize()

    def _settle(self) -> None:
        """Bring every unit the pending update has not reached yet up, apply it, and send it back."""
        if self.pending is not None:
            for unit in self.streamer.units:
                if unit not in self._applied:
                    self._visit(unit, lambda: None)

    def state_dict(self) -> dict:
        self.flush()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.pending, self._applied = None, set()
        sharing = [engine for pairs in self._sharing.values() for _, engine in pairs]
        for engine in [*self._engines.values(), *sharing]:
            engine.offset, engine.state = 0.0, self.state
            for group, live in zip(engine.groups, self.param_groups):
                group.maps[2] = live  # torch.optim replaced the groups
