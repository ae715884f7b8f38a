"""ZO-SGD-Sign (signSGD on the ZO estimate; ZO-Bench arXiv 2402.11592, after Liu et al. 2019): θ ← θ − lr·sign(ĝ)."""

from __future__ import annotations

from torch import Tensor

from zolightning.optim.kernels.fused_rules import SIGN
from zolightning.optim.rules.base import ZORule


class ZOSGDSign(ZORule):
    """Sign of the estimate: every weight moves by lr (or not at all where ĝ is 0)."""

    name = "zo_sgd_sign"
    kernel = SIGN

    def direction(self, group: dict, grad: Tensor, state: dict) -> Tensor:
        return grad.sign_()
