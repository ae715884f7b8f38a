"""What a ZO rule is: the data it hands the engine (its options, states, math and kernel layout).

Every rule moves the weights along the two-point estimate

    ĝ = (1/q) Σ_j g_j s ⊙ D_j,   g_j = (L(θ + ε s⊙D_j) − L(θ − ε s⊙D_j)) / (2ε),

and differs only in what it does with ĝ: `direction(group, grad, state)` is its math (θ ← kθ − lr·d), written once
in PyTorch; `kernel` names the branch of the fused rule kernel (`kernels/fused_rules.py`) that computes the same
thing in one pass, with `hyper(group, step)` its parameters by name (the tests hold the two to each other). Rules
whose direction is not s⊙z (HiZOO, LOZO) add a direction source (`directions(engine)`); rules with another probe
schedule (HiZOO's centre forward, Conserve's trial steps) override `reference_update` / `fused_update`.

A rule is a LightningCLI object: `--model.optimizer zolightning.optim.rules.ZOAdam --model.optimizer.betas
[0.9,0.99]`. Its options become the optimizer's param-group defaults (per-group overrides work, and they travel in
the optimizer's state dict as before).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from zolightning.optim.kernels.fused_rules import KernelRule

RULES: dict[str, type[ZORule]] = {}  # short name -> class, filled as rule classes are defined


class ZORule:
    """Base of the ZO rules: plain ZO-SGD on ĝ (no state). Subclasses set the class attributes they change.

    Attributes:
        name: the short name (`--model.optimizer zo_adam`).
        kernel: the fused rule kernel's branch, or None (the update then runs tensor by tensor everywhere).
        counts_steps: the engine counts applied updates in each tensor's `state["step"]` (Adam's bias correction).
        device_step: on the fused path, g may stay on the device (steps that never wait for the GPU).
        takes_queries / takes_block_scales: whether q > 1 and learned block variance compose with the rule.
        forwards_per_query: forward passes a step costs per query beyond the two of the probe (for the docs).
        splits_by_block: each tensor's update needs only the step's (seed, g) and the tensor's own state, so it can
            run block by block while a streamed model's block is on the GPU (`offload/`).
    """

    name: ClassVar[str] = ""
    kernel: ClassVar[KernelRule | None] = None
    counts_steps: ClassVar[bool] = False
    device_step: ClassVar[bool] = True
    takes_queries: ClassVar[bool] = True
    takes_block_scales: ClassVar[bool] = True
    splits_by_block: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            RULES[cls.name] = cls

    def kernel_for(self, groups: list[dict]) -> KernelRule | None:
        """The kernel branch for these groups' options (momentum 0 is the plain rule)."""
        return self.kernel

    def group_defaults(self) -> dict:
        """The rule's options as param-group defaults (a group may override them)."""
        return {}

    def hyper(self, group: dict, step: int | None) -> dict[str, float]:
        """The kernel's per-tensor parameters by name (`kernel.hyper`); `step`: the tensor's update count."""
        return {}

    def direction(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        """The step direction d (θ ← kθ − lr·d) from one tensor's estimate ĝ; may update `state`."""
        return grad

    def directions(self, engine):
        """A direction source for shaped rules (None: the noise's z)."""
        return None

    # ---- the update, given the probes (the engine's generic passes unless a rule changes the schedule) -----------
    def reference_update(self, engine, estimates: list[tuple[int, float]], scales, closure) -> None:
        from zolightning.optim.engine import updates

        updates.reference_update(engine, self, estimates, scales)

    def fused_update(self, engine, seeds: list[int], scales, g, ok: Tensor | None, closure) -> None:
        """From θ + offset·ε·s⊙z (the last query's z) to the rule's new θ in one pass."""
        from zolightning.optim.engine import updates

        updates.fused_update(engine, self, seeds, scales, g, ok)

    def fuses(self, engine, queries: int) -> bool:
        """Whether this rule's fused update runs on the engine's weights."""
        return self.kernel_for(engine.groups) is not None and engine.fuses()

    def schedule(self, optimizer, closure):
        """A whole step of the rule's own probe schedule, or None: the optimizer's (q two-point probes, update)."""
        return None

    def checkpoint_entries(self) -> dict:
        """What the optimizer's checkpoint records of this rule beyond its param-group options."""
        return {}

    def check_checkpoint(self, zo: dict) -> None:
        """Refuse a checkpoint (its `zo` entry) that this rule would not continue; one line naming why."""

    # ---- identity ------------------------------------------------------------------------------------------
    def options(self) -> dict:
        """The constructor's arguments, as given (the config's `init_args`)."""
        return dict(vars(self))

    def spec(self) -> dict:
        """This rule as a config entry: `class_path` and `init_args` (plain values: safe in any checkpoint)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.options()}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({options})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.options() == other.options()

    __hash__ = None
