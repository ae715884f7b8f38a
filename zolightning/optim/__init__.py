"""Zeroth-order optimizers (torch.optim.Optimizer subclasses) and their noise."""

from zolightning.optim.noise import NoiseSource, step_seed
from zolightning.optim.zo_sgd import ZOSGD, BlockScales, ZOStepOutput

__all__ = ["ZOSGD", "BlockScales", "NoiseSource", "ZOStepOutput", "step_seed"]
