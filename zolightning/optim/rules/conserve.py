"""ZO-SGD-Conserve (ZO-Bench, arXiv 2402.11592): take the ZO-SGD step only if it lowers the minibatch loss.

After the estimate: L0 = L(θ); try θ − lr·ĝ (L1); if L1 > L0 try the opposite θ + lr·ĝ (L2); if that is no better
than L0 either, stay at θ. Then the decoupled decay. 2q + 2 or 2q + 3 forward passes a step.
"""

from __future__ import annotations

import torch

from zolightning.optim.engine import updates
from zolightning.optim.kernels.fused_rules import PLAIN
from zolightning.optim.rules.base import ZORule


class ZOSGDConserve(ZORule):
    """The trial steps are this rule's probe schedule; the move itself is plain ZO-SGD's."""

    name = "zo_sgd_conserve"
    splits_by_block = False  # its trial steps re-score the whole model
    kernel = PLAIN
    device_step = False  # the choice reads the trial losses on the host

    def reference_update(self, engine, probes, scales, closure) -> None:
        def move(factor: float) -> None:
            for group, _, part, grad in updates.estimates(engine, probes, scales):
                wide = part.detach().to(torch.promote_types(part.dtype, torch.float32))
                part.copy_(wide.sub_(grad, alpha=factor * group["lr"]))

        self.last_choice = _choose(closure, move, steps=(+1.0, -2.0, +1.0))
        engine.decay()

    def fused_update(self, engine, seeds, scales, g, ok, closure) -> None:
        """The trials as passes of the plain kernel: from w = round(θ − x·lr·ĝ) the pass to position y removes
        x·lr·ĝ (θ recovered on its dtype grid, as after a perturbation) and subtracts y·lr·ĝ."""
        coefficient = updates.coefficients(engine, scales, g)
        lrs = engine.lrs()
        ones = torch.ones_like(lrs)
        engine.perturb(seeds[-1], +1.0, scales)  # θ itself, for L0
        where = 0.0

        def move(to: float) -> None:
            nonlocal where
            pre, step = -where * lrs * coefficient, to * lrs
            updates.rule_pass(engine, self, seeds, pre, coefficient, step, ones, None, kernel=PLAIN)
            where = to

        self.last_choice = _choose(closure, move, steps=(1.0, -1.0, 0.0))
        engine.decay()

    def options(self) -> dict:
        return {}


def _choose(closure, move, steps: tuple[float, float, float]) -> str:
    """Descent, else ascent, else stay: `move(steps[i])` takes the i-th trial (relative or absolute positions)."""
    before = float(closure())
    move(steps[0])
    if float(closure()) <= before:
        return "descent"
    move(steps[1])
    if float(closure()) <= before:
        return "ascent"
    move(steps[2])
    return "stay"
