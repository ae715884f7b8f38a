"""Run health: a fit that stops learning, or drifts away from its best, says so (on by default).

It owns the decision to end a fit that cannot go on (signals aside: `stopping.py`). Three failures:
- **Skipped steps**: `max_consecutive_skips` steps in a row with a non-finite loss or block scale (the optimizer
  skips each, so the weights never take them; the module's `max_consecutive_skips` unless set here).
- **A stall**: an absurd step (say lr 1e3) saturates the model after one step; from then on both perturbed losses
  are equal, the projected gradient is exactly 0 and the loss exactly constant, and the run would go on for its
  whole budget, keep a "best" checkpoint and exit 0. `RunHealth` counts logging intervals whose projected
  gradient is exactly 0 or whose mean loss equals the previous interval's exactly; `stall_intervals` of them in
  a row are a stall.
- **A drift**: ZO runs at a too-large constant lr do not blow up, they drift: SST-2 at lr 3e-5 reached its best
  loss around step 2,500 and then climbed back towards chance over thousands of steps (issue #12). The training
  loss (the mean over each logging interval) is smoothed with an exponential moving average; when the smoothed
  loss stays `rise` (relative) above its best for `patience` logging intervals in a row, the run drifts. The
  defaults stay quiet on every archived full-budget SST-2 curve of the shipped configs (tests/test_health.py).

What happens then is `action`: `stop` (default: the run ends with a one-line error and a non-zero exit code, so a
scheduler or `zolightning compare` records it as failed; checkpoints written so far are kept), `warn` (logged,
the run goes on), or `cut_lr` (every learning rate multiplied by `lr_factor`, watching again from there; a stall
still stops). Each event is logged (`health/events`, `health/smoothed_loss`).

`ZOFineTuneModule` adds a `RunHealth()` unless the trainer already has one (without the stall check for the
non-differentiable objectives, accuracy and F1, whose g is often exactly 0 in a healthy run); to configure it:

    zolightning fit --config configs/sst2/mezo.yaml --trainer.callbacks+=zolightning.callbacks.health.RunHealth \
        --trainer.callbacks.action warn --trainer.callbacks.rise 0.2
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class UnhealthyRun(RuntimeError):
    """A fit stopped by `RunHealth`; its message is one line that says why and what to try."""


class RunHealth(Callback):
    """Stop (or warn, or cut the learning rate) when a fit stalls or its smoothed training loss drifts up.

    Args:
        action: `stop` the run with an error, `warn` and go on, or `cut_lr` (multiply every parameter group's lr
            by `lr_factor`) on a drift; a stall is never fixed by a smaller lr, so `cut_lr` stops on a stall.
        stall_intervals: logging intervals in a row with a projected gradient of exactly 0 or a mean loss exactly
            equal to the previous interval's that make a stall (0: no stall check).
        rise: relative rise over the best smoothed loss that counts as drifting (0.1 = 10% above).
        patience: logging intervals in a row the rise must last before acting.
        smoothing: weight of the newest interval mean in the moving average (1 = no smoothing).
        warmup_intervals: logging intervals to watch before a drift may count (the loss is noisy early).
        lr_factor: the multiplier of `cut_lr`.
        max_consecutive_skips: skipped ZO steps in a row that stop the run, whatever `action` says (None: the
            module's `max_consecutive_skips`; checked every step, or at logging steps where g stays on the device).
    """

    def __init__(
        self,
        action: Literal["stop", "warn", "cut_lr"] = "stop",
        stall_intervals: int = 3,
        rise: float = 0.1,
        patience: int = 5,
        smoothing: float = 0.05,
        warmup_intervals: int = 10,
        lr_factor: float = 0.5,
        max_consecutive_skips: int | None = None,
    ):
        if rise <= 0 or patience < 1 or not 0 < smoothing <= 1 or not 0 < lr_factor < 1 or warmup_intervals < 0:
            raise ValueError(
                "need rise > 0, patience >= 1, 0 < smoothing <= 1, 0 < lr_factor < 1, warmup_intervals >= 0; "
                f"got {rise}, {patience}, {smoothing}, {lr_factor}, {warmup_intervals}"
            )
        if stall_intervals < 0:
            raise ValueError(f"need stall_intervals >= 0 (0: no stall check); got {stall_intervals}")
        self.action, self.stall_intervals, self.max_consecutive_skips = action, stall_intervals, max_consecutive_skips
        self.rise, self.patience, self.smoothing = rise, patience, smoothing
        self.warmup_intervals, self.lr_factor = warmup_intervals, lr_factor
        self.smoothed: float | None = None
        self._checked_step: int | None = None  # a step reads several batches under accumulation: checked once
        self.best = math.inf
        self.previous_loss: float | None = None
        self.intervals = self.strikes = self.stalled = self.events = 0

    def observe(self, loss: float) -> bool:
        """Take one interval's mean loss; True when the smoothed loss has drifted up for `patience` intervals."""
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

    def observe_progress(self, loss: float, projected_grad: float | None) -> bool:
        """Take one interval's mean loss and last projected gradient; True when the run has stalled."""
        frozen = projected_grad == 0.0 or (self.previous_loss is not None and loss == self.previous_loss)
        self.previous_loss = loss
        self.stalled = self.stalled + 1 if frozen and math.isfinite(loss) else 0
        return 0 < self.stall_intervals <= self.stalled

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._checked_step:
            return
        self._checked_step = trainer.global_step
        self._check_skips(trainer, pl_module)
        metrics = trainer.callback_metrics
        if trainer.global_step % max(trainer.log_every_n_steps, 1) or "train/loss" not in metrics:
            return
        loss = float(metrics["train/loss"])
        g = float(metrics["zo/projected_grad"]) if "zo/projected_grad" in metrics else None
        if self.observe_progress(loss, g):
            self._stalled(trainer, loss, g)
        if self.observe(loss):
            self._drifted(trainer, pl_module)
        elif self.smoothed is not None:
            pl_module.log("health/smoothed_loss", self.smoothed)

    def _check_skips(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        limit = self.max_consecutive_skips or pl_module.hparams.get("max_consecutive_skips")
        if not hasattr(optimizer, "consecutive_skipped") or not limit:
            return
        # steps that keep g on the device count skips there: reading them waits for the GPU, so only when logging
        if not getattr(optimizer, "sync", True) and trainer.global_step % max(trainer.log_every_n_steps, 1):
            return
        if optimizer.consecutive_skipped >= limit:
            raise UnhealthyRun(
                f"{optimizer.consecutive_skipped} consecutive ZO steps had a non-finite loss or block scale; "
                "stopping. The weights never took those steps; lower lr or eps, or check the learned-optimizer file"
            )

    def _stalled(self, trainer: L.Trainer, loss: float, g: float | None) -> None:
        self.events += 1
        message = (
            f"the run has stopped learning: for {self.stalled} logging intervals the projected gradient was exactly "
            f"0 or the loss exactly constant (loss {loss:.6g}, g {g}, step {trainer.global_step}); the weights are "
            "likely saturated by too large a step: lower lr (or eps)"
        )
        if self.action == "warn":
            log.warning("%s (RunHealth action=warn)", message)
            self.stalled = 0
            return
        raise UnhealthyRun(message)

    def _drifted(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.events += 1
        pl_module.log_dict({"health/smoothed_loss": self.smoothed, "health/events": float(self.events)})
        message = (
            f"smoothed training loss {self.smoothed:.4f} has stayed more than {self.rise:.0%} above its best "
            f"{self.best:.4f} for {self.patience} logging intervals (step {trainer.global_step})"
        )
        if self.action == "stop":
            raise UnhealthyRun(
                f"{message}: the run is diverging; lower lr, use lr_schedule linear, or keep going with "
                "--trainer.callbacks+=zolightning.callbacks.health.RunHealth --trainer.callbacks.action warn"
            )
        if self.action == "warn":
            log.warning("%s (RunHealth action=warn)", message)
            self.best, self.strikes = self.smoothed, 0
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:  # schedules recompute lr from their base values
            config.scheduler.base_lrs = [lr * self.lr_factor for lr in config.scheduler.base_lrs]
        log.warning("%s: learning rates multiplied by %g", message, self.lr_factor)
        self.best, self.strikes = self.smoothed, 0  # watch again from here

    def state_dict(self) -> dict:
        keys = ("smoothed", "best", "previous_loss", "intervals", "strikes", "stalled", "events")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state_dict: dict) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)
