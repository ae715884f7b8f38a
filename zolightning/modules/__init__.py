"""LightningModules: orchestration only; the math is in optim/, scoring.py and variance/."""

from zolightning.modules.zo_finetune import ZOFineTuneModule

__all__ = ["ZOFineTuneModule"]
