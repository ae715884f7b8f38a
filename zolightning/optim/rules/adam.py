"""ZO-Adam (ZO-AdaMM, Chen et al. 2019; ZO-Bench arXiv 2402.11592): Adam's moments and bias correction on ĝ."""

from __future__ import annotations

import torch
from torch import Tensor

from zolightning.optim.kernels.fused_rules import ADAM
from zolightning.optim.rules.base import ZORule


class ZOAdam(ZORule):
    """m ← β1·m + (1 − β1)·ĝ, v ← β2·v + (1 − β2)·ĝ², d = m̂ / (√v̂ + adam_eps) with t-step bias corrections.

    Two float32 states per weight (m, v): twice the memory of the model in fp32. Reads g on the host (its per-tensor
    step counts live there).

    Args:
        betas: (β1, β2), each in [0, 1).
        adam_eps: the denominator's floor, > 0.
    """

    name = "zo_adam"
    kernel = ADAM
    counts_steps = True
    device_step = False

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8):
        if not all(0 <= b < 1 for b in betas) or adam_eps <= 0:
            raise ValueError(f"need 0 <= betas < 1 and adam_eps > 0, got {betas}, {adam_eps}")
        self.betas, self.adam_eps = tuple(betas), adam_eps

    def group_defaults(self) -> dict:
        return {"betas": self.betas, "adam_eps": self.adam_eps}

    def hyper(self, group: dict, step: int | None) -> dict[str, float]:
        beta1, beta2 = group["betas"]
        return {"beta1": beta1, "1-beta1": 1 - beta1, "beta2": beta2, "1-beta2": 1 - beta2,
                "1-beta1^t": 1 - beta1**step, "1-beta2^t": 1 - beta2**step, "adam_eps": group["adam_eps"]}  # fmt: skip

    def direction(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        return m_hat / (v_hat.sqrt() + group["adam_eps"])
