"""A divergence guard: act when the smoothed training loss climbs away from its best.

ZO runs at a too-large constant lr do not blow up; they drift: SST-2 at lr 3e-5 reached its best loss around
step 2,500 and then climbed back towards chance over thousands of steps (issue #12). The guard watches
`train/loss` (the mean over each logging interval), smooths it with an exponential moving average, and when the
smoothed loss stays `rise` (relative) above its best for `patience` logging intervals in a row, it either stops
the run (`action: stop`) or multiplies every learning rate by `lr_factor` (`action: cut_lr`) and starts watching
again from the current level. Each event is logged (`guard/events`) and said in the log.

    zolightning fit --config configs/sst2/mezo.yaml --trainer.callbacks+=zolightning.divergence.DivergenceGuard \
        --trainer.callbacks.rise 0.1 --trainer.callbacks.action cut_lr
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class DivergenceGuard(Callback):
    """Stop, or cut the learning rate, when the smoothed training loss rises above its best.

    Args:
        rise: relative rise over the best smoothed loss that counts as diverging (0.1 = 10% above).
        patience: logging intervals in a row the rise must last before acting.
        smoothing: weight of the newest interval mean in the moving average (1 = no smoothing).
        warmup_intervals: logging intervals to watch before the guard may act (the loss is noisy early).
        action: `stop` the run, or `cut_lr` (multiply every parameter group's lr by `lr_factor`).
        lr_factor: the multiplier of `cut_lr`.
    """

    def __init__(
        self,
        rise: float = 0.1,
        patience: int = 5,
        smoothing: float = 0.05,
        warmup_intervals: int = 10,
        action: Literal["stop", "cut_lr"] = "stop",
        lr_factor: float = 0.5,
    ):
        if rise <= 0 or patience < 1 or not 0 < smoothing <= 1 or not 0 < lr_factor < 1 or warmup_intervals < 0:
            raise ValueError(
                "need rise > 0, patience >= 1, 0 < smoothing <= 1, 0 < lr_factor < 1, warmup_intervals >= 0; "
                f"got {rise}, {patience}, {smoothing}, {lr_factor}, {warmup_intervals}"
            )
        self.rise, self.patience, self.smoothing = rise, patience, smoothing
        self.warmup_intervals, self.action, self.lr_factor = warmup_intervals, action, lr_factor
        self.smoothed: float | None = None
        self.best = math.inf
        self.intervals = self.strikes = self.events = 0

    def observe(self, loss: float) -> bool:
        """Take one interval's mean loss; True when the guard should act now."""
        if not math.isfinite(loss):
            return False
        self.intervals += 1
        self.smoothed = loss if self.smoothed is None else self.smoothing * loss + (1 - self.smoothing) * self.smoothed
        self.best = min(self.best, self.smoothed)
        if self.intervals <= self.warmup_intervals or self.smoothed <= self.best * (1 + self.rise):
            self.strikes = 0
            return False
        self.strikes += 1
        return self.strikes >= self.patience

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(trainer.log_every_n_steps, 1) or "train/loss" not in trainer.callback_metrics:
            return
        if not self.observe(float(trainer.callback_metrics["train/loss"])):
            if self.smoothed is not None:
                pl_module.log("guard/smoothed_loss", self.smoothed)
            return
        self.events += 1
        pl_module.log_dict({"guard/smoothed_loss": self.smoothed, "guard/events": float(self.events)})
        message = (
            f"smoothed training loss {self.smoothed:.4f} has stayed more than {self.rise:.0%} above its best "
            f"{self.best:.4f} for {self.patience} logging intervals (step {trainer.global_step})"
        )
        if self.action == "stop":
            log.warning("%s: stopping (DivergenceGuard action=stop)", message)
            trainer.should_stop = True
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:  # schedules recompute lr from their base values
            config.scheduler.base_lrs = [lr * self.lr_factor for lr in config.scheduler.base_lrs]
        log.warning("%s: learning rates multiplied by %g", message, self.lr_factor)
        self.best, self.strikes = self.smoothed, 0  # watch again from here

    def state_dict(self) -> dict:
        keys = ("smoothed", "best", "intervals", "strikes", "events")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state_dict: dict) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)
