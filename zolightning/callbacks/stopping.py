"""Stopping a run safely: SIGTERM / Ctrl-C stop it within seconds, and no checkpoint is ever half written.

Lightning alone notes a SIGTERM and acts on it only at the end of a training batch, so a run that is
compiling, validating or loading ignores it for minutes; and a ZO step must not be cut in the middle (the
weights sit perturbed between its two forwards). `GracefulStop` therefore acts by phase:

- inside the training loop, a signal is noted and the run stops at the end of the step in flight, after
  saving `last.ckpt` (the weights are clean there);
- anywhere else (set-up, compilation, validation) the run stops at once: nothing since the last checkpoint is
  lost that a checkpoint could have held;
- a second signal always stops at once.

Checkpoints themselves are written by `DurableCheckpointIO`: to a temporary file beside the target, flushed to
disk (fsync), then renamed over it, and the folder synced; a kill, a crash of the machine or a full disk during
the save leaves the previous checkpoint intact and no temporary file behind (tests/test_stopping.py kills a fit
in the middle of a write and fills the disk).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic and durable for local paths (remote ones: Lightning's)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as stream:
                self.write(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise OSError(
                error.errno, f"could not write checkpoint {path} ({error.strerror}); the previous one is intact"
            ) from error
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself must reach the disk
            os.fsync(folder)
        finally:
            os.close(folder)

    @staticmethod
    def write(checkpoint: dict, stream) -> None:
        torch.save(checkpoint, stream)


class StopRequested(SystemExit):
    """Raised by the signal handler where stopping at once is safe. A SystemExit, not a KeyboardInterrupt:
    Lightning turns the latter into exit code 1, and a stopped run must exit 128 + the signal number so that
    whoever launched it (a scheduler, `zolightning compare`) can tell a stop from a failure."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name

    def __str__(self) -> str:
        return f"{self.signal_name} received"


class GracefulStop(Callback):
    """Stop on SIGTERM / SIGINT: at the end of the current ZO step (saving `last.ckpt`), or at once where no
    step is running. Exits with 128 + the signal number. Also saves `last.ckpt` when training ends between
    two validations (ModelCheckpoint saves only at validations)."""

    def __init__(self):
        self.received: int | None = None
        self._deferring = False  # True inside the training loop: stop at the next step boundary
        self._previous: dict[int, object] = {}
        self._active = False
        self._trainer: L.Trainer | None = None

    def _handle(self, signum, frame) -> None:
        if not self._active:  # Lightning may put this handler back after an exception: behave as before it
            return self._delegate(signum, frame)
        first = self.received is None
        self.received = signum
        name = signal.Signals(signum).name
        if first and self._deferring:
            log.warning("%s received: stopping after the current step (again to stop at once)", name)
            # Lightning's own SIGTERM handler ran just before this one and set a flag that ends the fit after
            # the batch without a checkpoint, exiting 0; the stop is ours to make (save, exit 128 + signal).
            connector = getattr(self._trainer, "_signal_connector", None)
            if connector is not None:
                connector.received_sigterm = False
            return
        raise StopRequested(signum)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own writer is left alone
            trainer.strategy.checkpoint_io = DurableCheckpointIO()
        if self._active:
            return
        self._active, self._previous = True, {}
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                self._active = False
                return

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()  # Lightning skips `teardown` after an exception
        if isinstance(exception, SIGTERMException) and exception.code in (None, 0):
            exception.code = 128 + signal.SIGTERM  # a stopped run must not look finished to whoever launched it

    def _restore_handlers(self) -> None:
        self._active = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _delegate(self, signum, frame) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            return None
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = True
        self._stop_if_requested(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = False
        if self.received is not None:
            raise StopRequested(self.received)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # back in the training loop, unless this was the sanity check before it
        self._deferring = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._stop_if_requested(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = False
        # A run that ends between validations would otherwise leave its last steps out of last.ckpt.
        callback, path = trainer.checkpoint_callback, self._last_checkpoint_path(trainer)
        saved_at = getattr(callback, "_last_global_step_saved", None)
        # A ModelCheckpoint that has saved nothing yet writes last.ckpt itself at the end (Lightning >= 2.6); a
        # second save here would make it write last-v1.ckpt beside it.
        saved_any = getattr(callback, "_last_checkpoint_saved", True)
        if path is None or not callback.save_last:
            return
        self._claim_last(callback, path)
        if saved_any and saved_at != trainer.global_step > 0:
            trainer.save_checkpoint(path)

    @staticmethod
    def _claim_last(callback: ModelCheckpoint, path: str) -> None:
        # last.ckpt written by a stop (this run or the one resumed) is the callback's own last checkpoint: without
        # this, its version counter would see a foreign file and write last-v1.ckpt beside it.
        callback.last_model_path = path

    def _stop_if_requested(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is None:
            return
        self._deferring = False
        training_log = getattr(pl_module, "training_log", None)
        if training_log is not None:  # the steps since the last logging step: in the checkpoint, so in the log
            training_log.flush(pl_module)
        path = self._last_checkpoint_path(trainer)
        if path is not None and trainer.global_step > 0:
            self._claim_last(trainer.checkpoint_callback, path)
            trainer.save_checkpoint(path)
            log.warning("stopped at step %d: checkpoint saved to %s", trainer.global_step, path)
        for logger in trainer.loggers:  # written out now: a logger's buffered steps would be lost with the process
            logger.finalize("stopped")
        raise SystemExit(128 + self.received)

    @staticmethod
    def _last_checkpoint_path(trainer: L.Trainer) -> str | None:
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            return None
        return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
