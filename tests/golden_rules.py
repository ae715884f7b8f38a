"""How the golden tests build each rule's optimizer: the one place that changes when the optimizer API does."""

from __future__ import annotations

from zolightning.optim import OPTIMIZER_NAMES, build_zo_optimizer

LOZO_OPTIONS = {"lozo_rank": 2, "lozo_interval": 4}  # window changes inside 10 steps


def rule_names() -> tuple[str, ...]:
    return OPTIMIZER_NAMES


def build_case_optimizer(name: str, params, lr: float = 1e-3, eps: float = 1e-3, seed: int = 3, **common):
    options = LOZO_OPTIONS if name == "lozo" else {}
    return build_zo_optimizer(name, params, lr=lr, eps=eps, seed=seed, **options, **common)
