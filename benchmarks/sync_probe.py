"""Where a fit waits for the GPU: a callback that reports every host-device synchronisation of training steps.

    zolightning fit --config configs/sst2/mezo.yaml ... --trainer.callbacks+=benchmarks.sync_probe.SyncProbe

Between steps `start` and `stop` (after warm-up) it turns on PyTorch's sync debug mode, which warns on each
synchronising CUDA call, and records the Python stack of each warning; at `stop` it logs each distinct stack
(frames of zolightning, lightning and torch only) with its count and the mean host time of a loop iteration.
A fast ZO step never waits for the GPU, so every stack printed here is a place where the host stalls.
With `mode="error"` (the GPU test) a synchronising call in the window raises instead, and the fit fails.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections import Counter

import lightning as L
import torch

log = logging.getLogger(__name__)
KEEP = ("zolightning", "lightning", "torch", "benchmarks")


class SyncProbe(L.Callback):
    """Counts synchronising CUDA calls per distinct Python stack between two training steps.

    Args:
        start: the first batch index probed (compilation and the first steps are left out).
        stop: the batch index at which the report is logged and probing ends.
        mode: "warn" (record and report each synchronisation) or "error" (raise at the first one).
    """

    def __init__(self, start: int = 50, stop: int = 150, mode: str = "warn"):
        if mode not in ("warn", "error"):
            raise ValueError(f"mode must be 'warn' or 'error', not {mode!r}")
        self.start, self.stop, self.mode = start, stop, mode
        self.stacks: Counter[tuple[str, ...]] = Counter()
        self._previous_hook = None
        self._began: float | None = None

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" not in str(message).lower():
            return self._previous_hook(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if any(k in f.filename for k in KEEP)]
        self.stacks[tuple(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in frames[-8:])] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx != self.start or not torch.cuda.is_available():
            return
        torch.cuda.synchronize()
        if self.mode == "warn":
            self._previous_hook, warnings.showwarning = warnings.showwarning, self._record
            warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(self.mode)
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != self.stop or self._began is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        seconds = (time.perf_counter() - self._began) / (self.stop - self.start + 1)
        if self.mode == "warn":
            warnings.showwarning = self._previous_hook
        log.warning("sync probe, steps %d-%d: %.2f ms per loop iteration (host, probe on), %d syncs",
                    self.start, self.stop, seconds * 1e3, sum(self.stacks.values()))  # fmt: skip
        for stack, count in self.stacks.most_common(12):
            log.warning("sync x%d:\n    %s", count, "\n    ".join(stack))
        self._began = None
