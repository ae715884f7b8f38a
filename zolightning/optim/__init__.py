"""Zeroth-order optimization: one engine (`engine/`), rules as small objects (`rules/`), kernels (`kernels/`).

`ZOOptimizer(params, rule)` is a `torch.optim.Optimizer` (`step(closure)`), usable without Lightning.
"""

from zolightning.optim.engine.engine import BlockScales, ZOEngine
from zolightning.optim.engine.noise import NoiseSource, step_seed
from zolightning.optim.optimizer import ZOOptimizer, ZOStepOutput
from zolightning.optim.registry import OPTIMIZER_NAMES, build_zo_optimizer, resolve_rule
from zolightning.optim.rules import (
    LOZO,
    RULES,
    ZOSGD,
    HiZOO,
    ZOAdam,
    ZORule,
    ZOSGDConserve,
    ZOSGDMomentum,
    ZOSGDNesterov,
    ZOSGDSign,
)

__all__ = [
    "LOZO",
    "OPTIMIZER_NAMES",
    "RULES",
    "ZOSGD",
    "BlockScales",
    "HiZOO",
    "NoiseSource",
    "ZOAdam",
    "ZOEngine",
    "ZOOptimizer",
    "ZORule",
    "ZOSGDConserve",
    "ZOSGDMomentum",
    "ZOSGDNesterov",
    "ZOSGDSign",
    "ZOStepOutput",
    "build_zo_optimizer",
    "resolve_rule",
    "step_seed",
]
