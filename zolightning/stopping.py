"""Stopping a run safely: SIGTERM / Ctrl-C stop it within seconds, and no checkpoint is ever half written.

Lightning alone notes a SIGTERM and acts on it only at the end of a training batch, so a run that is
compiling, validating or loading ignores it for minutes; and a ZO step must not be cut in the middle (the
weights sit perturbed between its two forwards). `GracefulStop` therefore acts by phase:

- inside the training loop, a signal is noted and the run stops at the end of the step in flight, after
  saving `last.ckpt` (the weights are clean there);
- anywhere else (set-up, compilation, validation) the run stops at once: nothing since the last checkpoint is
  lost that a checkpoint could have held;
- a second signal always stops at once.

`AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it over the old one, so even a
kill in the middle of a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(KeyboardInterrupt):
    """Raised by the signal handler where stopping at once is safe; Lightning shuts down as for Ctrl-C."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to `<path>.tmp`, then an atomic rename over `<path>` (local paths)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):  # remote file systems: no rename to rely on
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, temporary, storage_options)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


class GracefulStop(Callback):
    """Stop on SIGTERM / SIGINT: at the end of the current ZO step (saving `last.ckpt`), or at once where no
    step is running. Exits with 128 + the signal number."""

    def __init__(self):
        self.received: int | None = None
        self._deferring = False  # True inside the training loop: stop at the next step boundary
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        self.received = signum
        name = signal.Signals(signum).name
        if first and self._deferring:
            log.warning("%s received: stopping after the current step (again to stop at once)", name)
            return
        raise StopRequested(f"{name} received")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self._previous:
            return
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                return

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = True
        self._stop_if_requested(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = False
        if self.received is not None:
            raise StopRequested(f"{signal.Signals(self.received).name} received")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # back in the training loop, unless this was the sanity check before it
        self._deferring = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._stop_if_requested(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = False

    def _stop_if_requested(self, trainer: L.Trainer) -> None:
        if self.received is None:
            return
        self._deferring = False
        path = self._last_checkpoint_path(trainer)
        if path is not None and trainer.global_step > 0:
            trainer.save_checkpoint(path)
            log.warning("stopped at step %d: checkpoint saved to %s", trainer.global_step, path)
        raise SystemExit(128 + self.received)

    @staticmethod
    def _last_checkpoint_path(trainer: L.Trainer) -> str | None:
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            return None
        return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
