"""The ZO update rules, one file each; `RULES` maps their short names (`--model.optimizer zo_adam`) to classes."""

from zolightning.optim.rules.adam import ZOAdam
from zolightning.optim.rules.base import RULES, ZORule
from zolightning.optim.rules.conserve import ZOSGDConserve
from zolightning.optim.rules.hizoo import HiZOO
from zolightning.optim.rules.lozo import LOZO
from zolightning.optim.rules.sgd import ZOSGD, ZOSGDMomentum, ZOSGDNesterov
from zolightning.optim.rules.sign import ZOSGDSign

__all__ = ["LOZO", "RULES", "HiZOO", "ZOAdam", "ZORule", "ZOSGD", "ZOSGDConserve", "ZOSGDMomentum", "ZOSGDNesterov",
           "ZOSGDSign"]  # fmt: skip
