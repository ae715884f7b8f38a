"""ZO-SGD: MeZO's rule (Malladi et al., arXiv 2305.17333), θ ← θ − lr·ĝ, and its momentum variants.

With one query the restore and the update are one pass (θ += (ε − lr·g)·z from θ − εz: the engine's
`restore_and_update`), and steps may keep g on the device; with q > 1 it is the plain branch of the rule kernel.
"""

from __future__ import annotations

from torch import Tensor

from zolightning.optim.kernels.fused_rules import MOMENTUM, NESTEROV, PLAIN
from zolightning.optim.rules.base import ZORule


class ZOSGD(ZORule):
    """Zeroth-order SGD on the q-query estimate (MeZO with one query)."""

    name = "zo_sgd"
    kernel = PLAIN
    one_pass_update = True  # one query: the engine's restore-and-update pass (MeZO), CUDA-graph capturable


class ZOSGDMomentum(ZORule):
    """ZO-SGD with heavy-ball momentum (ZO-Bench's ZO-SGD-MMT, arXiv 2402.11592): m ← μm + ĝ, θ ← θ − lr·m.

    With `momentum=0` it is plain ZO-SGD on the q-query estimate (no state). The buffer is float32, one
    model-sized tensor: the memory MeZO saves is spent here.

    Args:
        momentum: μ, in [0, 1).
    """

    name = "zo_sgd_momentum"

    def __init__(self, momentum: float = 0.9):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def group_defaults(self) -> dict:
        return {"momentum": self.momentum}

    def kernel_for(self, groups: list[dict]):
        return MOMENTUM if any(group["momentum"] for group in groups) else PLAIN

    def hyper(self, group: dict, step: int | None) -> dict[str, float]:
        return {"momentum": group["momentum"]}

    def direction(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        if group["momentum"] == 0:
            return grad
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        return state["momentum_buffer"]


class ZOSGDNesterov(ZOSGDMomentum):
    """ZO-SGD with Nesterov momentum (Sutskever et al. 2013, in PyTorch SGD's form): m ← μm + ĝ, θ ← θ − lr·(ĝ + μm).

    The look-ahead of Nesterov's method on the ZO estimate; one float32 buffer per weight, as heavy-ball momentum
    (whose options it shares).

    Args:
        momentum: μ, in [0, 1).
    """

    name = "zo_sgd_nesterov"

    def kernel_for(self, groups: list[dict]):
        return NESTEROV if any(group["momentum"] for group in groups) else PLAIN

    def direction(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        if group["momentum"] == 0:
            return grad
        momentum = super().direction(group, grad, state)  # the buffer, updated
        return grad.add(momentum, alpha=group["momentum"])
