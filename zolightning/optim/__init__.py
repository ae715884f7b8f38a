"""Zeroth-order optimizers (torch.optim.Optimizer subclasses) and their noise."""

from zolightning.optim.estimated import EstimatedZO, ZOAdam, ZOSGDConserve, ZOSGDMomentum, ZOSGDSign
from zolightning.optim.noise import NoiseSource, step_seed
from zolightning.optim.registry import OPTIMIZER_NAMES, build_zo_optimizer
from zolightning.optim.shaped import LOZO, HiZOO, ShapedZO
from zolightning.optim.zo_sgd import ZOSGD, BlockScales, ZOStepOutput

__all__ = [
    "OPTIMIZER_NAMES",
    "ZOSGD",
    "BlockScales",
    "EstimatedZO",
    "HiZOO",
    "LOZO",
    "NoiseSource",
    "ShapedZO",
    "ZOAdam",
    "ZOSGDConserve",
    "ZOSGDMomentum",
    "ZOSGDSign",
    "ZOStepOutput",
    "build_zo_optimizer",
    "step_seed",
]
